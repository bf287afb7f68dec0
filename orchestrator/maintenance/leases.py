"""Expired leases: ``running`` jobs whose lease passed become ``unknown`` (their worker died,
maybe mid-call) and are sent to be resolved by lookup."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from orchestrator.broker import Dispatcher
from orchestrator.db.store import Store
from orchestrator.logs import get_logger
from orchestrator.maintenance import BATCH_LIMIT

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class ExpireLeases:
    name: ClassVar[str] = "leases_expired"
    store: Store
    dispatcher: Dispatcher
    owner: str
    limit: int = BATCH_LIMIT

    def run_once(self) -> int:
        expired = self.store.expire_leases(self.owner, self.limit)
        for job_id in expired:
            self.dispatcher.send(job_id)
        if expired:
            log.warning("clock.leases_expired", count=len(expired))
        return len(expired)

    def preview(self) -> int:
        return self.store.count_expired_leases()
