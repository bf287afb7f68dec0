"""Per-provider circuit breakers and rate limits, shared by every process through Redis.

One breaker per provider::

    closed --(N consecutive failures, or a failure rate over the call window)--> open
    open --(cooldown passed; the first caller gets the one probe lease)--> half_open
    half_open --(the probe succeeded)--> closed
    half_open --(the probe failed: cooldown doubles, up to its maximum)--> open

Every move is one Lua script (``orchestrator/lua/*.lua``, each documenting the keys it
touches), so processes on any host see one state and exactly one probe runs at a time. Time
comes from Redis ``TIME`` inside the scripts, never from a host's clock (tests may pass it).
A token bucket in the same acquire script keeps the fleet under the provider's rate limit,
and a 429's ``Retry-After`` pauses the whole fleet.

Redis unreachable: :class:`SharedBreaker` falls back to a per-process :class:`LocalBreaker`
(same rules, logged once), tries Redis again every :data:`REDIS_RETRY_INTERVAL_S`, and when
it answers re-seeds it with any breaker the process saw open.

What counts (:func:`signal_of`): 5xx, timeouts and connection failures are failures;
successes, pending results and permanent refusals (declines, validation, auth) show a
healthy provider; a 429 only feeds the rate limiter; a 409 proves nothing.
"""

from __future__ import annotations

import enum
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import redis
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from orchestrator.background import Batcher
from orchestrator.config import Settings, parse_rate_limits
from orchestrator.logs import get_logger
from orchestrator.models import AttemptOutcome
from orchestrator.providers.base import Outcome

log = get_logger(__name__)

LUA_DIR = Path(__file__).resolve().parent / "lua"
# The providers an operator may name; status lists these even before their first call.
PROVIDERS: tuple[str, ...] = ("stripe", "sendgrid")
# Metric values of orchestrator_breaker_state.
STATE_VALUES: Mapping[str, int] = {"closed": 0, "half_open": 1, "open": 2}
# While a probe is in flight, denied callers come back after at most this long: a probe
# usually answers in well under a second, and the breaker closes the moment it does.
HALF_OPEN_RECHECK_MS = 1000
# A breaker Redis cannot answer is retried this often (s) while the local fallback works.
REDIS_RETRY_INTERVAL_S = 1.0
# A probe lease outlives one full provider call by this much (s), so a slow probe is never
# taken over while it is still running; a dead prober's lease lapses after it.
PROBE_LEASE_MARGIN_S = 5.0
ALLOWED = frozenset({"allow", "probe"})
# Successes of ordinary calls are sent at most this often (s), each time all that gathered.
# Any other outcome sends them at once, ahead of itself (SharedBreaker).
SUCCESS_BATCH_S = 0.02


class Signal(enum.StrEnum):
    """What one provider call says about the provider's health."""

    SUCCESS = "success"
    FAILURE = "failure"
    NEUTRAL = "neutral"
    RATE_LIMITED = "rate_limited"


def signal_of(outcome: Outcome) -> Signal:
    """Classify an attempt's outcome for the breaker (the one place that decides)."""
    kind = outcome.kind
    status = outcome.http_status
    if kind in (AttemptOutcome.SUCCEEDED, AttemptOutcome.PENDING, AttemptOutcome.PERMANENT):
        return Signal.SUCCESS
    if status == 429:
        return Signal.RATE_LIMITED
    if status is not None and status >= 500:
        return Signal.FAILURE
    if kind is AttemptOutcome.AMBIGUOUS:
        # No response at all is a failure; a 4xx classified ambiguous (an idempotency
        # mismatch: our bug) came from a healthy provider.
        return Signal.FAILURE if status is None else Signal.NEUTRAL
    return Signal.FAILURE if outcome.error_code == "connect_failed" else Signal.NEUTRAL


