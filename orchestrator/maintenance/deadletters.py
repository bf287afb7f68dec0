"""dramatiq's own dead letters, reconciled with PostgreSQL, on Redis or RabbitMQ.

dramatiq dead-letters a message after its actor's own retries run out (infrastructure errors
around a claim: the database down for minutes, a bug). On Redis it keeps them under
``<namespace>:<queue>.XQ`` (a zset) and ``.XQ.msgs`` (a hash) for 7 days, with nothing to list
or requeue them; on RabbitMQ they are messages of the ``<queue>.XQ`` queue (7 days' TTL).
Either way a job whose message died there may still be live in PostgreSQL. The broker's side
is :mod:`orchestrator.brokers` (``BrokerOps.drain_dead_letters``).

:class:`ReconcileDeadLetters` (a clock task) moves each such message into the
``broker_dead_letters`` table, where ``orchestrator dlq list --broker`` and the ops API show
it, and re-dispatches its job when the job is still non-terminal (the claim being a
compare-and-set, a redundant message is harmless). Only then is the message removed from the
broker (deleted from Redis, acked on RabbitMQ), so a crash in between repeats the copy
(``ON CONFLICT DO NOTHING``), never loses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from orchestrator.broker import Dispatcher
from orchestrator.brokers import DeadLetter, broker_ops
from orchestrator.brokers.redis_broker import xq_keys
from orchestrator.config import Settings
from orchestrator.db.store import Store
from orchestrator.logs import get_logger
from orchestrator.models import JobState

if TYPE_CHECKING:
    from orchestrator.api import Orchestrator

log = get_logger(__name__)

# Messages read from the XQ per pass: bounded, like every clock task.
BATCH_LIMIT = 500
REDISPATCHED = "redispatched"
NONE = "none"

__all__ = [
    "BATCH_LIMIT",
    "DeadLetter",
    "ReconcileDeadLetters",
    "broker_dead_letters_waiting",
    "recent_dead_letters",
    "xq_keys",
]


@dataclass(frozen=True, slots=True)
class ReconcileDeadLetters:
    """Copy the queue's dead letters to PostgreSQL, re-dispatching live jobs."""

    name: ClassVar[str] = "dead_letters_reconciled"
    store: Store
    dispatcher: Dispatcher
    settings: Settings
    owner: str

    def run_once(self) -> int:
        queue = self.settings.queue_name
        ops = broker_ops(self.settings)
        try:
            count = ops.drain_dead_letters(
                queue, BATCH_LIMIT, lambda letter: self._reconcile_one(queue, letter)
            )
        finally:
            ops.close()
        if count:
            log.warning(
                "clock.dead_letters_reconciled", count=count, owner=self.owner, broker=ops.kind
            )
        return count

    def preview(self) -> int:
        """How many messages sit in the queue's XQ."""
        return broker_dead_letters_waiting(self.settings)

    def _reconcile_one(self, queue: str, letter: DeadLetter) -> None:
        job = self.store.job(letter.job_id) if letter.job_id else None
        live = job is not None and not job.state.is_terminal
        args = {
            "message_id": letter.message_id,
            "queue": queue,
            "job_id": letter.job_id,
            "actor_name": letter.message.get("actor_name"),
            "dead_lettered_at": letter.dead_lettered_at,
            "job_state": str(job.state) if job else None,
            "action": REDISPATCHED if live else NONE,
            "message": letter.message,
        }
        inserted = self.store.insert_broker_dead_letter(args)
        if inserted and live and job is not None and job.state is not JobState.RUNNING:
            self.dispatcher.send(job.id)


def broker_dead_letters_waiting(settings: Settings, timeout_s: float | None = None) -> int:
    """Messages in the broker's XQ of the orchestrator's queue, not copied to PostgreSQL yet
    (raises :class:`~orchestrator.brokers.BrokerUnavailable` when the broker does not answer)."""
    ops = broker_ops(settings, timeout_s)
    try:
        return ops.counts(settings.queue_name).dead
    finally:
        ops.close()


def recent_dead_letters(orch: Orchestrator, limit: int) -> list[dict[str, Any]]:
    rows = orch.ops_store.recent_dead_letters(limit)
    return [
        {
            "message_id": r["message_id"],
            "queue": r["queue"],
            "job_id": r["job_id"],
            "actor_name": r["actor_name"],
            "dead_lettered_at": r["dead_lettered_at"].isoformat(),
            "seen_at": r["seen_at"].isoformat(),
            "job_state": r["job_state"],
            "action": r["action"],
        }
        for r in rows
    ]
