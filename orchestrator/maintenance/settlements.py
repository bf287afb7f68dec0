"""Settlement hooks: the clock drains the settle outbox (``job_settlements``, written by the
transition trigger in each settling transaction) and tells the application's dramatiq actors.

Each hook named in ``ORCHESTRATOR_SETTLE_HOOKS`` (``QUEUE:ACTOR``) gets one message per settle,
``ACTOR(job_id, state)``, where ``state`` is ``succeeded``, ``failed``, ``dead`` or
``cancelled``. The messages are sent before the transaction that deletes their outbox rows
commits, so a crash or a Redis failure in between sends them again: a hook hears of every
settle **at least once** and must be idempotent (key its work on the job id). A ``dead`` job
an operator replays settles again later: its hooks are called again with the new state.
The same drain adds what it took to ``job_settled_totals`` (``/metrics``), hooks or not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.broker import Dispatcher
from orchestrator.config import parse_settle_hooks
from orchestrator.db import Store
from orchestrator.logs import get_logger
from orchestrator.maintenance import BATCH_LIMIT

log = get_logger(__name__)

# Batches one pass drains at most (a backlog is worked through over several passes).
MAX_BATCHES_PER_PASS = 20


@dataclass(frozen=True, slots=True)
class DeliverSettlements:
    """One clock task: drain the outbox, sending each settle to every hook."""

    store: Store
    dispatcher: Dispatcher
    hooks: tuple[tuple[str, str], ...]
    limit: int = BATCH_LIMIT
    name: str = "settlements_delivered"

    @classmethod
    def from_text(cls, store: Store, dispatcher: Dispatcher, hooks: str) -> DeliverSettlements:
        return cls(store, dispatcher, tuple(parse_settle_hooks(hooks)))

    def run_once(self) -> int:
        total = 0
        for _ in range(MAX_BATCHES_PER_PASS):
            taken = self.store.drain_settlements(self.limit, self._deliver)
            total += taken
            if taken < self.limit:
                break
        if total and self.hooks:
            log.info("clock.settlements_delivered", count=total, hooks=len(self.hooks))
        return total

    def preview(self) -> int:
        return self.store.count_settlements()

    def _deliver(self, settles: Sequence[tuple[str, str]]) -> None:
        for queue, actor in self.hooks:
            for job_id, state in settles:
                self.dispatcher.send_to(actor, job_id, state, queue_name=queue)
