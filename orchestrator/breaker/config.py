"""The breaker's rules and its answers: config, permits, status, the Breaker protocol."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from orchestrator.breaker.signals import Signal
from orchestrator.breaker.states import ALLOWED, BreakerState, OverrideAction, Verdict
from orchestrator.config import Settings, parse_rate_limits

# While a probe is in flight, denied callers come back after at most this long: a probe
# usually answers in well under a second, and the breaker closes the moment it does.
HALF_OPEN_RECHECK_MS = 1000
# A probe lease outlives one full provider call by this much (s), so a slow probe is never
# taken over while it is still running; a dead prober's lease lapses after it.
PROBE_LEASE_MARGIN_S = 5.0


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


@dataclass(frozen=True, slots=True, init=False)
class Permit:
    """The breaker's answer for one call; report the call's end with the same permit."""

    provider: str
    verdict: Verdict
    wait_s: float
    state: BreakerState
    token: str
    backend: str = "redis"

    def __init__(
        self,
        provider: str,
        verdict: str,
        wait_s: float,
        state: str,
        token: str,
        backend: str = "redis",
    ) -> None:
        # Takes the bare strings too (the scripts' replies, fakes in tests), as it always has.
        object.__setattr__(self, "provider", provider)
        object.__setattr__(self, "verdict", Verdict(verdict))
        object.__setattr__(self, "wait_s", wait_s)
        object.__setattr__(self, "state", BreakerState(state))
        object.__setattr__(self, "token", token)
        object.__setattr__(self, "backend", backend)

    @property
    def allowed(self) -> bool:
        return self.verdict in ALLOWED

    @property
    def reason(self) -> str:
        """Why a call was denied, for the job's transition record."""
        return {
            Verdict.OPEN: f"breaker open for {self.provider}",
            Verdict.HALF_OPEN: f"breaker half-open for {self.provider}, probe in flight",
            Verdict.FORCED_OPEN: f"breaker held open by an operator for {self.provider}",
            Verdict.RATE_LIMITED: f"rate limit for {self.provider}",
        }.get(self.verdict, str(self.verdict))


# A finished call as reported to the breaker: its permit, what it showed, a 429's Retry-After.
RecordedCall = tuple[Permit, Signal, float | None]


@dataclass(frozen=True, slots=True)
class BreakerStatus:
    provider: str
    state: BreakerState
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

    @classmethod
    def from_fields(
        cls,
        provider: str,
        fields: Mapping[str, str],
        in_window: list[int],
        now_ms: int,
        config: BreakerConfig,
        backend: str,
    ) -> BreakerStatus:
        """From a breaker's hash fields (as in Redis) and the failed flags of the calls in
        its window."""
        state = BreakerState(fields.get("state", BreakerState.CLOSED))
        probe_until = int(fields.get("probe_until_ms") or 0)
        override = None
        if fields.get("override_action"):
            override = {
                "action": fields["override_action"],
                "by": fields.get("override_by"),
                "reason": fields.get("override_reason"),
                "at": _iso(_ms_to_dt(float(fields.get("override_at_ms") or 0))),
                "holding_open": fields.get("override") == OverrideAction.OPEN,
            }
        closed = state == BreakerState.CLOSED
        return cls(
            provider=provider,
            state=state,
            consecutive_failures=int(fields.get("consecutive") or 0),
            window_calls=len(in_window),
            window_failures=sum(in_window),
            trips=int(fields.get("trips") or 0),
            failed_probes=int(fields.get("failed_probes") or 0),
            opened_at=None if closed else _ms_to_dt(float(fields.get("opened_at_ms") or 0)),
            next_probe_at=(
                _ms_to_dt(float(fields.get("next_probe_ms") or 0))
                if state == BreakerState.OPEN
                else None
            ),
            cooldown_s=int(fields.get("cooldown_ms") or config.cooldown_ms) / 1000,
            probe_in_flight=state == BreakerState.HALF_OPEN and probe_until > now_ms,
            trip_reason=None if closed else fields.get("trip_reason"),
            override=override,
            backend=backend,
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["state"] = str(self.state)
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


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
