"""The clock's two table-driven kinds of task, one instance a row kind (built in
:func:`orchestrator.maintenance.clock.default_tasks`):

* :class:`Resend`: rows a query selects each get their message again (due jobs, stale webhook
  events; :class:`~orchestrator.maintenance.leases.ExpireLeases` is one with a name of its own);
* :class:`DeleteOld`: rows past a retention window are deleted, a bounded slice a pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from orchestrator.logs import get_logger
from orchestrator.maintenance import BATCH_LIMIT

log = get_logger(__name__)
K = TypeVar("K")


@dataclass(frozen=True, slots=True)
class Resend(Generic[K]):
    """Each row ``select(limit)`` returns gets a message by ``send``; ``count()`` is how many
    it would select now (``--dry-run``); ``event`` is logged with how many were sent (as a
    warning with ``warn``)."""

    name: str
    event: str
    select: Callable[[int], Sequence[K]]
    count: Callable[[], int]
    send: Callable[[K], object]
    warn: bool = False
    limit: int = BATCH_LIMIT

    def run_once(self) -> int:
        ids = self.select(self.limit)
        for row_id in ids:
            self.send(row_id)
        if ids:
            (log.warning if self.warn else log.info)(self.event, count=len(ids))
        return len(ids)

    def preview(self) -> int:
        return self.count()


@dataclass(frozen=True, slots=True)
class DeleteOld:
    """Rows older than ``days`` go, at most ``limit`` a pass: ``delete(days, limit)`` returns how
    many went, ``count(days)`` how many would (``--dry-run``); logged as ``clock.<name>``."""

    name: str
    days: int
    delete: Callable[[int, int], int]
    count: Callable[[int], int]
    limit: int = BATCH_LIMIT

    def run_once(self) -> int:
        deleted = self.delete(self.days, self.limit)
        if deleted:
            log.info(f"clock.{self.name}", count=deleted)
        return deleted

    def preview(self) -> int:
        return self.count(self.days)
