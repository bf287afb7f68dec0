"""PostgreSQL owns the schedule: a job due again past the broker's delay window leaves no
delayed message in the broker, and the clock dispatches it from ``next_attempt_at`` when it
comes due (real PostgreSQL, Redis and workers in this process, the simulator over HTTP)."""

from __future__ import annotations

import contextlib
import random
import statistics
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
import redis

from orchestrator import JobState
from orchestrator.breaker import Permit, Signal
from orchestrator.db.pool import q
from orchestrator.executor import Executor
from orchestrator.maintenance.clock import Clock
from tests.conftest import (
    count_jobs,
    orchestrator_like,
    running_clock,
    settings_like,
    stop_worker,
    wait_until,
)


@dataclass
class FixedBreaker:
    """Answers every acquire with ``verdict`` (``allow``: every call goes ahead)."""

    verdict: str = "allow"
    wait_s: float = 0.0
    recorded: list[Signal] = field(default_factory=list)

    def acquire(self, provider: str) -> Permit:
        return Permit(provider, self.verdict, self.wait_s, "closed", "t", "fake")

    def record(self, permit: Permit, signal: Signal, retry_after_s: float | None = None) -> None:
        self.recorded.append(signal)


class TopOfRange(random.Random):
    """Jitter always at its top: a backoff of ``base`` is exactly ``base`` seconds."""

    def uniform(self, a: float, b: float) -> float:
        return b


def _executor(orch: Any, simulator: Any, breaker: FixedBreaker, **settings: Any) -> Executor:
    """An executor on the session's store and dispatcher, with its own settings and breaker."""
    return Executor(
        orch.store,
        orch.providers(),
        orch.dispatcher,
        settings_like(orch, simulator.url, **settings),
        rng=TopOfRange(),
        breaker=breaker,  # type: ignore[arg-type]
    )


@contextlib.contextmanager
def _worker(orch: Any) -> Iterator[Any]:
    """A dramatiq worker in this process, as the ``worker`` fixture, started when needed."""
    import dramatiq

    import actors  # noqa: F401  (declares the actors on the installed broker)

    w = dramatiq.Worker(orch.broker, worker_threads=8, worker_timeout=50)
    w.start()
    try:
        yield w
    finally:
        stop_worker(w)


def _messages_for(orch: Any, job_id: str, suffix: str = ".msgs") -> list[str]:
    """The Redis keys of the namespace holding a message for ``job_id`` (the message bodies
    live in ``<ns>:<queue>.msgs`` and, delayed, ``<ns>:<queue>.DQ.msgs``, queued or held
    unacked by a worker)."""
    client = redis.Redis.from_url(orch.settings.redis_url)
    try:
        found = []
        for key in client.scan_iter(match=f"{orch.settings.redis_namespace}:*{suffix}"):
            if any(job_id.encode() in body for body in client.hvals(key)):
                found.append(key.decode())
        return found
    finally:
        client.close()


def _delayed_key(orch: Any) -> str:
    return f"{orch.settings.redis_namespace}:{orch.settings.queue_name}.DQ.msgs"


def _flush_namespace(orch: Any) -> int:
    client = redis.Redis.from_url(orch.settings.redis_url)
    try:
        keys = list(client.scan_iter(match=f"{orch.settings.redis_namespace}*"))
        if keys:
            client.delete(*keys)
        return len(keys)
    finally:
        client.close()


def _row(orch: Any, job_id: str) -> dict[str, Any]:
    with psycopg.connect(orch.settings.database_url, autocommit=True) as conn:
        cursor = conn.execute(
            "SELECT next_attempt_at, dispatched_at, updated_at, now() AS db_now FROM jobs "
            "WHERE id = %s",
            (job_id,),
        )
        names = [d.name for d in cursor.description or []]
        row = cursor.fetchone()
        assert row is not None
        return dict(zip(names, row, strict=True))


def _make_due(orch: Any, job_id: str) -> None:
    """The scheduled time passes (the row's dispatched_at stays before it)."""
    with psycopg.connect(orch.settings.database_url, autocommit=True) as conn:
        conn.execute("UPDATE jobs SET next_attempt_at = now() WHERE id = %s", (job_id,))


def _charge(orch: Any, key: str, pm: str = "pm_card_visa") -> Any:
    job = orch.charge(1000, "usd", None, pm, key)
    orch.dispatcher.flush()
    return job


# -- a long delay: nothing in the broker, the clock dispatches it when due -----------------


