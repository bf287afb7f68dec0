"""dramatiq's RedisBroker, and its queues and dead letters read from Redis keys.

dramatiq keeps a queue's messages under ``<namespace>:<queue>`` (a list of ids) and
``<namespace>:<queue>.msgs`` (a hash id -> message), delayed ones under ``<queue>.DQ``, and dead
letters under ``<namespace>:<queue>.XQ`` (a zset of message ids scored by when they died) plus
``<namespace>:<queue>.XQ.msgs`` (a hash of id -> encoded message), for 7 days, with no API to
list or requeue them: reading those keys is the only way (dramatiq/brokers/redis/dispatch.lua).
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import current_millis

from orchestrator.brokers.base import BrokerKind, BrokerUnavailable, DeadLetter, QueueCounts
from orchestrator.config import Settings

# A worker that stops heartbeating for this long has its unacked messages requeued by
# maintenance. Postgres leases are the real guard; this only makes redelivery prompt.
HEARTBEAT_TIMEOUT_MS = 15_000
# Maintenance (requeueing dead workers' messages) runs on 1 in N broker calls; dramatiq's
# default of 1000 leaves a killed worker's messages stranded for minutes on a quiet queue.
MAINTENANCE_CHANCE = 100


def redis_for(settings: Settings, timeout_s: float | None = None) -> redis.Redis:
    """A client of the broker's Redis with connect and read timeouts (default
    ``ORCHESTRATOR_REDIS_TIMEOUT_S``).

    dramatiq's RedisBroker, given a URL, builds a pool that ignores socket options, so the
    broker gets this client instead. Its consumers poll with a Lua script, never a blocking
    command, so a read timeout only ever cuts a Redis that stopped answering."""
    timeout = settings.redis_timeout_s if timeout_s is None else timeout_s
    client: redis.Redis = redis.Redis.from_url(
        settings.dramatiq_broker_url, socket_timeout=timeout, socket_connect_timeout=timeout
    )
    return client


def redis_broker(settings: Settings, **overrides: Any) -> RedisBroker:
    options: dict[str, Any] = {
        "client": redis_for(settings),
        "namespace": settings.redis_namespace,
        "heartbeat_timeout": HEARTBEAT_TIMEOUT_MS,
        "maintenance_chance": MAINTENANCE_CHANCE,
        **overrides,
    }
    return RedisBroker(**options)  # type: ignore[no-untyped-call]


def enqueue_many(broker: RedisBroker, messages: Sequence[dramatiq.Message[Any]]) -> None:
    """``broker.enqueue`` of each message (none delayed), in one pipelined round trip.

    Each message goes through the same ``dispatch.lua`` enqueue, with the same middleware
    hooks around it, as ``RedisBroker.enqueue`` (dramatiq 2.2, pinned): only the round trips
    are shared. Measured: a third of the client's and of Redis's CPU per message. EVALSHA
    directly (a pipeline given Script objects first asks SCRIPT EXISTS); a Redis that lost its
    scripts gets the script again and the batch again (a duplicate message is harmless: the
    claim decides). Raises what the pipeline raises; messages sent before a failure stay sent.
    """
    prepared = []
    for message in messages:
        # As Message.copy: each enqueued message gets an id of its own in Redis.
        options = {**message.options, "redis_message_id": str(uuid.uuid4())}
        copy = dataclasses.replace(message, options=options)
        broker.emit_before("enqueue", copy, None)
        prepared.append(copy)
    script = broker.scripts["dispatch"]
    try:
        _dispatch_enqueues(broker, script.sha, prepared)
    except redis.exceptions.NoScriptError:
        script.sha = broker.client.script_load(script.script)
        _dispatch_enqueues(broker, script.sha, prepared)
    for copy in prepared:
        broker.emit_after("enqueue", copy, None)


def _dispatch_enqueues(broker: RedisBroker, sha: str, messages: Sequence[Any]) -> None:
    pipe = broker.client.pipeline(transaction=False)
    for message in messages:  # the arguments of RedisBroker._dispatch("enqueue")
        pipe.evalsha(
            sha,
            1,
            broker.namespace,
            "enqueue",
            current_millis(),
            message.queue_name,
            broker.broker_id,
            broker.heartbeat_timeout,
            broker.dead_message_ttl,
            broker._should_do_maintenance("enqueue"),
            broker._max_unpack_size(),  # type: ignore[no-untyped-call]
            message.options["redis_message_id"],
            message.encode(),
        )
    pipe.execute()


def xq_keys(namespace: str, queue: str) -> tuple[str, str]:
    """dramatiq's dead-letter keys for a queue (dramatiq/brokers/redis/dispatch.lua)."""
    base = f"{namespace}:{queue}.XQ"
    return base, f"{base}.msgs"


def read_dead_letters(
    client: redis.Redis, namespace: str, queue: str, limit: int
) -> list[DeadLetter]:
    """The oldest ``limit`` dead letters of ``queue``, oldest first."""
    zset, msgs = xq_keys(namespace, queue)
    entries: list[Any] = list(client.zrange(zset, 0, limit - 1, withscores=True))
    if not entries:
        return []
    bodies: list[Any] = list(client.hmget(msgs, [m for m, _ in entries]))
    letters = []
    for (message_id, score), body in zip(entries, bodies, strict=True):
        when = datetime.fromtimestamp(score / 1000, UTC)
        letters.append(DeadLetter(_text(message_id), when, decode_message(body)))
    return letters


def decode_message(body: bytes | str | None) -> dict[str, Any]:
    """A dramatiq message's JSON (``{"undecodable": True}`` when it is not one)."""
    try:
        message = json.loads(body) if body else {}
    except ValueError:
        return {"undecodable": True}
    return message if isinstance(message, dict) else {"undecodable": True}


class RedisOps:
    """:class:`~orchestrator.brokers.BrokerOps` on dramatiq's Redis keys."""

    kind: BrokerKind = "redis"

    def __init__(self, settings: Settings, timeout_s: float) -> None:
        self.namespace = settings.redis_namespace
        self.client = redis_for(settings, timeout_s)

    def counts(self, queue: str) -> QueueCounts:
        ns = self.namespace
        try:
            with self.client.pipeline(transaction=False) as pipe:
                pipe.llen(f"{ns}:{queue}")
                pipe.llen(f"{ns}:{queue}.DQ")
                pipe.zcard(xq_keys(ns, queue)[0])
                queued, delayed, dead = pipe.execute()
        except redis.RedisError as exc:
            raise BrokerUnavailable(f"redis: {type(exc).__name__}") from exc
        return QueueCounts(int(queued), int(delayed), int(dead))

    def drain_dead_letters(
        self, queue: str, limit: int, handle: Callable[[DeadLetter], None]
    ) -> int:
        """Each of the oldest ``limit`` dead letters to ``handle``; those it returned from are
        then deleted (one that raised, and the rest, stay for the next pass)."""
        zset, msgs = xq_keys(self.namespace, queue)
        try:
            letters = read_dead_letters(self.client, self.namespace, queue, limit)
        except redis.RedisError as exc:
            raise BrokerUnavailable(f"redis: {type(exc).__name__}") from exc
        done: list[str] = []
        try:
            for letter in letters:
                handle(letter)
                done.append(letter.message_id)
        finally:
            if done:
                with self.client.pipeline(transaction=False) as pipe:
                    pipe.zrem(zset, *done)
                    pipe.hdel(msgs, *done)
                    pipe.execute()
        return len(done)

    def close(self) -> None:
        self.client.close()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
