"""Retention: attempt rows of finished jobs, and settled webhook events, past their windows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from orchestrator.config import Settings
from orchestrator.db.store import Store
from orchestrator.logs import get_logger
from orchestrator.maintenance import BATCH_LIMIT

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class DeleteOldAttempts:
    name: ClassVar[str] = "attempts_deleted"
    store: Store
    settings: Settings
    limit: int = BATCH_LIMIT

    def run_once(self) -> int:
        days = self.settings.attempt_retention_days
        deleted = self.store.delete_old_attempts(days, self.limit)
        if deleted:
            log.info("clock.attempts_deleted", count=deleted)
        return deleted

    def preview(self) -> int:
        return self.store.count_old_attempts(self.settings.attempt_retention_days)


@dataclass(frozen=True, slots=True)
class DeleteOldEvents:
    name: ClassVar[str] = "webhook_events_deleted"
    store: Store
    settings: Settings
    limit: int = BATCH_LIMIT

    def run_once(self) -> int:
        days = self.settings.event_retention_days
        deleted = self.store.delete_old_webhook_events(days, self.limit)
        if deleted:
            log.info("clock.webhook_events_deleted", count=deleted)
        return deleted

    def preview(self) -> int:
        return self.store.count_old_webhook_events(self.settings.event_retention_days)