@pytest.mark.parametrize(
    ("why", "breaker", "reason"),
    [
        ("backoff", FixedBreaker(), "not executed"),
        ("breaker", FixedBreaker("open", 30.0), "breaker open"),
        ("pause", FixedBreaker("rate_limited", 30.0), "rate limit"),
    ],
)
def test_a_job_put_off_30s_has_no_broker_message_and_the_clock_runs_it_when_due(
    orch: Any, simulator: Any, why: str, breaker: FixedBreaker, reason: str
) -> None:
    """A 429 backed off for 30 s, a breaker deferral and a 429 pause of 30 s: the job goes
    `retrying` due in 30 s or more, and no message for it sits in the broker (nothing in the
    `.DQ` hash, queued or held by a worker). When it is due, the clock's due dispatch sends it
    and a worker runs it."""
    simulator.set_faults("stripe", rate_429=1.0, first_try_only=True)
    executor = _executor(orch, simulator, breaker, backoff_base_s=30.0, backoff_max_s=30.0)
    job = _charge(orch, f"long-{why}")
    _flush_namespace(orch)  # the charge's own message: no worker ever takes it
    assert executor.run(job.id) is JobState.RETRYING
    assert reason in orch.transitions(job.id)[-1].reason
    row = _row(orch, job.id)
    assert row["next_attempt_at"] - row["updated_at"] >= timedelta(seconds=30)
    assert row["dispatched_at"] < row["next_attempt_at"]  # scheduled in PostgreSQL
    assert _messages_for(orch, job.id) == []  # none anywhere: queued, delayed or held
    assert orch.store.next_scheduled_due() == pytest.approx(30.0, abs=8.0)
    clock = Clock(orch)
    assert clock.run_once()["due_dispatched"] == 0  # not due yet
    _make_due(orch, job.id)
    with _worker(orch):
        report = clock.run_once()
        assert (report["due_dispatched"], report.dispatched) == (1, 0)
        wait_until(lambda: orch.job(job.id).state is JobState.SUCCEEDED, timeout_s=15)
    assert len(simulator.payment_intents()) == 1
    assert _messages_for(orch, job.id, ".DQ.msgs") == []
    assert clock.run_once()["due_dispatched"] == 0  # sent once for its due time


def test_a_short_delay_still_goes_through_the_broker(orch: Any, simulator: Any) -> None:
    """A backoff within the 2 s window (1.5 s) is a delayed broker message, and the row says
    so: the clock has nothing to dispatch, and a worker alone runs the job."""
    simulator.set_faults("stripe", rate_429=1.0, first_try_only=True)
    executor = _executor(orch, simulator, FixedBreaker(), backoff_base_s=1.5, backoff_max_s=1.5)
    job = _charge(orch, "short-1")
    assert executor.run(job.id) is JobState.RETRYING
    row = _row(orch, job.id)
    assert row["dispatched_at"] == row["next_attempt_at"]  # the broker carries it
    assert _messages_for(orch, job.id, ".DQ.msgs") == [_delayed_key(orch)]
    assert orch.store.next_scheduled_due() is None
    assert orch.store.dispatch_due(100, 1.0) == []
    with _worker(orch):
        wait_until(lambda: orch.job(job.id).state is JobState.SUCCEEDED, timeout_s=15)
    assert [a.outcome for a in orch.attempts(job.id)] == ["not_executed", "succeeded"]


# -- Redis losing everything while jobs wait -------------------------------------------------


def _charged(orch: Any, n: int, prefix: str) -> list[Any]:
    """``n`` charges whose own messages were taken out of the broker (no worker runs them)."""
    jobs = orch.charge_many(
        [
            {
                "amount": 100 + i,
                "currency": "usd",
                "customer": None,
                "payment_method": "pm_card_visa",
                "idempotency_key": f"{prefix}-{i}",
            }
            for i in range(n)
        ]
    )
    orch.dispatcher.flush()
    _flush_namespace(orch)
    return list(jobs)


def _back_off(orch: Any, simulator: Any, jobs: list[Any], delay_s: float) -> dict[str, datetime]:
    """Each job's first attempt gets a 429 and backs off exactly ``delay_s``; returns each
    job's due time."""
    simulator.set_faults("stripe", rate_429=1.0, first_try_only=True)
    executor = _executor(
        orch, simulator, FixedBreaker(), backoff_base_s=delay_s, backoff_max_s=delay_s
    )
    with ThreadPoolExecutor(max_workers=8) as pool:
        states = list(pool.map(lambda j: executor.run(j.id), jobs))
    assert set(states) == {JobState.RETRYING}
    return {j.id: orch.job(j.id).next_attempt_at for j in jobs}


def _claimed_at(orch: Any, job_id: str) -> datetime:
    """When the job was first claimed after its backoff (the claim's database time). A claim
    the rate limiter then denies (a deferral: the fleet's 100 calls/s, which 200 jobs due
    together exceed) still counts: dispatch is what is measured, not the provider's quota."""
    claims = [t.at for t in orch.transitions(job_id) if t.from_state == "retrying"]
    assert claims, f"{job_id} was never claimed again"
    first: datetime = claims[0]
    return first


