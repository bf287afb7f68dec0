"""Chaos scenarios at scale: real worker and clock processes, a simulator process, real
PostgreSQL and Redis; faults injected mid-run; then the money invariants are checked.

For every scenario it prints jobs by state, provider objects per job, duplicates (jobs with
more than one PaymentIntent) and lost jobs (accepted but not settled), and exits 1 if any
invariant is broken.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import psycopg
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator.api import Orchestrator  # noqa: E402
from orchestrator.config import load_settings  # noqa: E402
from orchestrator.db import migrate  # noqa: E402
from orchestrator.dev.simulator import SimulatorControl  # noqa: E402
from orchestrator.logs import configure_logging  # noqa: E402
from tests.processes import (  # noqa: E402
    Proc,
    clock_args,
    free_port,
    settings_env,
    spawn,
    worker_args,
)

ADMIN_URL = os.environ.get("CHAOS_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("CHAOS_REDIS_URL", "redis://127.0.0.1:6379/14")
STRIPE_KEY = "sk_test_chaosSuiteKey"
SETTLE_TIMEOUT_S = 300
# A shell command that crashes PostgreSQL and starts it again, for the pgcrash scenario, e.g.
# "pg_ctlcluster 15 main stop -m immediate && pg_ctlcluster 15 main start".
CRASH_ENV = "CHAOS_PG_CRASH_CMD"


class Run:
    """One scenario's world: a database, a namespace, a simulator, workers and a clock."""

    def __init__(self, name: str, logs: Path) -> None:
        self.name = name
        self.logs = logs
        self.db = f"orchestrator_chaos_{name}_{uuid.uuid4().hex[:6]}"
        self.port = free_port()
        self.stack = ExitStack()
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{self.db}"')
        base = ADMIN_URL.rpartition("/")[0]
        self.settings = load_settings(
            database_url=f"{base}/{self.db}",
            redis_url=REDIS_URL,
            redis_namespace=f"chaos-{self.db}",
            stripe_api_key=STRIPE_KEY,
            stripe_api_base=f"http://127.0.0.1:{self.port}",
            backoff_base_s=0.2,
            backoff_max_s=2.0,
            search_grace_s=1.0,
            dispatch_grace_s=2.0,
            clock_interval_s=0.5,
            provider_connect_timeout_s=1.0,
            provider_read_timeout_s=3.0,
            lease_margin_s=2.0,
            max_attempts=20,
            log_level="warning",
            log_format="json",
            # Chaos measures recovery, not pacing: production cooldowns (30 s doubling to
            # 5 min) and 1 s fleet-wide pauses per 429 would only stretch the run.
            breaker_cooldown_s=1.0,
            breaker_cooldown_max_s=5.0,
            rate_limit_pause_max_s=0.2,
        )
        migrate(self.settings.database_url)
        self.env = settings_env(self.settings)
        sim_env = {**self.env, "STRIPE_API_KEY": STRIPE_KEY}
        self.stack.enter_context(
            spawn(
                [sys.executable, "-m", "orchestrator", "simulator", "--port", str(self.port)],
                sim_env,
                logs / f"{name}-simulator.log",
            )
        )
        self.sim = SimulatorControl(f"http://127.0.0.1:{self.port}")
        _wait(lambda: self.sim.health(), 20)
        self.orch = Orchestrator(self.settings)
        self.stack.enter_context(spawn(clock_args(), self.env, logs / f"{name}-clock.log"))
        self.worker = self.start_worker()

    def start_worker(self) -> Proc:
        n = len(list(self.logs.glob(f"{self.name}-worker*.log")))
        return self.stack.enter_context(
            spawn(worker_args(2, 8), self.env, self.logs / f"{self.name}-worker{n}.log")
        )

    def enqueue(self, n: int) -> list[str]:
        return [
            self.orch.charge(100 + i % 5000, "usd", None, "pm_card_visa", f"{self.name}-{i}").id
            for i in range(n)
        ]

    def count(self, state: str) -> int:
        return self.orch.store.count_by_state().get(state, 0)

    def close(self) -> None:
        self.orch.close()
        self.stack.close()
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"{self.settings.redis_namespace}*"))
        if keys:
            client.delete(*keys)
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')


class Skipped(Exception):
    """A scenario that cannot run here; the message says what it needs."""


