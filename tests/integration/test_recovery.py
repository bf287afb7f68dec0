"""Recovery: whatever crashes, every job settles once. Real processes, PostgreSQL, Redis (or
RabbitMQ as the broker, with TEST_BROKER_URL) and the simulator over HTTP; the clock's
``run_once`` drives sweeps instead of waiting for timers."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from orchestrator import JobState
from orchestrator.api import Orchestrator
from orchestrator.maintenance.clock import Clock
from tests.conftest import (
    count_jobs,
    empty_broker,
    orchestrator_like,
    queued_messages,
    settings_like,
    test_settings,
    wait_until,
)
from tests.processes import (
    clock_args,
    free_port,
    redis_server_args,
    settings_env,
    spawn,
    wait_for_log,
    wait_for_redis,
    worker_args,
)


@pytest.fixture
def fast_orch(orch: Any, simulator: Any) -> Any:
    """The session orchestrator's store and broker with short leases (7 s) for crash tests."""
    return orchestrator_like(
        orch, simulator.url, lease_margin_s=1.0, dispatch_grace_s=0.5, clock_interval_s=0.5
    )


def _enqueue(orch: Any, n: int, prefix: str) -> list[Any]:
    return [orch.charge(100 + i, "usd", None, "pm_card_visa", f"{prefix}-{i}") for i in range(n)]


def _drive_until_settled(orch: Any, n: int, timeout_s: float = 90.0) -> None:
    clock = Clock(orch)

    def settled() -> bool:
        clock.run_once()
        return count_jobs(orch, "succeeded") == n

    wait_until(settled, timeout_s=timeout_s, poll_s=0.3)


def _assert_one_intent_per_job(simulator: Any, jobs: list[Any], orch: Any) -> None:
    per_job = Counter(pi["metadata"]["orchestrator_job_id"] for pi in simulator.payment_intents())
    assert set(per_job) == {j.id for j in jobs}
    assert set(per_job.values()) == {1}, "a job was charged twice"
    for job in jobs:
        done = orch.job(job.id)
        assert done.state is JobState.SUCCEEDED
        assert done.provider_ref is not None


def test_worker_sigkilled_mid_flight_then_restarted(
    fast_orch: Any, simulator: Any, tmp_path: Path
) -> None:
    """SIGKILL the worker with charges in flight (1 s provider latency: a loaded machine may
    pause this test for longer than a shorter call, which would let every call finish before
    the kill), restart it: all 100 succeed with one PaymentIntent each (expired leases ->
    unknown -> resolved by lookup)."""
    simulator.set_faults("stripe", latency_ms=1000)
    env = settings_env(fast_orch.settings)
    jobs = _enqueue(fast_orch, 100, "kill")
    with spawn(worker_args(1, 8), env, tmp_path / "w1.log") as first:
        wait_until(lambda: count_jobs(fast_orch, "succeeded") >= 10, timeout_s=30)
        wait_until(lambda: count_jobs(fast_orch, "running") >= 4, timeout_s=10, poll_s=0.01)
        first.kill()
    in_flight = count_jobs(fast_orch, "running")
    assert in_flight > 0
    assert count_jobs(fast_orch, "succeeded") < 100
    with spawn(worker_args(1, 8), env, tmp_path / "w2.log"):
        _drive_until_settled(fast_orch, 100)
    _assert_one_intent_per_job(simulator, jobs, fast_orch)
    recovered = [
        j for j in jobs if any(t.to_state == "unknown" for t in fast_orch.transitions(j.id))
    ]
    assert recovered, "no job went through lease expiry"


def test_redis_flushed_with_jobs_queued_and_delayed(
    fast_orch: Any, simulator: Any, tmp_path: Path
) -> None:
    """The broker loses every message (queued and delayed retries: Redis's keys deleted, or
    RabbitMQ's queues purged): the clock's sweep re-sends from PostgreSQL and all 200
    complete, none twice."""
    simulator.set_faults("stripe", rate_429=0.5, first_try_only=True, latency_ms=20)
    settings = settings_like(
        fast_orch,
        simulator.url,
        lease_margin_s=1.0,
        dispatch_grace_s=0.5,
        backoff_base_s=3.0,
        backoff_max_s=3.0,
    )
    env = settings_env(settings)
    with spawn(worker_args(1, 8), env, tmp_path / "w1.log") as first:
        jobs = _enqueue(fast_orch, 200, "flush")
        wait_until(lambda: count_jobs(fast_orch, "retrying") >= 20, timeout_s=30)
        first.kill()
    assert empty_broker(fast_orch) > 0, "expected messages to lose"
    assert count_jobs(fast_orch, "succeeded") < 200
    with spawn(worker_args(1, 8), env, tmp_path / "w2.log"):
        _drive_until_settled(fast_orch, 200)
    _assert_one_intent_per_job(simulator, jobs, fast_orch)