def test_redis_flushed_while_jobs_wait_in_backoff_loses_nothing(orch: Any, simulator: Any) -> None:
    """30 jobs backed off 3 s, the namespace flushed while they wait: the clock dispatches
    every one when due (no grace to wait out, nothing was in Redis to lose), none early, none
    charged twice."""
    short_interval = orchestrator_like(orch, simulator.url, clock_interval_s=1.0)
    due = _back_off(orch, simulator, _charged(orch, 30, "flushed"), 3.0)
    for job_id in due:
        assert _messages_for(orch, job_id) == []
    _flush_namespace(orch)  # whatever else there was (breaker, heartbeats) goes too
    with _worker(orch), running_clock(short_interval):
        wait_until(lambda: count_jobs(orch, "succeeded") == 30, timeout_s=20)
    lags = [(_claimed_at(orch, job_id) - at).total_seconds() for job_id, at in due.items()]
    assert min(lags) >= 0, "a job ran before it was due"
    assert max(lags) < 1.0 + orch.settings.dispatch_grace_s
    per_job = [pi["metadata"]["orchestrator_job_id"] for pi in simulator.payment_intents()]
    assert sorted(per_job) == sorted(due)


def test_dispatch_lag_of_200_jobs_backed_off_3s(orch: Any, simulator: Any) -> None:
    """Benchmark-ish: 200 jobs backed off exactly 3 s (past the 2 s window: scheduled in
    PostgreSQL) are all claimed within 1 s of their due time, by the clock waking when they
    come due rather than at its 5 s interval (and sending them a little ahead). Lag = the
    first claim after the backoff - next_attempt_at, both database times."""
    assert orch.settings.clock_interval_s == 5.0
    jobs = _charged(orch, 200, "lag")
    with _worker(orch), running_clock(orch):
        due = _back_off(orch, simulator, jobs, 3.0)
        wait_until(lambda: count_jobs(orch, "succeeded") == 200, timeout_s=30)
    lags = sorted((_claimed_at(orch, job_id) - at).total_seconds() for job_id, at in due.items())
    p50, p99 = statistics.median(lags), lags[int(len(lags) * 0.99) - 1]
    deferred = {
        job_id for job_id in due for t in orch.transitions(job_id) if "no attempt made" in t.reason
    }
    print(
        f"\ndispatch lag (due -> claimed) over {len(lags)} jobs: min {lags[0] * 1000:.0f} ms, "
        f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {lags[-1] * 1000:.0f} ms; "
        f"{len(deferred)} jobs deferred by the rate limit once claimed"
    )
    assert lags[0] >= 0, "a job ran before it was due"
    assert lags[-1] < 1.0, f"claimed {lags[-1]:.2f}s after due"
    assert len(simulator.payment_intents()) == 200


# -- every kind of delay through the clock (window 0) ----------------------------------------