def _wait(predicate: Callable[[], bool], timeout_s: float, poll_s: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except Exception:  # noqa: S110  (a service still starting)
            pass
        time.sleep(poll_s)
    return False


# -- scenarios: each injects its fault while jobs are in flight -------------------------------


def kill(run: Run, n: int) -> None:
    """SIGKILL the whole worker group three times mid-run, restarting it each time."""
    run.sim.set_faults("stripe", latency_ms=100)
    run.enqueue(n)
    for step in (1, 2, 3):
        _wait(lambda s=step: run.count("succeeded") >= n * s // 5, 120, 0.05)
        run.worker.kill()
        run.worker = run.start_worker()


def flush(run: Run, n: int) -> None:
    """Empty Redis of every queued and delayed message, twice."""
    run.sim.set_faults("stripe", latency_ms=30, rate_429=0.3, first_try_only=True)
    run.enqueue(n)
    client = redis.Redis.from_url(REDIS_URL)
    for step in (1, 2):
        _wait(lambda s=step: run.count("succeeded") >= n * s // 4, 120, 0.05)
        keys = list(client.scan_iter(match=f"{run.settings.redis_namespace}*"))
        if keys:
            client.delete(*keys)
    client.close()


def saved500(run: Run, n: int) -> None:
    """30% of first tries answer a saved 500, half of those after creating the charge."""
    run.sim.set_faults("stripe", rate_500=0.15, rate_500_after_execute=0.15, first_try_only=True)
    run.enqueue(n)


def pgkill(run: Run, n: int) -> None:
    """Terminate every database connection three times mid-run."""
    run.sim.set_faults("stripe", latency_ms=30)
    run.enqueue(n)
    for step in (1, 2, 3):
        _wait(lambda s=step: run.count("succeeded") >= n * s // 5, 120, 0.05)
        with psycopg.connect(run.settings.database_url, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )


def pgcrash(run: Run, n: int) -> None:
    """Crash PostgreSQL twice mid-run ($CHAOS_PG_CRASH_CMD: an immediate stop, then a start)."""
    command = os.environ.get(CRASH_ENV)
    if not command:
        raise Skipped(f"set {CRASH_ENV} to a shell command that crashes and restarts the server")
    run.sim.set_faults("stripe", latency_ms=30)
    run.enqueue(n)
    for step in (1, 2):
        _wait(lambda s=step: run.count("succeeded") >= n * s // 3, 120, 0.02)
        subprocess.run(command, shell=True, check=True)  # noqa: S602  (the operator's command)
        _wait(lambda: run.count("succeeded") >= 0, 60)


def cuts(run: Run, n: int) -> None:
    """15% of connections cut after executing, 10% answered 429."""
    run.sim.set_faults("stripe", rate_cut_after_execute=0.15, rate_429=0.10)
    run.enqueue(n)


SCENARIOS: dict[str, Callable[[Run, int], None]] = {
    "kill": kill,
    "flush": flush,
    "saved500": saved500,
    "pgkill": pgkill,
    "pgcrash": pgcrash,
    "cuts": cuts,
}


def check(run: Run, n: int, elapsed_s: float) -> bool:
    """Print the invariant check; True when every invariant holds."""
    states = run.orch.store.count_by_state()
    per_job = Counter(pi["metadata"].get("orchestrator_job_id") for pi in run.sim.payment_intents())
    duplicates = sum(1 for c in per_job.values() if c > 1)
    settled = states.get("succeeded", 0)
    lost = n - sum(states.values())
    unsettled = n - settled
    mismatched = sum(1 for c in per_job.values() if c != 1) + (n - len(per_job))
    print(f"  jobs by state:            {dict(sorted(states.items()))}")
    print(f"  provider objects per job: {dict(Counter(per_job.values()))}")
    print(
        f"  duplicates: {duplicates}   lost: {lost}   unsettled: {unsettled}   "
        f"jobs without exactly one object: {mismatched}   time: {elapsed_s:.1f}s"
    )
    ok = duplicates == 0 and lost == 0 and unsettled == 0 and mismatched == 0
    print(f"  invariants: {'OK' if ok else 'BROKEN'}")
    return ok


def _finished(run: Run) -> int:
    return run.count("succeeded") + run.count("failed") + run.count("dead")


def main() -> int:
    if "--multi-host" in sys.argv[1:]:  # scripts/chaos_hosts.py: hosts as network namespaces
        from chaos_hosts import main as multi_host_main

        return multi_host_main([a for a in sys.argv[1:] if a != "--multi-host"])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--multi-host",
        action="store_true",
        help="worker and clock hosts as network namespaces: partitions and freezes "
        "(scripts/chaos_hosts.py; its own --scenario, --broker redis|rabbitmq|both, --jobs)",
    )
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS))
    args = parser.parse_args()
    configure_logging("console", "warning")
    logs = Path(tempfile.mkdtemp(prefix="orchestrator-chaos-"))
    print(f"chaos: {args.jobs} jobs per scenario; process logs in {logs}")
    all_ok = True
    for name in args.scenario or list(SCENARIOS):
        print(f"\n== {name}: {SCENARIOS[name].__doc__}")
        run = Run(name, logs)
        try:
            started = time.monotonic()
            try:
                SCENARIOS[name](run, args.jobs)
            except Skipped as skipped:
                print(f"  skipped: {skipped}")
                continue
            _wait(lambda r=run: _finished(r) >= args.jobs, SETTLE_TIMEOUT_S, 0.2)
            all_ok &= check(run, args.jobs, time.monotonic() - started)
        finally:
            run.close()
    return 0 if all_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
