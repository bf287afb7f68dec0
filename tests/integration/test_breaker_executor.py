"""The executor and the breaker: a denied call consumes no attempt and obeys the horizon;
outcomes are reported to the breaker as classified (5xx, timeouts, connection errors fail)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import psycopg

from orchestrator import JobState
from orchestrator.breaker import Permit, Signal
from orchestrator.executor import Executor


@dataclass
class FakeBreaker:
    """Answers every acquire with ``verdict`` and remembers what was recorded."""

    verdict: str = "open"
    wait_s: float = 30.0
    recorded: list[tuple[Signal, float | None]] = field(default_factory=list)

    def acquire(self, provider: str) -> Permit:
        return Permit(provider, self.verdict, self.wait_s, "open", "t", "fake")

    def record(self, permit: Permit, signal: Signal, retry_after_s: float | None = None) -> None:
        self.recorded.append((signal, retry_after_s))


def _executor(orch: Any, breaker: FakeBreaker, **overrides: Any) -> Executor:
    from tests.conftest import test_settings

    settings = orch.settings
    if overrides:
        settings = test_settings(
            settings.database_url, settings.redis_namespace, settings.stripe_api_base, **overrides
        )
    return Executor(orch.store, orch.providers(), orch.dispatcher, settings, breaker=breaker)


def _charge(orch: Any, key: str, pm: str = "pm_card_visa") -> Any:
    return orch.charge(1000, "usd", None, pm, key)


def test_denied_job_waits_for_the_probe_without_using_an_attempt(orch: Any, simulator: Any) -> None:
    """Breaker open: the job goes back to retrying at the next probe time plus jitter, its
    attempt count unchanged, no attempt row, no provider call, the reason naming the breaker."""
    breaker = FakeBreaker(wait_s=30.0)
    job = _charge(orch, "denied-1")
    assert _executor(orch, breaker).run(job.id) is JobState.RETRYING
    after = orch.job(job.id)
    assert after.attempts == 0
    assert orch.attempts(job.id) == []
    assert simulator.requests_log() == []
    delay = after.next_attempt_at - after.updated_at
    assert timedelta(seconds=30) <= delay <= timedelta(seconds=30 * 1.25 + 1)
    last = orch.transitions(job.id)[-1]
    assert (last.from_state, last.to_state) == ("running", "retrying")
    assert "breaker open" in last.reason
    assert breaker.recorded == []


def test_denial_past_the_horizon_is_dead_with_retry_horizon(orch: Any) -> None:
    """A probe time beyond the retry horizon makes the job dead (retry_horizon), attempts 0."""
    job = _charge(orch, "denied-2")
    with psycopg.connect(orch.settings.database_url, autocommit=True) as conn:
        conn.execute("UPDATE jobs SET deadline_at = now() + interval '60 seconds'")
    assert _executor(orch, FakeBreaker(wait_s=120.0)).run(job.id) is JobState.DEAD
    dead = orch.job(job.id)
    assert (dead.dead_reason, dead.attempts) == ("retry_horizon", 0)
    assert "breaker open" in orch.transitions(job.id)[-1].reason


def test_rate_limited_denial_is_deferred_the_same_way(orch: Any) -> None:
    """Over the rate limit: deferred by the bucket's wait, no attempt consumed."""
    job = _charge(orch, "denied-3")
    assert _executor(orch, FakeBreaker("rate_limited", 0.2)).run(job.id) is JobState.RETRYING
    after = orch.job(job.id)
    assert after.attempts == 0
    assert "rate limit" in orch.transitions(job.id)[-1].reason


def test_outcomes_are_reported_to_the_breaker(orch: Any, simulator: Any) -> None:
    """A success and a decline report success (healthy); a 503 reports failure; a 429
    reports rate_limited with its Retry-After."""
    breaker = FakeBreaker("allow", 0.0)
    executor = _executor(orch, breaker)
    executor.run(_charge(orch, "ok").id)
    executor.run(_charge(orch, "declined", "pm_card_chargeDeclined").id)
    simulator.set_faults("stripe", rate_429=1.0)
    executor.run(_charge(orch, "busy").id)
    simulator.set_faults("stripe", outage=True)
    executor.run(_charge(orch, "down").id)
    assert breaker.recorded == [
        (Signal.SUCCESS, None),
        (Signal.SUCCESS, None),
        (Signal.RATE_LIMITED, 1.0),
        (Signal.FAILURE, None),
    ]


def _unknown_past_deadline(orch: Any, simulator: Any, key: str) -> Any:
    """A job whose attempt was ambiguous (a cut connection) and whose deadline has passed."""
    simulator.set_faults("stripe", rate_cut_before_execute=1.0)
    job = orch.charge(1000, "usd", "cus_spin", "pm_card_visa", key)
    simulator.set_faults("stripe", rate_500=1.0)
    assert orch.executor().run(job.id) is JobState.UNKNOWN
    simulator.set_faults("stripe")
    with psycopg.connect(orch.settings.database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE jobs SET deadline_at = now() - interval '1 minute', "
            "next_attempt_at = now() WHERE id = %s",
            (job.id,),
        )
    return job


def test_a_denied_lookup_past_the_deadline_waits_for_the_breaker(orch: Any, simulator: Any) -> None:
    """Breaker open and the job past its deadline: the lookup is put off until the breaker's
    next probe (it used to be re-sent at once, round and round, while the breaker stayed
    open); nothing is decided and no provider call is made."""
    job = _unknown_past_deadline(orch, simulator, "spin-1")
    calls_before = len(simulator.requests_log())
    assert _executor(orch, FakeBreaker(wait_s=30.0)).resolve(job.id) is JobState.UNKNOWN
    after = orch.job(job.id)
    assert after.state is JobState.UNKNOWN
    assert after.next_attempt_at - after.updated_at >= timedelta(seconds=30)
    assert len(simulator.requests_log()) == calls_before


def test_a_processing_job_whose_lookups_keep_failing_reaches_the_dlq(orch: Any) -> None:
    """A processing job the provider cannot be asked about is no longer polled forever: once
    older than the stuck-pending age it goes dead with reason stuck_pending."""
    job = orch.charge(1000, "usd", "cus_gone", "pm_card_visa", "processing-forever")
    with psycopg.connect(orch.settings.database_url, autocommit=True) as conn:
        for state, lease in (("running", "test"), ("processing", None)):
            conn.execute(
                "UPDATE jobs SET state = %s, provider_ref = 'pi_missing', lease_owner = %s, "
                "lease_expires_at = CASE WHEN %s::text IS NULL THEN NULL "
                "ELSE now() + interval '1 minute' END, changed_by = 'test', "
                "change_reason = 'test', last_attempt_at = now() - interval '8 days' "
                "WHERE id = %s",
                (state, lease, lease, job.id),
            )
    broken = Executor(
        orch.store,
        orch.providers(),
        orch.dispatcher,
        orch.settings,
        breaker=FakeBreaker("allow", 0.0),
    )
    # pi_missing is unknown to the simulator: every lookup fails (404 -> ProviderUnavailable).
    assert broken.resolve(job.id) is JobState.DEAD
    assert orch.job(job.id).dead_reason == "stuck_pending"