def _record_sends(dispatcher: Any, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The delay of every message ``dispatcher`` sends from now on, in order."""
    delays: list[float] = []
    send_to, send_many = dispatcher.send_to, dispatcher.send_many

    def recording(actor_name: str, *args: Any, delay_s: float = 0.0, **kw: Any) -> None:
        delays.append(delay_s)
        send_to(actor_name, *args, delay_s=delay_s, **kw)

    def recording_many(job_ids: Any) -> None:  # the background sender's batches: no delay
        delays.extend(0.0 for _ in job_ids)
        send_many(job_ids)

    monkeypatch.setattr(dispatcher, "send_to", recording)
    monkeypatch.setattr(dispatcher, "send_many", recording_many)
    return delays


@pytest.fixture
def window_zero(orch: Any, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The workers' dispatcher never delays in the broker; returns the delays it sent with."""
    monkeypatch.setattr(orch.dispatcher, "delay_window_s", 0.0)
    return _record_sends(orch.dispatcher, monkeypatch)


def test_a_processing_charge_is_polled_by_therunning_clock(
    orch: Any, simulator: Any, window_zero: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Window 0: a charge the provider reports `processing` is polled (every 0.2 s, then a
    tenth of its age) only by the clock's due dispatch, until it succeeds."""
    simulator.set_faults("stripe", processing_delay_s=1.5)
    fast = orchestrator_like(orch, simulator.url, clock_interval_s=1.0, broker_delay_window_s=0.0)
    by_clock = _record_sends(fast.dispatcher, monkeypatch)
    with _worker(orch), running_clock(fast):
        job = _charge(orch, "polled-1", "pm_sim_processing")
        wait_until(lambda: orch.job(job.id).state is JobState.SUCCEEDED, timeout_s=20)
    moves = [(t.from_state, t.to_state) for t in orch.transitions(job.id)]
    assert ("running", "processing") in moves
    assert ("processing", "succeeded") in moves
    assert window_zero == [0.0]  # the charge's own message; no poll went to the broker
    assert len(by_clock) >= 2, "the clock did not poll"
    assert set(by_clock) == {0.0}
    assert len(simulator.payment_intents()) == 1


def test_429s_and_fleet_pauses_are_rescheduled_by_therunning_clock(
    orch: Any, simulator: Any, window_zero: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Window 0: every first try answers 429 (Retry-After 1 s), which also pauses the fleet's
    calls (breaker deferrals): all 20 jobs succeed, every retry dispatched by the clock."""
    simulator.set_faults("stripe", rate_429=1.0, first_try_only=True)
    fast = orchestrator_like(orch, simulator.url, clock_interval_s=1.0, broker_delay_window_s=0.0)
    by_clock = _record_sends(fast.dispatcher, monkeypatch)
    with _worker(orch), running_clock(fast):
        for i in range(20):
            orch.charge(100 + i, "usd", None, "pm_card_visa", f"paused-{i}")
        wait_until(lambda: count_jobs(orch, "succeeded") == 20, timeout_s=30)
    assert window_zero == [0.0] * 20  # the charges' own messages only
    assert len(by_clock) >= 20, "the retries were not dispatched by the clock"
    assert set(by_clock) == {0.0}
    assert len(simulator.payment_intents()) == 20


# -- the clock's query reads the index ---------------------------------------------------------


def test_the_due_dispatch_reads_the_scheduled_index(orch: Any) -> None:
    """With a backlog of 5,000 queued jobs (due, dispatched) and 20 scheduled in PostgreSQL,
    the due dispatch, the clock's wake-up read and the dry-run count all read
    jobs_scheduled_idx (EXPLAIN, not timings), and the dispatch takes only the due ones."""
    with psycopg.connect(orch.settings.database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO jobs (kind, provider, idempotency_key, fingerprint, amount, currency, "
            "customer, payment_method, params, max_attempts, deadline_at, changed_by, "
            "change_reason, dispatched_at) SELECT 'charge', 'stripe', 'plan-' || i, "
            "repeat('f', 64), 1000, 'usd', 'cus_plan', 'pm_card_visa', '{}', 5, "
            "now() + interval '1 hour', 'api', 'accepted', now() "
            "FROM generate_series(1, 5000) AS i"
        )
        # 20 of them scheduled: 5 already due, 15 in the future.
        conn.execute(
            "UPDATE jobs SET next_attempt_at = now() + (n - 5) * interval '10 seconds', "
            "dispatched_at = now() - interval '1 hour' "
            "FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM jobs LIMIT 20) AS s "
            "WHERE jobs.id = s.id"
        )
        conn.execute("ANALYZE jobs")
        cursor = psycopg.ClientCursor(conn)
        for name, args in (
            ("dispatch_due", {"limit": 500, "lead_s": 1.0}),
            ("next_scheduled_due", {}),
            ("count_scheduled_due", {}),
        ):
            plan = "\n".join(r[0] for r in cursor.execute("EXPLAIN " + q(name), args))
            assert "jobs_scheduled_idx" in plan, f"{name}:\n{plan}"
    due = orch.store.dispatch_due(500)
    assert [delay for _, delay in due] == [0.0] * 5
    assert orch.store.dispatch_due(500) == []
    assert 5 <= (orch.store.next_scheduled_due() or 0) <= 10
    # Sent ahead within the lead, with a broker delay of what is left.
    (_, delay), *rest = orch.store.dispatch_due(500, lead_s=10.0)
    assert rest == [] and 0 < delay <= 10.0


def test_a_message_that_comes_early_is_sent_again_for_when_the_job_is_due(
    orch: Any, worker: Any
) -> None:
    """A message for a job due in 1 s (another host's clock runs ahead, or the clock sent it
    early): the worker's claim refuses it, then sends it again with the delay the database's
    clock says is left; the job runs when due, with no clock running."""
    with psycopg.connect(orch.settings.database_url) as conn:
        # Enqueued in this transaction (its message would come from a clock: none runs) and
        # due in 1 s.
        job = orch.charge(700, "usd", "cus_early", "pm_card_visa", "early-message", conn=conn)
        conn.execute(
            "UPDATE jobs SET next_attempt_at = now() + interval '1 second' WHERE id = %s",
            (job.id,),
        )
    orch.dispatcher.send(job.id)  # now: before it is due
    wait_until(lambda: orch.job(job.id).state is JobState.SUCCEEDED, timeout_s=15)
    claimed = [t for t in orch.transitions(job.id) if t.to_state == "running"]
    assert len(claimed) == 1