def signal_of_lookup_failure(exc: BaseException) -> Signal:
    """Classify a failed lookup from the HTTP status of the provider error behind it."""
    status = getattr(exc.__cause__, "http_status", None)
    if status == 429:
        return Signal.RATE_LIMITED
    if isinstance(status, int) and status < 500:
        return Signal.NEUTRAL  # the provider answered: a 404 or 400 says nothing of health
    return Signal.FAILURE


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """The breaker's rules; times in ms as the scripts use them."""

    failure_threshold: int = 5
    window_calls: int = 20
    window_ms: int = 60_000
    min_calls: int = 20
    failure_rate: float = 0.5
    cooldown_ms: int = 30_000
    cooldown_max_ms: int = 300_000
    probe_lease_ms: int = 30_000
    pause_max_ms: int = 60_000
    rate_limits: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> BreakerConfig:
        call_s = settings.provider_connect_timeout_s + settings.provider_read_timeout_s
        return cls(
            failure_threshold=settings.breaker_failure_threshold,
            window_calls=settings.breaker_window_calls,
            window_ms=int(settings.breaker_window_s * 1000),
            min_calls=settings.breaker_min_calls,
            failure_rate=settings.breaker_failure_rate,
            cooldown_ms=int(settings.breaker_cooldown_s * 1000),
            cooldown_max_ms=int(settings.breaker_cooldown_max_s * 1000),
            probe_lease_ms=int((call_s + PROBE_LEASE_MARGIN_S) * 1000),
            pause_max_ms=int(settings.rate_limit_pause_max_s * 1000),
            rate_limits=parse_rate_limits(settings.rate_limits),
        )

    def rate(self, provider: str) -> float:
        return self.rate_limits.get(provider, 0.0)

    def capacity(self, provider: str) -> float:
        """Burst size: one second's worth of calls (at least one)."""
        return max(1.0, self.rate(provider))

    def pause_ms(self, retry_after_s: float | None) -> int:
        """How long a 429 pauses the fleet: its Retry-After, capped."""
        return min(int((retry_after_s or 0) * 1000), self.pause_max_ms)


@dataclass(frozen=True, slots=True)
class Permit:
    """The breaker's answer for one call; report the call's end with the same permit."""

    provider: str
    verdict: str
    wait_s: float
    state: str
    token: str
    backend: str = "redis"

    @property
    def allowed(self) -> bool:
        return self.verdict in ALLOWED

    @property
    def reason(self) -> str:
        """Why a call was denied, for the job's transition record."""
        return {
            "open": f"breaker open for {self.provider}",
            "half_open": f"breaker half-open for {self.provider}, probe in flight",
            "forced_open": f"breaker held open by an operator for {self.provider}",
            "rate_limited": f"rate limit for {self.provider}",
        }.get(self.verdict, self.verdict)


# A finished call as reported to the breaker: its permit, what it showed, a 429's Retry-After.
RecordedCall = tuple[Permit, Signal, float | None]


@dataclass(frozen=True, slots=True)
class BreakerStatus:
    provider: str
    state: str
    consecutive_failures: int
    window_calls: int
    window_failures: int
    trips: int
    failed_probes: int
    opened_at: datetime | None
    next_probe_at: datetime | None
    cooldown_s: float
    probe_in_flight: bool
    trip_reason: str | None
    override: dict[str, Any] | None
    backend: str

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("opened_at", "next_probe_at"):
            out[key] = out[key].isoformat() if out[key] else None
        return out


class Breaker(Protocol):
    """What the executor needs: permission before a provider call, the call's end after."""

    def acquire(self, provider: str) -> Permit: ...

    def record(self, permit: Permit, signal: Signal, retry_after_s: float | None = None) -> None:
        """Report how a permitted call ended. Never raises."""
        ...


def _ms_to_dt(ms: float | None) -> datetime | None:
    return datetime.fromtimestamp(ms / 1000, UTC) if ms else None


