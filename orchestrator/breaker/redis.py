"""The shared breaker: state in Redis, every change one Lua script (``lua/*.lua``)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis
from redis.commands.core import Script

from orchestrator.breaker.config import (
    HALF_OPEN_RECHECK_MS,
    BreakerConfig,
    BreakerStatus,
    Permit,
    RecordedCall,
)
from orchestrator.breaker.signals import Signal
from orchestrator.breaker.states import BreakerState, OverrideAction, Verdict
from orchestrator.logs import get_logger

log = get_logger("orchestrator.breaker")  # one logger for the whole package

LUA_DIR = Path(__file__).resolve().parent / "lua"
_OVERRIDE_ACTIONS = frozenset(OverrideAction)


def redis_client(url: str, timeout_s: float) -> redis.Redis:
    """A client with short timeouts and no retries: a script that timed out is not re-run."""
    client: redis.Redis = redis.Redis.from_url(
        url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, decode_responses=True
    )
    return client


class RedisBreaker:
    """The shared breaker: state in Redis, every change one Lua script. Raises RedisError."""

    def __init__(
        self,
        client: redis.Redis,
        config: BreakerConfig,
        namespace: str,
        *,
        now_ms: Callable[[], int] | None = None,
    ) -> None:
        self.client = client
        self.config = config
        self.namespace = namespace
        self._now_ms = now_ms  # None: Redis TIME (production); tests inject a clock
        self._acquire = _script(client, "breaker_acquire.lua")
        self._record = _script(client, "breaker_record.lua")
        self._override = _script(client, "breaker_override.lua")

    def _keys(self, provider: str) -> tuple[str, str, str]:
        base = f"{self.namespace}:breaker:{provider}"
        return base, f"{base}:calls", f"{self.namespace}:ratelimit:{provider}"

    def _now(self) -> str:
        return str(self._now_ms()) if self._now_ms else ""

    def acquire(self, provider: str) -> Permit:
        state_key, _, bucket_key = self._keys(provider)
        token = uuid.uuid4().hex
        cfg = self.config
        args: list[str | int | float] = [
            self._now(),
            token,
            cfg.probe_lease_ms,
            cfg.rate(provider),
            cfg.capacity(provider),
            HALF_OPEN_RECHECK_MS,
            cfg.cooldown_ms,
        ]
        verdict, wait_ms, state = self._acquire(keys=[state_key, bucket_key], args=args)
        return Permit(provider, Verdict(verdict), int(wait_ms) / 1000, BreakerState(state), token)

    def record(
        self, permit: Permit, signal: Signal, retry_after_s: float | None = None
    ) -> BreakerState:
        return self.record_many([(permit, signal, retry_after_s)])[-1]

    def record_many(self, calls: Sequence[RecordedCall]) -> list[BreakerState]:
        """Report finished calls in order, in one round trip (a pipeline of record scripts);
        the breaker's state after each."""
        try:
            replies = self._record_pipeline(calls)
        except redis.exceptions.NoScriptError:  # Redis restarted: every call failed alike
            self._record.sha = self.client.script_load(self._record.script)
            replies = self._record_pipeline(calls)
        states = []
        for (permit, _, _), (state, changed, *why) in zip(calls, replies, strict=True):
            if int(changed):
                log.warning(
                    "breaker.state_changed", provider=permit.provider, state=str(state), why=why
                )
            states.append(BreakerState(state))
        return states

    def _record_pipeline(self, calls: Sequence[RecordedCall]) -> list[Any]:
        # EVALSHA itself: a pipeline given Script objects first asks SCRIPT EXISTS (one more
        # round trip per batch).
        pipe = self.client.pipeline(transaction=False)
        for permit, signal, retry_after_s in calls:
            keys = self._keys(permit.provider)
            args = self._record_args(permit, signal, retry_after_s)
            pipe.evalsha(self._record.sha, len(keys), *keys, *args)
        replies: list[Any] = pipe.execute()
        return replies

    def _record_args(
        self, permit: Permit, signal: Signal, retry_after_s: float | None
    ) -> list[str | int | float]:
        cfg = self.config
        return [
            self._now(),
            str(signal),
            permit.token if permit.verdict == Verdict.PROBE else "",
            cfg.failure_threshold,
            cfg.window_calls,
            cfg.window_ms,
            cfg.min_calls,
            cfg.failure_rate,
            cfg.cooldown_ms,
            cfg.cooldown_max_ms,
            cfg.pause_ms(retry_after_s),
        ]

    def override(self, provider: str, action: str, actor: str, reason: str) -> BreakerState:
        """``open`` (held open until closed) or ``close``, recorded with who, why and when;
        ``seed_open`` re-seeds a Redis that lost its data (see :class:`OverrideAction`)."""
        if action not in _OVERRIDE_ACTIONS:
            raise ValueError(f"unknown breaker action {action!r}")
        state_key, calls_key, _ = self._keys(provider)
        args: list[str | int | float] = [
            self._now(),
            str(action),
            actor,
            reason,
            self.config.cooldown_ms,
        ]
        state, _changed = self._override(keys=[state_key, calls_key], args=args)
        return BreakerState(state)

    def status(self, provider: str) -> BreakerStatus:
        state_key, calls_key, _ = self._keys(provider)
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(state_key)
        pipe.lrange(calls_key, 0, -1)
        pipe.time()
        fields, calls, (secs, micros) = pipe.execute()
        now = int(self._now()) if self._now_ms else int(secs) * 1000 + int(micros) // 1000
        recent = [c.split(":") for c in calls]
        recent = [(int(ms), int(failed)) for ms, failed in recent]
        in_window = [failed for ms, failed in recent if ms >= now - self.config.window_ms]
        return BreakerStatus.from_fields(provider, fields, in_window, now, self.config, "redis")


def _script(client: redis.Redis, name: str) -> Script:
    """The script ``lua/<name>``, after ``lua/now.lua`` (which sets its ``now``)."""
    return client.register_script((LUA_DIR / "now.lua").read_text() + (LUA_DIR / name).read_text())
