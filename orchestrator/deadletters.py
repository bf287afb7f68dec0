"""dramatiq's own dead letters, reconciled with PostgreSQL.

dramatiq dead-letters a message after its actor's own retries run out (infrastructure errors
around a claim: the database down for minutes, a bug). It keeps them in Redis only, under
``<namespace>:<queue>.XQ`` (a zset of message ids scored by when they died) and
``<namespace>:<queue>.XQ.msgs`` (a hash of id -> encoded message), for 7 days, with nothing
to list or requeue them. A job whose message died there may still be live in PostgreSQL.

:func:`reconcile_dead_letters` (a clock task) moves each such message into the
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
from typing import Any

import redis
from psycopg.types.json import Jsonb

from orchestrator.api import Orchestrator
from orchestrator.logs import get_logger
from orchestrator.models import JobState
from orchestrator.store import q

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


def reconcile_dead_letters(orch: Orchestrator, owner: str) -> int:
    """Copy the queue's dead letters to PostgreSQL, re-dispatching live jobs; returns how many."""
    client = redis.Redis.from_url(orch.settings.redis_url)
    try:
        namespace, queue = orch.settings.redis_namespace, orch.settings.queue_name
        letters = read_dead_letters(client, namespace, queue)
        for letter in letters:
            _reconcile_one(orch, queue, letter)
        if letters:
            zset, msgs = xq_keys(namespace, queue)
            ids = [letter.message_id for letter in letters]
            client.zrem(zset, *ids)
            client.hdel(msgs, *ids)
            log.warning("clock.dead_letters_reconciled", count=len(letters), owner=owner)
        return len(letters)
    finally:
        client.close()


def count_dead_letters(orch: Orchestrator) -> int:
    """How many messages sit in the queue's XQ (the clock's dry-run preview)."""
    client = redis.Redis.from_url(orch.settings.redis_url)
    try:
        return int(
            client.zcard(xq_keys(orch.settings.redis_namespace, orch.settings.queue_name)[0])
        )
    finally:
        client.close()


def _reconcile_one(orch: Orchestrator, queue: str, letter: DeadLetter) -> None:
    job = orch.store.job(letter.job_id) if letter.job_id else None
    live = job is not None and not job.state.is_terminal
    args = {
        "message_id": letter.message_id,
        "queue": queue,
        "job_id": letter.job_id,
        "actor_name": letter.message.get("actor_name"),
        "dead_lettered_at": letter.dead_lettered_at,
        "job_state": str(job.state) if job else None,
        "action": REDISPATCHED if live else NONE,
        "message": Jsonb(letter.message),
    }
    with orch.store.connection() as conn:
        inserted = conn.execute(q("broker_dead_letter_insert"), args).fetchone()
    if inserted and live and job is not None and job.state is not JobState.RUNNING:
        orch.dispatcher.send(job.id)


def recent_dead_letters(orch: Orchestrator, limit: int) -> list[dict[str, Any]]:
    with orch.store.connection() as conn:
        rows = conn.execute(q("broker_dead_letters_recent"), {"limit": limit}).fetchall()
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
