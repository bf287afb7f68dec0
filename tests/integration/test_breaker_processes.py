"""The breaker shared across worker processes, with real Redis and PostgreSQL.

A 20 s outage, with a 2 s cooldown (doubling to at most 4 s) so that several probes
fall inside it: a bounded number of provider calls during the outage, no job dead or charged
an attempt it did not make, every charge succeeding once afterwards.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from orchestrator.breaker import BreakerConfig, Permit, RedisBreaker, Signal, redis_client
from tests.conftest import TEST_REDIS_URL, count_jobs, settings_like, wait_until
from tests.processes import clock_args, settings_env, spawn, worker_args

OUTAGE_S = 20.0
COOLDOWN_S = 2.0
THRESHOLD = 5
PROCESSES, THREADS = 2, 4


def _outage_requests(simulator: Any) -> list[dict[str, Any]]:
    return [r for r in simulator.requests_log() if r["fault"] == "outage"]


def test_outage_across_two_worker_processes(orch: Any, simulator: Any, tmp_path: Path) -> None:
    """100 charges due during a 20 s total outage, 2 worker processes x 4 threads: the provider
    sees at most threshold + calls in flight + one probe per cooldown; afterwards all 100
    succeed with one PaymentIntent each, none dead, every attempt a real provider call."""
    settings = settings_like(
        orch,
        simulator.url,
        breaker_failure_threshold=THRESHOLD,
        breaker_cooldown_s=COOLDOWN_S,
        breaker_cooldown_max_s=2 * COOLDOWN_S,
        retry_horizon_s=600.0,
    )
    simulator.set_faults("stripe", outage=True)
    jobs = [orch.charge(1000 + i, "usd", None, "pm_card_visa", f"outage-{i}") for i in range(100)]
    # The clock too: a deferral past the broker's delay window (cooldowns of 2-4 s plus jitter)
    # is dispatched by the clock when due (PostgreSQL owns the schedule).
    with (
        spawn(worker_args(PROCESSES, THREADS), settings_env(settings), tmp_path / "w.log") as w,
        spawn(clock_args(), settings_env(settings), tmp_path / "clock.log"),
    ):
        wait_until(lambda: len(_outage_requests(simulator)) > 0, timeout_s=30)
        time.sleep(OUTAGE_S)
        during = len(_outage_requests(simulator))
        simulator.set_faults("stripe")  # recovered
        wait_until(lambda: count_jobs(orch, "succeeded") == 100, timeout_s=45)
        assert "breaker.redis_unavailable" not in w.log()
    in_flight = PROCESSES * THREADS
    probes = int(OUTAGE_S / COOLDOWN_S) + 1
    print(f"provider requests during the outage: {during}")
    assert THRESHOLD <= during <= THRESHOLD + in_flight + probes, during
    assert count_jobs(orch, "dead") == 0
    intents = simulator.payment_intents()
    assert sorted(pi["metadata"]["orchestrator_job_id"] for pi in intents) == sorted(
        j.id for j in jobs
    )
    posts = [r for r in simulator.requests_log() if r["method"] == "POST"]
    recorded = 0
    for job in jobs:
        done = orch.job(job.id)
        attempts = orch.attempts(job.id)
        assert done.attempts == len(attempts)  # no attempt counted without a call
        recorded += len(attempts)
    assert recorded == len(posts)


def _race(namespace: str, barrier: Any, results: Any, threads: int) -> None:
    """One process: `threads` threads released together, each asking the breaker once."""
    client = redis_client(TEST_REDIS_URL, 2.0)
    breaker = RedisBreaker(client, BreakerConfig(cooldown_ms=200), namespace)
    verdicts: list[str] = []
    lock = threading.Lock()

    def ask() -> None:
        barrier.wait()
        verdict = breaker.acquire("stripe").verdict
        with lock:
            verdicts.append(verdict)

    pool = [threading.Thread(target=ask) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    results.put(verdicts)


def test_half_open_race_grants_exactly_one_probe() -> None:
    """20 threads in 2 processes race a breaker whose cooldown just passed: exactly one gets
    the probe, the other 19 are told a probe is in flight. Repeated over 5 rounds."""
    namespace = f"race-{uuid.uuid4().hex[:8]}"
    client = redis_client(TEST_REDIS_URL, 2.0)
    breaker = RedisBreaker(client, BreakerConfig(cooldown_ms=200), namespace)
    ctx = multiprocessing.get_context("spawn")
    try:
        for _ in range(5):
            for _ in range(5):
                breaker.record(Permit("stripe", "allow", 0, "closed", ""), Signal.FAILURE)
            assert breaker.status("stripe").state == "open"
            barrier, results = ctx.Barrier(20), ctx.Queue()
            procs = [
                ctx.Process(target=_race, args=(namespace, barrier, results, 10)) for _ in "ab"
            ]
            for p in procs:
                p.start()
            verdicts = results.get(timeout=30) + results.get(timeout=30)
            for p in procs:
                p.join(timeout=10)
            assert verdicts.count("probe") == 1, verdicts
            assert len(verdicts) == 20
            breaker.override("stripe", "close", "test", "next round")
    finally:
        keys = list(client.scan_iter(match=f"{namespace}*"))
        if keys:
            client.delete(*keys)
        client.close()
