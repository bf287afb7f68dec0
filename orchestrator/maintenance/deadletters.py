"""dramatiq's own dead letters, reconciled with PostgreSQL.

dramatiq dead-letters a message after its actor's own retries run out (infrastructure errors
around a claim: the database down for minutes, a bug). It keeps them in Redis only, under
``<namespace>:<queue>.XQ`` (a zset of message ids scored by when they died) and
``<namespace>:<queue>.XQ.msgs`` (a hash of id -> encoded message), for 7 days, with nothing
to list or requeue them. A job whose message died there may still be live in PostgreSQL.

:class:`ReconcileDeadLetters` (a clock task) moves each such message into the
``broker_dead_letters`` table, where ``orchestrator dlq list --broker`` and the ops API show
it, and re-dispatches its job when the job is still non-terminal (the claim being a
compare-and-set, a redundant message is harmless). Only then is the message removed from
Redis, so a crash in between repeats the copy (``ON CONFLICT DO NOTHING``), never loses it.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

import redis

from orchestrator.broker import Dispatcher, redis_for
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


@dataclass(frozen=True, slots=True)
class DeadLetter:
    message_id: str
    dead_lettered_at: datetime
    message: dict[str, Any]

    @property
    def job_id(self) -> str | None:
        args = self.message.get("args") or []
        if not args:
            return None
        try:
            return str(uuid.UUID(str(args[0])))
        except ValueError:
            return None


def xq_keys(namespace: str, queue: str) -> tuple[str, str]:
    """dramatiq's dead-letter keys for a queue (dramatiq/brokers/redis/dispatch.lua)."""
    base = f"{namespace}:{queue}.XQ"
    return base, f"{base}.msgs"


def read_dead_letters(client: redis.Redis, namespace: str, queue: str) -> list[DeadLetter]:
    zset, msgs = xq_keys(namespace, queue)
    entries: list[Any] = list(client.zrange(zset, 0, BATCH_LIMIT - 1, withscores=True))
    if not entries:
        return []
    bodies: list[Any] = list(client.hmget(msgs, [m for m, _ in entries]))
    letters = []
    for (message_id, score), body in zip(entries, bodies, strict=True):
        try:
            message = json.loads(body) if body else {}
        except ValueError:
            message = {"undecodable": True}
        if not isinstance(message, dict):
            message = {"undecodable": True}
        when = datetime.fromtimestamp(score / 1000, UTC)
        letters.append(DeadLetter(_text(message_id), when, message))
    return letters


@dataclass(frozen=True, slots=True)
class ReconcileDeadLetters:
    """Copy the queue's dead letters to PostgreSQL, re-dispatching live jobs."""

    name: ClassVar[str] = "dead_letters_reconciled"
    store: Store
    dispatcher: Dispatcher
    settings: Settings
    owner: str

    def run_once(self) -> int:
        client = redis_for(self.settings)
        try:
            namespace, queue = self.settings.redis_namespace, self.settings.queue_name
            letters = read_dead_letters(client, namespace, queue)
            for letter in letters:
                self._reconcile_one(queue, letter)
            if letters:
                zset, msgs = xq_keys(namespace, queue)
                ids = [letter.message_id for letter in letters]
                client.zrem(zset, *ids)
                client.hdel(msgs, *ids)
                log.warning("clock.dead_letters_reconciled", count=len(letters), owner=self.owner)
            return len(letters)
        finally:
            client.close()

    def preview(self) -> int:
        """How many messages sit in the queue's XQ."""
        client = redis_for(self.settings)
        try:
            zset = xq_keys(self.settings.redis_namespace, self.settings.queue_name)[0]
            return int(client.zcard(zset))
        finally:
            client.close()

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


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