# -- Redis -----------------------------------------------------------------------------------


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
        self._acquire = client.register_script((LUA_DIR / "breaker_acquire.lua").read_text())
        self._record = client.register_script((LUA_DIR / "breaker_record.lua").read_text())
        self._override = client.register_script((LUA_DIR / "breaker_override.lua").read_text())

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
        return Permit(provider, str(verdict), int(wait_ms) / 1000, str(state), token)

    def record(self, permit: Permit, signal: Signal, retry_after_s: float | None = None) -> str:
        return self.record_many([(permit, signal, retry_after_s)])[-1]

    def record_many(self, calls: Sequence[RecordedCall]) -> list[str]:
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
            states.append(str(state))
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
            permit.token if permit.verdict == "probe" else "",
            cfg.failure_threshold,
            cfg.window_calls,
            cfg.window_ms,
            cfg.min_calls,
            cfg.failure_rate,
            cfg.cooldown_ms,
            cfg.cooldown_max_ms,
            cfg.pause_ms(retry_after_s),
        ]

    def override(self, provider: str, action: str, actor: str, reason: str) -> str:
        """``open`` (held open until closed) or ``close``, recorded with who, why and when."""
        if action not in {"open", "close", "seed_open"}:
            raise ValueError(f"unknown breaker action {action!r}")
        state_key, calls_key, _ = self._keys(provider)
        args: list[str | int | float] = [
            self._now(),
            action,
            actor,
            reason,
            self.config.cooldown_ms,
        ]
        state, _changed = self._override(keys=[state_key, calls_key], args=args)
        return str(state)

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
        return _status_from_fields(provider, fields, in_window, now, self.config, "redis")


def _status_from_fields(
    provider: str,
    fields: Mapping[str, str],
    in_window: list[int],
    now_ms: int,
    config: BreakerConfig,
    backend: str,
) -> BreakerStatus:
    state = fields.get("state", "closed")
    probe_until = int(fields.get("probe_until_ms") or 0)
    override = None
    if fields.get("override_action"):
        override = {
            "action": fields["override_action"],
            "by": fields.get("override_by"),
            "reason": fields.get("override_reason"),
            "at": _iso(_ms_to_dt(float(fields.get("override_at_ms") or 0))),
            "holding_open": fields.get("override") == "open",
        }
    return BreakerStatus(
        provider=provider,
        state=state,
        consecutive_failures=int(fields.get("consecutive") or 0),
        window_calls=len(in_window),
        window_failures=sum(in_window),
        trips=int(fields.get("trips") or 0),
        failed_probes=int(fields.get("failed_probes") or 0),
        opened_at=_ms_to_dt(float(fields.get("opened_at_ms") or 0)) if state != "closed" else None,
        next_probe_at=(
            _ms_to_dt(float(fields.get("next_probe_ms") or 0)) if state == "open" else None
        ),
        cooldown_s=int(fields.get("cooldown_ms") or config.cooldown_ms) / 1000,
        probe_in_flight=state == "half_open" and probe_until > now_ms,
        trip_reason=fields.get("trip_reason") if state != "closed" else None,
        override=override,
        backend=backend,
    )


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


# -- in-process fallback ---------------------------------------------------------------------


