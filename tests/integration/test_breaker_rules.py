"""The breaker's rules, specified once and checked against both implementations: the Lua
scripts in real Redis (clock passed in) and the in-process fallback (same clock)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from orchestrator.breaker import (
    BreakerConfig,
    LocalBreaker,
    Permit,
    RedisBreaker,
    Signal,
    redis_client,
)
from tests.conftest import TEST_REDIS_URL

CONFIG = BreakerConfig(
    failure_threshold=3,
    window_calls=10,
    window_ms=60_000,
    min_calls=6,
    failure_rate=0.5,
    cooldown_ms=1_000,
    cooldown_max_ms=4_000,
    probe_lease_ms=5_000,
    rate_limits={"limited": 2.0},
)


class Clock:
    def __init__(self) -> None:
        self.ms = 1_700_000_000_000

    def __call__(self) -> int:
        return self.ms


@pytest.fixture(params=["redis", "local"])
def make(request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    """A factory for a breaker of either kind sharing one injected clock."""
    namespace = f"rules-{uuid.uuid4().hex[:8]}"
    client = redis_client(TEST_REDIS_URL, 1.0)

    def build(clock: Clock, config: BreakerConfig = CONFIG) -> Any:
        if request.param == "redis":
            return RedisBreaker(client, config, namespace, now_ms=clock)
        return LocalBreaker(config, now_ms=clock)

    yield build
    keys = list(client.scan_iter(match=f"{namespace}*"))
    if keys:
        client.delete(*keys)
    client.close()


def _call(breaker: Any, signal: Signal, provider: str = "stripe") -> Permit:
    permit: Permit = breaker.acquire(provider)
    assert permit.allowed, permit
    breaker.record(permit, signal)
    return permit


def test_consecutive_failures_trip_and_successes_reset(make: Callable[..., Any]) -> None:
    """Two failures, a success, two failures stay closed; the third in a row opens it."""
    clock = Clock()
    b = make(clock)
    for signal in [Signal.FAILURE, Signal.FAILURE, Signal.SUCCESS, Signal.FAILURE]:
        _call(b, signal)
    _call(b, Signal.FAILURE)
    assert b.acquire("stripe").allowed
    b.record(b.acquire("stripe"), Signal.FAILURE)
    denied = b.acquire("stripe")
    assert (denied.verdict, denied.state) == ("open", "open")
    assert denied.wait_s == pytest.approx(1.0)
    assert b.status("stripe").trips == 1


def test_failure_rate_over_the_window_trips(make: Callable[..., Any]) -> None:
    """Alternating success/failure never reaches 3 in a row, but 3 of 6 calls is 50%."""
    clock = Clock()
    b = make(clock)
    for i in range(5):
        _call(b, Signal.FAILURE if i % 2 == 0 else Signal.SUCCESS)
    assert b.acquire("stripe").verdict == "allow"  # 5 calls: under the minimum volume
    _call(b, Signal.SUCCESS)
    _call(b, Signal.FAILURE)  # 7 calls, 4 failed
    assert b.acquire("stripe").verdict == "open"
    assert "of the last" in (b.status("stripe").trip_reason or "")


def test_old_calls_leave_the_window(make: Callable[..., Any]) -> None:
    """Failures older than the window do not count toward the rate."""
    clock = Clock()
    b = make(clock)
    for i in range(5):
        _call(b, Signal.FAILURE if i % 2 == 0 else Signal.SUCCESS)
    clock.ms += 61_000
    _call(b, Signal.SUCCESS)
    _call(b, Signal.FAILURE)
    assert b.acquire("stripe").verdict == "allow"


def _trip(b: Any) -> None:
    for _ in range(CONFIG.failure_threshold):
        _call(b, Signal.FAILURE)


def test_one_probe_after_cooldown_and_success_closes(make: Callable[..., Any]) -> None:
    """After the cooldown exactly one caller gets the probe; its success closes the breaker."""
    clock = Clock()
    b = make(clock)
    _trip(b)
    clock.ms += 999
    assert b.acquire("stripe").verdict == "open"
    clock.ms += 1
    probe = b.acquire("stripe")
    assert probe.verdict == "probe"
    other = b.acquire("stripe")
    assert (other.verdict, other.allowed) == ("half_open", False)
    assert 0 < other.wait_s <= 1.0
    b.record(other, Signal.SUCCESS)  # not the probe holder: changes nothing
    assert b.acquire("stripe").verdict == "half_open"
    b.record(probe, Signal.SUCCESS)
    assert b.acquire("stripe").verdict == "allow"
    assert b.status("stripe").state == "closed"


def test_failed_probes_double_the_cooldown_up_to_the_max(make: Callable[..., Any]) -> None:
    """Each failed probe reopens with twice the cooldown: 2 s, 4 s, then capped at 4 s."""
    clock = Clock()
    b = make(clock)
    _trip(b)
    for expected_s in (2.0, 4.0, 4.0):
        clock.ms += 10_000
        probe = b.acquire("stripe")
        assert probe.verdict == "probe"
        b.record(probe, Signal.FAILURE)
        denied = b.acquire("stripe")
        assert denied.verdict == "open"
        assert denied.wait_s == pytest.approx(expected_s)
    assert b.status("stripe").failed_probes == 3


def test_a_dead_probers_lease_lapses(make: Callable[..., Any]) -> None:
    """A probe never reported is taken over once its lease passes; the late report is ignored."""
    clock = Clock()
    b = make(clock)
    _trip(b)
    clock.ms += 1_000
    lost = b.acquire("stripe")
    assert lost.verdict == "probe"
    clock.ms += CONFIG.probe_lease_ms
    second = b.acquire("stripe")
    assert second.verdict == "probe"
    b.record(lost, Signal.FAILURE)
    assert b.status("stripe").state == "half_open"
    b.record(second, Signal.SUCCESS)
    assert b.status("stripe").state == "closed"


def test_neutral_probe_frees_the_lease(make: Callable[..., Any]) -> None:
    """A probe answered 429 (the provider is up, but busy) lets the next caller probe."""
    clock = Clock()
    b = make(clock)
    _trip(b)
    clock.ms += 1_000
    b.record(b.acquire("stripe"), Signal.NEUTRAL)
    assert b.acquire("stripe").verdict == "probe"


def test_calls_in_flight_when_it_tripped_change_nothing(make: Callable[..., Any]) -> None:
    """Late successes reported into an open breaker do not close it."""
    clock = Clock()
    b = make(clock)
    in_flight = [b.acquire("stripe") for _ in range(4)]
    _trip(b)
    for permit in in_flight:
        b.record(permit, Signal.SUCCESS)
    assert b.acquire("stripe").verdict == "open"


def test_token_bucket_limits_the_rate(make: Callable[..., Any]) -> None:
    """2 calls/s with a burst of 2: the third call in the same instant waits 0.5 s."""
    clock = Clock()
    b = make(clock)
    assert b.acquire("limited").allowed
    assert b.acquire("limited").allowed
    third = b.acquire("limited")
    assert third.verdict == "rate_limited"
    assert third.wait_s == pytest.approx(0.5)
    clock.ms += 500
    assert b.acquire("limited").allowed
    for _ in range(50):
        assert b.acquire("stripe").allowed  # no limit configured


def test_retry_after_pauses_every_caller(make: Callable[..., Any]) -> None:
    """A 429 with Retry-After: 2 pauses all calls to that provider for 2 s, not others."""
    clock = Clock()
    b = make(clock)
    b.record(b.acquire("stripe"), Signal.RATE_LIMITED, 2.0)
    denied = b.acquire("stripe")
    assert (denied.verdict, denied.wait_s) == ("rate_limited", pytest.approx(2.0))
    assert b.acquire("sendgrid").allowed
    clock.ms += 2_000
    assert b.acquire("stripe").allowed
    assert b.status("stripe").state == "closed"


def test_manual_override_holds_open_and_close_resets() -> None:
    """`open` holds the breaker open with no probe, recorded who/why; `close` resets it."""
    clock = Clock()
    client: redis.Redis = redis_client(TEST_REDIS_URL, 1.0)
    b = RedisBreaker(client, CONFIG, f"rules-{uuid.uuid4().hex[:8]}", now_ms=clock)
    assert b.override("stripe", "open", "alice", "provider incident INC-1") == "open"
    clock.ms += 3_600_000
    assert b.acquire("stripe").verdict == "forced_open"
    status = b.status("stripe")
    assert status.override is not None
    assert (status.override["by"], status.override["reason"]) == (
        "alice",
        "provider incident INC-1",
    )
    assert status.override["holding_open"] is True
    assert b.override("stripe", "close", "bob", "resolved") == "closed"
    assert b.acquire("stripe").verdict == "allow"
    closed = b.status("stripe").override
    assert closed is not None
    assert (closed["action"], closed["by"], closed["holding_open"]) == ("close", "bob", False)
    assert closed["at"] > status.override["at"]
    client.delete(*client.scan_iter(match=f"{b.namespace}*"))
    client.close()


def test_unreachable_redis_falls_back_to_a_local_breaker_and_logs_once() -> None:
    """With Redis unreachable the shared breaker keeps answering from a per-process breaker
    (which still trips), logs `breaker.redis_unavailable` once, and goes back to Redis, re-seeding
    what it saw open, when Redis answers again."""
    from structlog.testing import capture_logs

    from orchestrator.breaker import SharedBreaker

    clock = Clock()
    monotonic = [0.0]
    dead = RedisBreaker(redis_client("redis://127.0.0.1:1/0", 0.05), CONFIG, "x", now_ms=clock)
    shared = SharedBreaker(dead, LocalBreaker(CONFIG, now_ms=clock), monotonic=lambda: monotonic[0])
    with capture_logs() as logs:
        for _ in range(CONFIG.failure_threshold):
            permit = shared.acquire("stripe")
            assert (permit.allowed, permit.backend) == (True, "local")
            shared.record(permit, Signal.FAILURE)
        assert shared.acquire("stripe").verdict == "open"
        monotonic[0] += 5.0
        assert shared.acquire("stripe").backend == "local"  # tried Redis again, still down
    events = [e["event"] for e in logs]
    assert events.count("breaker.redis_unavailable") == 1
    live_ns = f"rules-{uuid.uuid4().hex[:8]}"
    live = RedisBreaker(redis_client(TEST_REDIS_URL, 1.0), CONFIG, live_ns, now_ms=clock)
    shared.shared = live  # Redis "returns" (empty)
    monotonic[0] += 5.0
    with capture_logs() as logs:
        permit = shared.acquire("stripe")
    assert permit.backend == "redis"
    assert "breaker.redis_restored" in [e["event"] for e in logs]
    assert live.status("stripe").state == "open"  # rebuilt from what this process saw
    live.client.delete(*live.client.scan_iter(match=f"{live_ns}*"))


def test_successes_are_recorded_in_the_background_and_in_order() -> None:
    """An ordinary success is sent by the recorder thread, off the caller's path, yet before
    any later outcome of the same process: failure, failure, success, failure leaves the
    breaker closed with one consecutive failure (three would trip it), and status() counts
    every call. Successes nobody asks about reach Redis by themselves."""
    from orchestrator.breaker import SharedBreaker
    from tests.conftest import wait_until

    clock = Clock()
    namespace = f"rules-{uuid.uuid4().hex[:8]}"
    live = RedisBreaker(redis_client(TEST_REDIS_URL, 1.0), CONFIG, namespace, now_ms=clock)
    shared = SharedBreaker(live, LocalBreaker(CONFIG, now_ms=clock))
    try:
        for signal in [Signal.FAILURE, Signal.FAILURE, Signal.SUCCESS, Signal.FAILURE]:
            shared.record(shared.acquire("stripe"), signal)
        status = shared.status("stripe")
        assert (status.state, status.consecutive_failures, status.window_calls) == (
            "closed",
            1,
            4,
        )
        for _ in range(5):
            shared.record(shared.acquire("stripe"), Signal.SUCCESS)
        wait_until(lambda: live.status("stripe").window_calls == 9, timeout_s=5)
        assert live.status("stripe").consecutive_failures == 0
    finally:
        live.client.delete(*live.client.scan_iter(match=f"{namespace}*"))
        live.client.close()


class _CountingAcquire:
    """The real RedisBreaker, counting the acquires that reach Redis."""

    def __init__(self, breaker: RedisBreaker) -> None:
        self.breaker = breaker
        self.calls = 0
        self._acquire = breaker.acquire
        breaker.acquire = self  # type: ignore[method-assign]

    def __call__(self, provider: str) -> Permit:
        self.calls += 1
        return self._acquire(provider)


def test_closed_lease_skips_redis_while_calls_succeed() -> None:
    """Successes answered `closed` let calls go ahead without asking Redis for the lease; a
    failure ends it before its record is sent; a breaker opened elsewhere (an operator) is
    obeyed once the lease runs out; a rate-limited provider asks Redis on every call."""
    from orchestrator.breaker import SharedBreaker

    clock = Clock()
    monotonic = [0.0]
    namespace = f"rules-{uuid.uuid4().hex[:8]}"
    live = RedisBreaker(redis_client(TEST_REDIS_URL, 1.0), CONFIG, namespace, now_ms=clock)
    counted = _CountingAcquire(live)
    shared = SharedBreaker(
        live,
        LocalBreaker(CONFIG, now_ms=clock),
        monotonic=lambda: monotonic[0],
        closed_lease_s=0.1,
    )
    try:
        shared.record(shared.acquire("stripe"), Signal.SUCCESS)
        shared.flush()  # Redis answered the success: closed
        assert counted.calls == 1
        for _ in range(5):
            permit = shared.acquire("stripe")
            assert (permit.verdict, permit.state) == ("allow", "closed")
            shared.record(permit, Signal.SUCCESS)
        assert counted.calls == 1
        shared.flush()
        assert live.status("stripe").window_calls == 6  # leased calls are still recorded

        shared.record(shared.acquire("stripe"), Signal.FAILURE)
        shared.acquire("stripe")
        assert counted.calls == 2  # the failure ended the lease

        shared.record(shared.acquire("stripe"), Signal.SUCCESS)
        shared.flush()
        assert live.override("stripe", "open", "alice", "incident") == "open"
        calls = counted.calls
        assert shared.acquire("stripe").allowed  # within the lease: not seen yet
        monotonic[0] += 0.1
        assert shared.acquire("stripe").verdict == "forced_open"
        assert counted.calls == calls + 1

        for _ in range(2):
            shared.record(shared.acquire("limited"), Signal.SUCCESS)
            shared.flush()
        calls = counted.calls
        shared.acquire("limited")
        assert counted.calls == calls + 1  # a token per call: never leased
    finally:
        live.client.delete(*live.client.scan_iter(match=f"{namespace}*"))
        live.client.close()


def test_no_closed_lease_when_set_to_zero() -> None:
    """ORCHESTRATOR_BREAKER_CLOSED_LEASE_MS=0: every call asks Redis."""
    from orchestrator.breaker import SharedBreaker

    clock = Clock()
    namespace = f"rules-{uuid.uuid4().hex[:8]}"
    live = RedisBreaker(redis_client(TEST_REDIS_URL, 1.0), CONFIG, namespace, now_ms=clock)
    counted = _CountingAcquire(live)
    shared = SharedBreaker(live, LocalBreaker(CONFIG, now_ms=clock))
    try:
        for _ in range(3):
            shared.record(shared.acquire("stripe"), Signal.SUCCESS)
            shared.flush()
        assert counted.calls == 3
    finally:
        live.client.delete(*live.client.scan_iter(match=f"{namespace}*"))
        live.client.close()
