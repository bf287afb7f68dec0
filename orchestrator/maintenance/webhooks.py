"""Webhook events stored but not processed within the grace (their message was lost, or
processing failed and released them) get their processing message again."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from orchestrator.broker import Dispatcher
from orchestrator.config import Settings
from orchestrator.db.store import Store
from orchestrator.logs import get_logger
from orchestrator.maintenance import BATCH_LIMIT
from orchestrator.webhooks.ingest import send_process_message

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class RedispatchStaleEvents:
    name: ClassVar[str] = "webhooks_redispatched"
    store: Store
    dispatcher: Dispatcher
    settings: Settings
    limit: int = BATCH_LIMIT

    def run_once(self) -> int:
        """Re-send the message of every event received but left unprocessed past the grace."""
        ids = self.store.stale_webhook_events(self.settings.dispatch_grace_s, self.limit)
        for row_id in ids:
            send_process_message(self.dispatcher, row_id)
        if ids:
            log.info("clock.webhook_events_redispatched", count=len(ids))
        return len(ids)

    def preview(self) -> int:
        """How many events :meth:`run_once` would re-send now."""
        return self.store.count_stale_webhook_events(self.settings.dispatch_grace_s)
