"""Heartbeats of the fleet in Redis: which workers are alive, and which clock leads.

Every worker process (:class:`WorkerHeartbeat`, a dramatiq middleware started at worker boot)
and every clock (one beat per pass, saying whether it holds the leader lock) writes a record
every few seconds, with a TTL:

* ``<namespace>:orchestrator:heartbeat:<kind>:<host>:<pid>``: the record (JSON), which
  expires when its process stops beating: a key that exists is a live process;
* ``<namespace>:orchestrator:heartbeats``: a sorted set of those members (scored by expiry),
  so a reader finds them without scanning the keyspace.

Redis holds only ephemeral state here: losing it loses a few seconds of visibility, nothing
else. Writers never raise (a failed beat is logged once per outage); readers raise
:class:`HeartbeatsUnavailable`. Every client has connect and read timeouts.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import dramatiq
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from orchestrator import __version__
from orchestrator.config import Settings
from orchestrator.errors import OrchestratorError
from orchestrator.logs import get_logger

log = get_logger(__name__)

# A worker beats this often (s); its record lives WORKER_TTL_S (three missed beats and more).
BEAT_INTERVAL_S = 5.0
WORKER_TTL_S = 20.0
# A clock beats once a pass (ORCHESTRATOR_CLOCK_INTERVAL_S apart); its record lives at least
# this long, or three intervals.
CLOCK_TTL_MIN_S = 30.0
# Connect and read timeout of heartbeat clients (s): a silent Redis must not stall a pass.
REDIS_TIMEOUT_S = 2.0
# Members whose expiry passed this long ago (by the writer's clock) leave the index; the slack
# covers clock skew between hosts (liveness itself is the record key's TTL, kept by Redis).
PRUNE_SLACK_S = 60.0
# The index outlives its last writer by this long, then Redis drops it.
INDEX_TTL_S = 24 * 3600

WORKER, CLOCK = "worker", "clock"


class HeartbeatsUnavailable(OrchestratorError):
    """Redis could not be asked for the heartbeats."""


def heartbeat_client(url: str, timeout_s: float = REDIS_TIMEOUT_S) -> redis.Redis:
    """A Redis client with connect and read timeouts and no retries."""
    client: redis.Redis = redis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
    )
    return client


def clock_ttl_s(clock_interval_s: float) -> float:
    """How long a clock's beat counts: at least CLOCK_TTL_MIN_S, or three passes."""
    return max(CLOCK_TTL_MIN_S, 3 * clock_interval_s)


class Heartbeats:
    """The heartbeat records of one Redis namespace: write, remove, list the live ones."""

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.client = client
        self.index = f"{namespace}:orchestrator:heartbeats"
        self.prefix = f"{namespace}:orchestrator:heartbeat:"

    def write(self, member: str, record: Mapping[str, Any], ttl_s: float) -> None:
        now = time.time()
        pipe = self.client.pipeline(transaction=True)
        pipe.set(self.prefix + member, json.dumps(record), px=max(1, int(ttl_s * 1000)))
        pipe.zadd(self.index, {member: now + ttl_s})
        pipe.zremrangebyscore(self.index, "-inf", now - PRUNE_SLACK_S)
        pipe.expire(self.index, INDEX_TTL_S)
        pipe.execute()

    def remove(self, member: str) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self.prefix + member)
        pipe.zrem(self.index, member)
        pipe.execute()

    def live(self) -> list[dict[str, Any]]:
        """The records whose key has not expired, by kind, host and pid."""
        members = [str(m) for m in self.client.zrange(self.index, 0, -1)]
        if not members:
            return []
        raw = self.client.mget([self.prefix + m for m in members])
        records = [json.loads(value) for value in raw if value]
        return sorted(records, key=lambda r: (r["kind"], r["host"], r["pid"]))


