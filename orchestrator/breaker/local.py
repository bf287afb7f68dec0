"""The in-process breaker: the Lua scripts' rules for one process (while Redis is away)."""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from orchestrator.breaker.config import (
    HALF_OPEN_RECHECK_MS,
    BreakerConfig,
    BreakerStatus,
    Permit,
)
from orchestrator.breaker.signals import Signal
from orchestrator.breaker.states import BreakerState, Verdict
from orchestrator.logs import get_logger

log = get_logger("orchestrator.breaker")  # one logger for the whole package


@dataclass(slots=True)
class _LocalState:
    state: BreakerState = BreakerState.CLOSED
    consecutive: int = 0
    calls: deque[tuple[int, int]] = field(default_factory=deque)
    trips: int = 0
    failed_probes: int = 0
    opened_at_ms: int = 0
    next_probe_ms: int = 0
    cooldown_ms: int = 0
    probe_token: str | None = None
    probe_until_ms: int = 0
    trip_reason: str | None = None
    tokens: float | None = None
    refilled_ms: int = 0
    blocked_until_ms: int = 0


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class LocalBreaker:
    """The same rules as the Lua scripts, for one process (used while Redis is away)."""

    def __init__(self, config: BreakerConfig, *, now_ms: Callable[[], int] = _wall_ms) -> None:
        self.config = config
        self._now_ms = now_ms
        self._lock = threading.Lock()
        self._states: dict[str, _LocalState] = {}

    def _get(self, provider: str) -> _LocalState:
        return self._states.setdefault(provider, _LocalState(cooldown_ms=self.config.cooldown_ms))

    def acquire(self, provider: str) -> Permit:
        token = uuid.uuid4().hex
        with self._lock:
            verdict, wait_ms, state = self._acquire(self._get(provider), provider, token)
        return Permit(provider, verdict, wait_ms / 1000, state, token, "local")

    def _acquire(
        self, s: _LocalState, provider: str, token: str
    ) -> tuple[Verdict, int, BreakerState]:
        now = self._now_ms()
        verdict = Verdict.ALLOW
        if s.state == BreakerState.OPEN:
            if now < s.next_probe_ms:
                return Verdict.OPEN, s.next_probe_ms - now, s.state
            verdict = Verdict.PROBE
        elif s.state == BreakerState.HALF_OPEN:
            if now < s.probe_until_ms:
                wait_ms = min(s.probe_until_ms - now, HALF_OPEN_RECHECK_MS)
                return Verdict.HALF_OPEN, wait_ms, s.state
            verdict = Verdict.PROBE
        if now < s.blocked_until_ms:
            return Verdict.RATE_LIMITED, s.blocked_until_ms - now, s.state
        rate = self.config.rate(provider)
        if rate > 0:
            capacity = self.config.capacity(provider)
            tokens = capacity if s.tokens is None else s.tokens
            tokens = min(capacity, tokens + max(0, now - s.refilled_ms) * rate / 1000)
            s.refilled_ms = now
            if tokens < 1:
                s.tokens = tokens
                return Verdict.RATE_LIMITED, -int(-(1 - tokens) * 1000 // rate), s.state
            s.tokens = tokens - 1
        if verdict == Verdict.PROBE:
            s.state, s.probe_token = BreakerState.HALF_OPEN, token
            s.probe_until_ms = now + self.config.probe_lease_ms
            return Verdict.PROBE, 0, s.state
        return Verdict.ALLOW, 0, s.state

    def record(
        self, permit: Permit, signal: Signal, retry_after_s: float | None = None
    ) -> BreakerState:
        with self._lock:
            return self._record(self._get(permit.provider), permit, signal, retry_after_s)

    def _record(
        self, s: _LocalState, permit: Permit, signal: Signal, retry_after_s: float | None
    ) -> BreakerState:
        now, cfg = self._now_ms(), self.config
        if signal is Signal.RATE_LIMITED:
            if pause_ms := cfg.pause_ms(retry_after_s):
                s.blocked_until_ms = max(s.blocked_until_ms, now + pause_ms)
            signal = Signal.NEUTRAL
        if s.state == BreakerState.HALF_OPEN:
            if permit.verdict != Verdict.PROBE or permit.token != s.probe_token:
                return s.state
            s.probe_token, s.probe_until_ms = None, 0
            if signal is Signal.SUCCESS:
                s.state, s.consecutive, s.cooldown_ms = BreakerState.CLOSED, 0, cfg.cooldown_ms
                s.failed_probes = 0
                s.calls.clear()
            elif signal is Signal.FAILURE:
                s.cooldown_ms = min(s.cooldown_ms * 2, cfg.cooldown_max_ms)
                s.state, s.next_probe_ms = BreakerState.OPEN, now + s.cooldown_ms
                s.failed_probes += 1
            return s.state
        if s.state != BreakerState.CLOSED or signal is Signal.NEUTRAL:
            return s.state
        failed = int(signal is Signal.FAILURE)
        s.calls.appendleft((now, failed))
        while len(s.calls) > cfg.window_calls:
            s.calls.pop()
        if not failed:
            s.consecutive = 0
            return s.state
        s.consecutive += 1
        recent = [f for ms, f in s.calls if ms >= now - cfg.window_ms]
        if s.consecutive >= cfg.failure_threshold:
            self._trip(s, permit.provider, now, f"{s.consecutive} consecutive failures")
        elif len(recent) >= cfg.min_calls and sum(recent) >= cfg.failure_rate * len(recent):
            reason = f"{sum(recent)} of the last {len(recent)} calls failed"
            self._trip(s, permit.provider, now, reason)
        return s.state

    def _trip(self, s: _LocalState, provider: str, now: int, reason: str) -> None:
        s.state, s.opened_at_ms, s.trip_reason = BreakerState.OPEN, now, reason
        s.cooldown_ms = self.config.cooldown_ms
        s.next_probe_ms = now + s.cooldown_ms
        s.trips += 1
        s.failed_probes = 0
        s.calls.clear()
        log.warning("breaker.state_changed", provider=provider, state=str(s.state), backend="local")

    def open_providers(self) -> Iterator[str]:
        """Providers this process currently sees open or half-open."""
        with self._lock:
            items = list(self._states.items())
        return (name for name, s in items if s.state != BreakerState.CLOSED)

    def status(self, provider: str) -> BreakerStatus:
        with self._lock:
            s = self._get(provider)
            now = self._now_ms()
            fields = {
                "state": str(s.state),
                "consecutive": str(s.consecutive),
                "trips": str(s.trips),
                "failed_probes": str(s.failed_probes),
                "opened_at_ms": str(s.opened_at_ms),
                "next_probe_ms": str(s.next_probe_ms),
                "cooldown_ms": str(s.cooldown_ms),
                "probe_until_ms": str(s.probe_until_ms),
                "trip_reason": s.trip_reason or "",
            }
            recent = [f for ms, f in s.calls if ms >= now - self.config.window_ms]
        return BreakerStatus.from_fields(provider, fields, recent, now, self.config, "local")
