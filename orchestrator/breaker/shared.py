"""The executor's breaker: Redis, with the per-process fallback while Redis is away."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import redis

from orchestrator.background import Batcher
from orchestrator.breaker.config import BreakerConfig, BreakerStatus, Permit, RecordedCall
from orchestrator.breaker.local import LocalBreaker
from orchestrator.breaker.redis import RedisBreaker, redis_client
from orchestrator.breaker.signals import Signal
from orchestrator.breaker.states import BreakerState, OverrideAction, Verdict
from orchestrator.config import Settings
from orchestrator.logs import get_logger

log = get_logger("orchestrator.breaker")  # one logger for the whole package

# A breaker Redis cannot answer is retried this often (s) while the local fallback works.
REDIS_RETRY_INTERVAL_S = 1.0
# Successes of ordinary calls are sent at most this often (s), each time all that gathered.
# Any other outcome sends them at once, ahead of itself (SharedBreaker).
SUCCESS_BATCH_S = 0.02


class SharedBreaker:
    """The fleet-wide breaker, degrading to a per-process one while Redis is unreachable.

    Redis errors are translated here and nowhere else: any ``redis.RedisError`` switches
    this process to its :class:`LocalBreaker` (logged once per outage), and Redis is tried
    again every :data:`REDIS_RETRY_INTERVAL_S`.

    A success of an ordinary (not probe) call, nearly every call, is recorded off the
    caller's path: a background thread sends the successes gathered over
    :data:`SUCCESS_BATCH_S` in one round trip. Every other outcome is recorded before
    ``record`` returns, together with the successes still waiting, so this process's calls
    reach Redis in the order they ended and a failure never counts as consecutive across an
    earlier success. ``status`` and ``flush`` send what is waiting first.

    The closed lease: when Redis answers a batch of successes with ``closed``, calls to that
    provider are allowed without asking Redis for ``closed_lease_s`` (the next batch renews
    it). Any other outcome ends the lease before its record is sent, and any answer but
    ``closed`` ends it too, so a failing provider is asked about on every call, as without a
    lease. A breaker opened elsewhere (another process's failures, an operator) is seen here
    within the lease. A provider with a rate limit never gets one: every call takes a token
    from Redis.
    """

    def __init__(
        self,
        shared: RedisBreaker,
        local: LocalBreaker,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        closed_lease_s: float = 0.0,
    ) -> None:
        self.shared = shared
        self.local = local
        self._monotonic = monotonic
        self._closed_lease_s = closed_lease_s
        self._lock = threading.Lock()
        self._down_until: float | None = None  # None: Redis is in use
        self._closed_until: dict[str, float] = {}  # provider -> end of its closed lease
        self._calls = Batcher(self._send, name="breaker-recorder", gather_s=SUCCESS_BATCH_S)

    @classmethod
    def from_settings(cls, settings: Settings) -> SharedBreaker:
        config = BreakerConfig.from_settings(settings)
        client = redis_client(settings.redis_url, settings.breaker_redis_timeout_ms / 1000)
        return cls(
            RedisBreaker(client, config, settings.redis_namespace),
            LocalBreaker(config),
            closed_lease_s=settings.breaker_closed_lease_ms / 1000,
        )

    def _use_redis(self) -> bool:
        with self._lock:
            return self._down_until is None or self._monotonic() >= self._down_until

    def _failed(self, exc: redis.RedisError) -> None:
        with self._lock:
            first = self._down_until is None
            self._down_until = self._monotonic() + REDIS_RETRY_INTERVAL_S
        if first:
            log.warning("breaker.redis_unavailable", error=type(exc).__name__)

    def _succeeded(self) -> None:
        with self._lock:
            if self._down_until is None:
                return
            self._down_until = None
        log.warning("breaker.redis_restored")
        self._reseed()

    def _reseed(self) -> None:
        """Redis may have come back empty: carry over what this process saw open."""
        for provider in self.local.open_providers():
            try:
                self.shared.override(
                    provider, OverrideAction.SEED_OPEN, "fallback", "seen open while Redis was away"
                )
            except redis.RedisError as exc:
                self._failed(exc)
                return

    def acquire(self, provider: str) -> Permit:
        if self._use_redis():
            if self._monotonic() < self._closed_until.get(provider, 0.0):
                return Permit(provider, Verdict.ALLOW, 0.0, BreakerState.CLOSED, "")
            try:
                permit = self.shared.acquire(provider)
            except redis.RedisError as exc:
                self._failed(exc)
            else:
                self._succeeded()
                return permit
        return self.local.acquire(provider)

    def record(self, permit: Permit, signal: Signal, retry_after_s: float | None = None) -> None:
        if permit.backend == "local":
            self.local.record(permit, signal, retry_after_s)
            return
        if signal is Signal.SUCCESS and permit.verdict == Verdict.ALLOW:
            self._calls.put((permit, signal, retry_after_s))
        else:
            self._closed_until.pop(permit.provider, None)
            self._calls.handle_now([(permit, signal, retry_after_s)])

    def flush(self) -> None:
        """Record the successes still waiting for the recorder thread, now."""
        self._calls.handle_now([])

    def _send(self, calls: Sequence[RecordedCall]) -> None:
        try:
            states = self.shared.record_many(calls)
        except redis.RedisError as exc:
            self._closed_until.clear()
            self._failed(exc)
            for permit, signal, retry_after_s in calls:
                self.local.record(permit, signal, retry_after_s)
            return
        self._renew_leases(calls, states)

    def _renew_leases(self, calls: Sequence[RecordedCall], states: Sequence[BreakerState]) -> None:
        """After a batch was recorded (in order): a provider whose last call succeeded with
        the breaker closed holds a closed lease from now; any other provider in it, none."""
        until = self._monotonic() + self._closed_lease_s
        for (permit, signal, _), state in zip(calls, states, strict=True):
            provider = permit.provider
            if (
                self._closed_lease_s > 0
                and signal is Signal.SUCCESS
                and state == BreakerState.CLOSED
                and not self.shared.config.rate(provider)
            ):
                self._closed_until[provider] = until
            else:
                self._closed_until.pop(provider, None)

    def status(self, provider: str) -> BreakerStatus:
        self.flush()
        if self._use_redis():
            try:
                return self.shared.status(provider)
            except redis.RedisError as exc:
                self._failed(exc)
        return self.local.status(provider)