def test_saved_500s_resolve_to_exactly_one_intent(
    fast_orch: Any, worker: Any, simulator: Any
) -> None:
    """30% of first tries answer a saved 500, half of them after creating the charge: every job
    ends succeeded with exactly one PaymentIntent (lookup adopts, or a new key generation)."""
    simulator.set_faults("stripe", rate_500=0.15, rate_500_after_execute=0.15, first_try_only=True)
    jobs = _enqueue(fast_orch, 100, "five-hundred")
    _drive_until_settled(fast_orch, 100)
    _assert_one_intent_per_job(simulator, jobs, fast_orch)
    finals = [fast_orch.job(j.id) for j in jobs]
    assert any(j.key_generation >= 1 for j in finals), "no job needed a new key generation"
    adopted = [
        j
        for j in jobs
        if any(t.reason == "lookup found a successful object" for t in fast_orch.transitions(j.id))
    ]
    assert adopted, "no job was settled by lookup"


def test_database_connections_terminated_mid_run(
    fast_orch: Any, simulator: Any, tmp_path: Path
) -> None:
    """Every server connection killed twice mid-run (pg_terminate_backend): workers reconnect,
    nothing is lost or doubled."""
    simulator.set_faults("stripe", latency_ms=50)
    env = settings_env(fast_orch.settings)
    jobs = _enqueue(fast_orch, 150, "pgkill")
    with spawn(worker_args(1, 8), env, tmp_path / "w.log"):
        for threshold in (20, 60):
            wait_until(lambda t=threshold: count_jobs(fast_orch, "succeeded") >= t, timeout_s=60)
            killed = _terminate_backends(fast_orch.settings.database_url)
            assert killed > 0
        _drive_until_settled(fast_orch, 150)
    _assert_one_intent_per_job(simulator, jobs, fast_orch)


