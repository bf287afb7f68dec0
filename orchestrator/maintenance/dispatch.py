"""Due jobs (pending, retrying, unknown, processing) with no message sent within the grace
get one: a lost message, Redis emptied, a crash between commit and send."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from orchestrator.broker import Dispatcher
from orchestrator.config import Settings
from orchestrator.db.store import Store
from orchestrator.logs import get_logger
from orchestrator.maintenance import BATCH_LIMIT

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class DispatchDue:
    name: ClassVar[str] = "dispatched"
    store: Store
    dispatcher: Dispatcher
    settings: Settings
    limit: int = BATCH_LIMIT

    def run_once(self) -> int:
        due = self.store.due_for_dispatch(self.settings.dispatch_grace_s, self.limit)
        for job_id in due:
            self.dispatcher.send(job_id)
        if due:
            log.info("clock.jobs_redispatched", count=len(due))
        return len(due)

    def preview(self) -> int:
        return self.store.count_due_for_dispatch(self.settings.dispatch_grace_s)