class Beacon:
    """One process's heartbeat: :meth:`beat` writes it (never raises), :meth:`clear` removes it."""

    def __init__(
        self, redis_url: str, namespace: str, kind: str, ttl_s: float, **details: Any
    ) -> None:
        self.heartbeats = Heartbeats(heartbeat_client(redis_url), namespace)
        self.ttl_s = ttl_s
        self.member = f"{kind}:{socket.gethostname()}:{os.getpid()}"
        self.base: dict[str, Any] = {
            "kind": kind,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": time.time(),
            "version": __version__,
            **details,
        }
        self._failing = False

    def beat(self, **details: Any) -> bool:
        """Record that this process is alive now (with ``details``); False if Redis failed."""
        record = {**self.base, **details, "seen_at": time.time()}
        try:
            self.heartbeats.write(self.member, record, self.ttl_s)
        except redis.RedisError as exc:
            if not self._failing:
                kind, error = self.base["kind"], type(exc).__name__
                log.warning("heartbeat.write_failed", kind=kind, error=error)
            self._failing = True
            return False
        if self._failing:
            log.info("heartbeat.write_restored", kind=self.base["kind"])
        self._failing = False
        return True

    def clear(self) -> None:
        """Remove this process's record (a clean stop), then close the client."""
        try:
            self.heartbeats.remove(self.member)
        except redis.RedisError as exc:  # it expires by itself
            log.warning("heartbeat.remove_failed", kind=self.base["kind"], error=type(exc).__name__)
        finally:
            self.heartbeats.client.close()


def clock_beacon(settings: Settings) -> Beacon:
    """The clock's beacon; each beat says ``leader=True|False``."""
    ttl_s = clock_ttl_s(settings.clock_interval_s)
    return Beacon(settings.redis_url, settings.redis_namespace, CLOCK, ttl_s)


class WorkerHeartbeat(dramatiq.Middleware):
    """Beats for a worker process, from a daemon thread started at worker boot."""

    def __init__(self, settings: Settings, interval_s: float = BEAT_INTERVAL_S) -> None:
        self.settings = settings
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._beacon: Beacon | None = None

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        s = self.settings
        self._beacon = Beacon(
            s.redis_url, s.redis_namespace, WORKER, WORKER_TTL_S, threads=worker.worker_threads
        )
        self._thread = threading.Thread(
            target=self._run, args=(self._beacon,), name="orchestrator-heartbeat", daemon=True
        )
        self._thread.start()

    def _run(self, beacon: Beacon) -> None:
        while not self._stop.is_set():
            beacon.beat()
            self._stop.wait(self.interval_s)

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=REDIS_TIMEOUT_S * 2)
        if self._beacon is not None:
            self._beacon.clear()


# -- reading -------------------------------------------------------------------------------


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="seconds")


def _view(record: Mapping[str, Any], now: float) -> dict[str, Any]:
    view = {
        "id": f"{record['host']}:{record['pid']}",
        "host": record["host"],
        "pid": record["pid"],
        "last_seen": _iso(record["seen_at"]),
        "age_s": round(max(0.0, now - record["seen_at"]), 1),
        "started_at": _iso(record["started_at"]),
        "version": record.get("version"),
    }
    for key in ("leader", "threads"):
        if key in record:
            view[key] = record[key]
    return view


def fleet_status(records: list[dict[str, Any]], now: float, clock_ttl: float) -> dict[str, Any]:
    """What ``orchestrator status`` and ``GET /ops/api/status`` show: live workers, clocks
    (the leader first) and the problems: no clock leader seen within ``clock_ttl`` seconds is
    one (``ok`` false); no live worker is a warning."""
    workers = [_view(r, now) for r in records if r["kind"] == WORKER]
    clocks = [_view(r, now) for r in records if r["kind"] == CLOCK]
    clocks.sort(key=lambda c: (not c.get("leader"), c["age_s"]))
    leader = clocks[0] if clocks and clocks[0].get("leader") else None
    problems = []
    if leader is None:
        problems.append(
            f"no clock leader seen in the last {clock_ttl:.0f} s: is `orchestrator clock` running?"
        )
    warnings = [] if workers else [f"no worker seen in the last {WORKER_TTL_S:.0f} s"]
    return {
        "ok": not problems,
        "checked_at": _iso(now),
        "problems": problems,
        "warnings": warnings,
        "clock_leader": leader,
        "clocks": clocks,
        "workers": workers,
    }


class FleetStatus:
    """Reads the heartbeats of one deployment (one Redis client, reused); call it for
    :func:`fleet_status`. Raises :class:`HeartbeatsUnavailable` when Redis does not answer."""

    def __init__(self, settings: Settings) -> None:
        self.heartbeats = Heartbeats(heartbeat_client(settings.redis_url), settings.redis_namespace)
        self.clock_ttl = clock_ttl_s(settings.clock_interval_s)

    def __call__(self) -> dict[str, Any]:
        try:
            records = self.heartbeats.live()
        except redis.RedisError as exc:
            raise HeartbeatsUnavailable(
                f"cannot read heartbeats from Redis: {type(exc).__name__}"
            ) from exc
        return fleet_status(records, time.time(), self.clock_ttl)

    def close(self) -> None:
        self.heartbeats.client.close()