def _terminate_backends(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return len(rows)


def test_two_clocks_one_acts_the_other_takes_over(fast_orch: Any, tmp_path: Path) -> None:
    """Two clock processes: one holds the advisory lock and acts; killed, the other takes over."""
    env = settings_env(fast_orch.settings, ORCHESTRATOR_LOG_FORMAT="json")
    with spawn(clock_args(), env, tmp_path / "c1.log") as c1:
        wait_for_log(c1, "clock.lock_acquired")
        with spawn(clock_args(), env, tmp_path / "c2.log") as c2:
            wait_for_log(c2, "clock.waiting_for_lock")
            time.sleep(1.5)  # three intervals: the second must still be waiting
            assert "clock.lock_acquired" not in c2.log()
            c1.kill()
            wait_for_log(c2, "clock.lock_acquired", timeout_s=15)


def test_clock_survives_losing_its_connection(fast_orch: Any, tmp_path: Path) -> None:
    """Every connection of the clock process terminated (as in a restart of PostgreSQL): the
    clock logs it, waits for the lock again, takes it, and goes on dispatching."""
    env = settings_env(fast_orch.settings, ORCHESTRATOR_LOG_FORMAT="json")
    with spawn(clock_args(), env, tmp_path / "clock.log") as clock:
        wait_for_log(clock, "clock.lock_acquired")
        assert _terminate_backends(fast_orch.settings.database_url) > 0
        wait_for_log(clock, "clock.connection_lost", timeout_s=15)
        wait_until(lambda: clock.log().count("clock.lock_acquired") == 2, timeout_s=15)
        assert clock.popen.poll() is None
        # Still listening: a job enqueued in a caller's transaction gets its message from it.
        assert queued_messages(fast_orch) == 0
        with psycopg.connect(fast_orch.settings.database_url) as conn:
            fast_orch.charge(100, "usd", None, "pm_card_visa", "clock-back", conn=conn)
        wait_until(lambda: queued_messages(fast_orch) == 1, timeout_s=15)


def test_dry_run_counts_without_acting(fast_orch: Any) -> None:
    """`reconcile --once --dry-run` reports an expired lease and leaves the job running."""
    job = fast_orch.charge(100, "usd", None, "pm_card_visa", "dry-run-1")
    assert fast_orch.store.claim(job.id, "worker:gone", 0.0) is not None
    time.sleep(0.01)
    clock = Clock(fast_orch)
    preview = clock.run_once(dry_run=True)
    assert preview.leases_expired == 1
    assert fast_orch.job(job.id).state is JobState.RUNNING
    assert clock.run_once().leases_expired == 1
    after = fast_orch.job(job.id)
    assert (after.state, after.unknown_cause) == (JobState.UNKNOWN, "lease_expired")


def test_pending_charge_is_polled_until_final(orch: Any, worker: Any, simulator: Any) -> None:
    """A charge reported as processing goes `processing`, then `succeeded` by polling."""
    simulator.set_faults("stripe", processing_delay_s=0.5)
    job = orch.charge(700, "usd", None, "pm_sim_processing", "pending-1")
    wait_until(lambda: orch.job(job.id).state is JobState.SUCCEEDED, timeout_s=20)
    states = [t.to_state for t in orch.transitions(job.id)]
    assert "processing" in states
    assert len(simulator.payment_intents()) == 1


def test_stuck_pending_goes_dead(orch: Any, simulator: Any) -> None:
    """Still pending past the configured age: `dead` with reason stuck_pending."""
    short = orchestrator_like(orch, simulator.url, stuck_pending_s=0.5)
    simulator.set_faults("stripe", processing_delay_s=3600)
    job = short.charge(700, "usd", None, "pm_sim_processing", "stuck-1")
    executor = short.executor()
    assert executor.run(job.id) is JobState.PROCESSING
    time.sleep(0.6)
    _make_due(orch, job.id)
    assert executor.run(job.id) is JobState.DEAD
    assert short.job(job.id).dead_reason == "stuck_pending"


def _make_due(orch: Any, job_id: str) -> None:
    with psycopg.connect(orch.settings.database_url, autocommit=True) as conn:
        conn.execute("UPDATE jobs SET next_attempt_at = now() WHERE id = %s", (job_id,))


def test_retention_deletes_only_old_history_of_finished_jobs(orch: Any) -> None:
    """Attempt rows of finished jobs and settled events past retention go; job rows stay,
    and a live job's history is kept whatever its age."""
    done = orch.charge(100, "usd", None, "pm_card_visa", "retention-done")
    live = orch.charge(100, "usd", None, "pm_card_visa", "retention-live")
    with psycopg.connect(orch.settings.database_url, autocommit=True) as conn:
        for job, state in ((done, "succeeded"), (live, "retrying")):
            conn.execute(
                "INSERT INTO job_attempts (job_id, attempt, key_generation, worker, outcome,"
                " duration_ms, started_at, finished_at) VALUES (%s, 1, 0, 'w', 'not_executed',"
                " 5, now() - interval '400 days', now() - interval '400 days')",
                (job.id,),
            )
        conn.execute(
            "UPDATE jobs SET state = 'running', lease_owner = 'w', lease_expires_at = now(),"
            " changed_by = 't', change_reason = 't' WHERE id IN (%s, %s)",
            (done.id, live.id),
        )
        conn.execute(
            "UPDATE jobs SET state = 'succeeded', provider_ref = 'pi_x', changed_by = 't',"
            " change_reason = 't' WHERE id = %s",
            (done.id,),
        )
        conn.execute(
            "UPDATE jobs SET state = 'retrying', changed_by = 't', change_reason = 't'"
            " WHERE id = %s",
            (live.id,),
        )
        conn.execute(
            "INSERT INTO webhook_events (provider, event_id, type, payload, status, processed_at,"
            " received_at) VALUES ('stripe', 'evt_old', 'x', '{}', 'processed', now(),"
            " now() - interval '400 days'), ('stripe', 'evt_new', 'x', '{}', 'processed',"
            " now(), now())"
        )
    clock = Clock(orch)
    preview = clock.run_once(dry_run=True)
    assert (preview["attempts_deleted"], preview["webhook_events_deleted"]) == (1, 1)
    report = clock.run_once()
    assert (report["attempts_deleted"], report["webhook_events_deleted"]) == (1, 1)
    assert orch.attempts(done.id) == []
    assert len(orch.attempts(live.id)) == 1
    assert count_jobs(orch) == 2
    with psycopg.connect(orch.settings.database_url) as conn:
        left = conn.execute("SELECT event_id FROM webhook_events").fetchall()
    assert left == [("evt_new",)]


def _start_redis(port: int, workdir: Path) -> None:
    import subprocess

    subprocess.run(
        redis_server_args(
            port,
            "--daemonize",
            "yes",
            "--dir",
            str(workdir),
            "--logfile",
            str(workdir / f"redis-{port}.log"),
        ),
        check=True,
    )
    wait_for_redis(port)


def _stop_redis(port: int) -> None:
    import contextlib

    with contextlib.suppress(redis.RedisError):  # shutdown drops the connection under us
        redis.Redis(port=port).shutdown(nosave=True)


def test_redis_stopped_and_restarted_mid_run(orch: Any, simulator: Any, tmp_path: Path) -> None:
    """A private Redis (broker and breaker state; breaker state only when the session's broker
    is RabbitMQ) is stopped mid-run and comes back empty: workers carry on, charges accepted
    during the outage are kept, none is lost or doubled."""
    import shutil

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    _start_redis(port, tmp_path)
    settings = test_settings(
        orch.settings.database_url,
        "restart",
        simulator.url,
        lease_margin_s=1.0,
        dispatch_grace_s=0.5,
        redis_url=f"redis://127.0.0.1:{port}/0",
    )
    local = Orchestrator(settings, store=orch.store)
    simulator.set_faults("stripe", latency_ms=50)
    env = settings_env(settings)
    try:
        with spawn(worker_args(1, 8), env, tmp_path / "w.log"):
            jobs = _enqueue(local, 150, "redis-restart")
            wait_until(lambda: count_jobs(local, "succeeded") >= 30, timeout_s=60)
            _stop_redis(port)
            jobs += _enqueue(local, 20, "during-outage")  # accepted: PostgreSQL is the truth
            time.sleep(1.0)
            _start_redis(port, tmp_path)
            _drive_until_settled(local, 170)
    finally:
        _stop_redis(port)
    _assert_one_intent_per_job(simulator, jobs, local)