@dataclass(slots=True)
class _LocalState:
    state: str = "closed"
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

    def _acquire(self, s: _LocalState, provider: str, token: str) -> tuple[str, int, str]:
        now = self._now_ms()
        verdict = "allow"
        if s.state == "open":
            if now < s.next_probe_ms:
                return "open", s.next_probe_ms - now, s.state
            verdict = "probe"
        elif s.state == "half_open":
            if now < s.probe_until_ms:
                return "half_open", min(s.probe_until_ms - now, HALF_OPEN_RECHECK_MS), s.state
            verdict = "probe"
        if now < s.blocked_until_ms:
            return "rate_limited", s.blocked_until_ms - now, s.state
        rate = self.config.rate(provider)
        if rate > 0:
            capacity = self.config.capacity(provider)
            tokens = capacity if s.tokens is None else s.tokens
            tokens = min(capacity, tokens + max(0, now - s.refilled_ms) * rate / 1000)
            s.refilled_ms = now
            if tokens < 1:
                s.tokens = tokens
                return "rate_limited", -int(-(1 - tokens) * 1000 // rate), s.state
            s.tokens = tokens - 1
        if verdict == "probe":
            s.state, s.probe_token = "half_open", token
            s.probe_until_ms = now + self.config.probe_lease_ms
            return "probe", 0, s.state
        return "allow", 0, s.state

    def record(self, permit: Permit, signal: Signal, retry_after_s: float | None = None) -> str:
        with self._lock:
            return self._record(self._get(permit.provider), permit, signal, retry_after_s)

    def _record(
        self, s: _LocalState, permit: Permit, signal: Signal, retry_after_s: float | None
    ) -> str:
        now, cfg = self._now_ms(), self.config
        if signal is Signal.RATE_LIMITED:
            if pause_ms := cfg.pause_ms(retry_after_s):
                s.blocked_until_ms = max(s.blocked_until_ms, now + pause_ms)
            signal = Signal.NEUTRAL
        if s.state == "half_open":
            if permit.verdict != "probe" or permit.token != s.probe_token:
                return s.state
            s.probe_token, s.probe_until_ms = None, 0
            if signal is Signal.SUCCESS:
                s.state, s.consecutive, s.cooldown_ms = "closed", 0, cfg.cooldown_ms
                s.failed_probes = 0
                s.calls.clear()
            elif signal is Signal.FAILURE:
                s.cooldown_ms = min(s.cooldown_ms * 2, cfg.cooldown_max_ms)
                s.state, s.next_probe_ms = "open", now + s.cooldown_ms
                s.failed_probes += 1
            return s.state
        if s.state != "closed" or signal is Signal.NEUTRAL:
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
        s.state, s.opened_at_ms, s.trip_reason = "open", now, reason
        s.cooldown_ms = self.config.cooldown_ms
        s.next_probe_ms = now + s.cooldown_ms
        s.trips += 1
        s.failed_probes = 0
        s.calls.clear()
        log.warning("breaker.state_changed", provider=provider, state="open", backend="local")

    def open_providers(self) -> Iterator[str]:
        """Providers this process currently sees open or half-open."""
        with self._lock:
            items = list(self._states.items())
        return (name for name, s in items if s.state != "closed")

    def status(self, provider: str) -> BreakerStatus:
        with self._lock:
            s = self._get(provider)
            now = self._now_ms()
            fields = {
                "state": s.state,
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
        return _status_from_fields(provider, fields, recent, now, self.config, "local")


# -- the executor's breaker: Redis, with the local fallback ---------------------------------


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

    @property
    def degraded(self) -> bool:
        return self._down_until is not None

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
                    provider, "seed_open", "fallback", "seen open while Redis was away"
                )
            except redis.RedisError as exc:
                self._failed(exc)
                return

    def acquire(self, provider: str) -> Permit:
        if self._use_redis():
            if self._monotonic() < self._closed_until.get(provider, 0.0):
                return Permit(provider, "allow", 0.0, "closed", "")
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
        if signal is Signal.SUCCESS and permit.verdict == "allow":
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

    def _renew_leases(self, calls: Sequence[RecordedCall], states: Sequence[str]) -> None:
        """After a batch was recorded (in order): a provider whose last call succeeded with
        the breaker closed holds a closed lease from now; any other provider in it, none."""
        until = self._monotonic() + self._closed_lease_s
        for (permit, signal, _), state in zip(calls, states, strict=True):
            provider = permit.provider
            if (
                self._closed_lease_s > 0
                and signal is Signal.SUCCESS
                and state == "closed"
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


class BreakerCollector(Collector):
    """``orchestrator_breaker_state{provider}``: 0 closed, 1 half_open, 2 open (from Redis)."""

    def __init__(self, breaker: SharedBreaker, providers: tuple[str, ...] = PROVIDERS) -> None:
        self.breaker = breaker
        self.providers = providers

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily(
            "orchestrator_breaker_state",
            "Circuit breaker state per provider: 0 closed, 1 half_open, 2 open",
            labels=["provider"],
        )
        for provider in self.providers:
            status = self.breaker.status(provider)
            gauge.add_metric([provider], STATE_VALUES.get(status.state, 0))
        yield gauge
