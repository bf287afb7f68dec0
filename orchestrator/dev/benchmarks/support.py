"""What every benchmark needs: a throwaway database, the simulator and dramatiq workers in
their own processes, a unique Redis namespace, percentiles and a plain-text table.

Each piece is a context manager that cleans up after itself (database dropped, processes
stopped, namespace keys deleted), whatever the benchmark raised.
"""

from __future__ import annotations

import math
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import psycopg
import redis

from orchestrator.config import Settings, load_settings
from orchestrator.db.pool import create_database, drop_database, migrate, server_version
from orchestrator.dev.benchmarks.runner import BenchError
from orchestrator.dev.simulator import SimulatorControl

__all__ = ["BenchError", "WorkerShape"]

# The simulator's Stripe key for every benchmark (a test key: it guards nothing).
BENCH_STRIPE_KEY = "sk_test_orchestratorBench4242"
# The simulator imports in well under a second; allow for a loaded 2-core machine.
SIMULATOR_START_TIMEOUT_S = 15.0
# A dramatiq worker process imports its actors and opens its pools in a few seconds.
WORKER_START_TIMEOUT_S = 30.0
# Warm shutdown lets in-flight messages finish; past this the process is killed.
WORKER_STOP_TIMEOUT_S = 15.0
READY_POLL_S = 0.05
# Idle consumers poll Redis this often (ms), as `orchestrator worker` sets it: dramatiq's
# default of 1000 would add up to a second of latency to every drain.
WORKER_POLL_MS = "100"
# Lines of a failed worker's log quoted in the error.
LOG_TAIL_LINES = 15


# -- database ------------------------------------------------------------------------------


def with_database(server_url: str, name: str) -> str:
    """``server_url`` pointed at the database ``name`` (the path is replaced)."""
    base, sep, _ = server_url.rpartition("/")
    if not sep or "://" not in base:
        raise BenchError(f"not a postgresql:// server URL: {server_url.split('@')[-1]}")
    return f"{base}/{name}"


@contextmanager
def fresh_database(server_url: str, name: str | None = None) -> Iterator[str]:
    """Create ``orchestrator_bench_<pid>``, apply the schema, yield its URL, drop it."""
    name = name or f"orchestrator_bench_{os.getpid()}"
    try:
        create_database(server_url, name, replace=True)
    except psycopg.Error as exc:
        raise BenchError(f"cannot create the bench database: {exc}".strip()) from exc
    url = with_database(server_url, name)
    try:
        migrate(url)
        yield url
    finally:
        drop_database(server_url, name)


@dataclass(frozen=True, slots=True)
class World:
    """A benchmark's own database and Redis namespace, and the settings pointing at them."""

    settings: Settings
    client: redis.Redis
    namespace: str


@contextmanager
def bench_world(database_url: str, redis_url: str, name: str, **overrides: Any) -> Iterator[World]:
    """A fresh database ``orchestrator_bench_<name>_<pid>`` and a namespace unique to the run,
    with settings for them (``overrides`` added); both are removed at the end."""
    namespace = f"orchestrator-bench-{name}-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_url)
    try:
        with fresh_database(database_url, f"orchestrator_bench_{name}_{os.getpid()}") as url:
            settings = load_settings(
                database_url=url,
                redis_url=redis_url,
                redis_namespace=namespace,
                stripe_api_key=BENCH_STRIPE_KEY,
                log_level="warning",
                **overrides,
            )
            yield World(settings, client, namespace)
    finally:
        flush_namespace(client, namespace)
        client.close()


# -- redis ---------------------------------------------------------------------------------


def flush_namespace(client: redis.Redis, namespace: str) -> None:
    keys = list(client.scan_iter(match=f"{namespace}*", count=1000))
    if keys:
        client.delete(*keys)


def live_workers(client: redis.Redis, namespace: str, exclude: set[str]) -> int:
    """How many dramatiq brokers in ``namespace`` have fetched, besides ``exclude``.

    Every worker process's broker adds its id to ``<namespace>:__heartbeats__`` on each
    fetch; the driver's own broker joins it when it enqueues, hence ``exclude``.
    """
    members = client.zrange(f"{namespace}:__heartbeats__", 0, -1)
    ids = {m.decode() if isinstance(m, bytes) else str(m) for m in members}
    return len(ids - exclude)


# -- processes -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@contextmanager
def simulator_process(log_dir: Path) -> Iterator[tuple[str, SimulatorControl, Process]]:
    """``orchestrator simulator`` in its own process (it must not share the driver's GIL):
    its URL, a control client and the process."""
    port = free_port()
    env = {**os.environ, "STRIPE_API_KEY": BENCH_STRIPE_KEY}
    argv = [sys.executable, "-m", "orchestrator", "simulator", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    control = SimulatorControl(url)
    with _process(argv, env, log_dir / "simulator.log", "simulator") as proc:
        _wait_until(control.health, SIMULATOR_START_TIMEOUT_S, proc)
        try:
            yield url, control, proc
        finally:
            control.close()


@dataclass(frozen=True, slots=True)
class WorkerShape:
    """How many worker processes and threads each: the same for every variant measured."""

    processes: int
    threads: int


@contextmanager
def worker_processes(
    module: str, env: Mapping[str, str], shape: WorkerShape, log_path: Path
) -> Iterator[Process]:
    """``python -m dramatiq <module>`` as production runs it (`orchestrator worker`)."""
    argv = [
        sys.executable,
        "-m",
        "dramatiq",
        module,
        "--processes",
        str(shape.processes),
        "--threads",
        str(shape.threads),
        "--skip-logging",
    ]
    full_env = {**os.environ, **env, "dramatiq_worker_timeout": WORKER_POLL_MS}
    with _process(argv, full_env, log_path, f"workers ({module})") as proc:
        yield proc


def wait_for_workers(
    proc: Process, client: redis.Redis, namespace: str, expected: int, exclude: set[str]
) -> None:
    """Return once ``expected`` worker processes are fetching from ``namespace``."""
    _wait_until(
        lambda: live_workers(client, namespace, exclude) >= expected,
        WORKER_START_TIMEOUT_S,
        proc,
    )


@dataclass(frozen=True, slots=True)
class Process:
    """A child process we started, what it is, and where its output goes."""

    popen: subprocess.Popen[bytes]
    what: str
    log_path: Path

    def tail(self) -> str:
        """The last lines of its output, on one line (for a one-line error)."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return f"no output at {self.log_path}"
        last = " | ".join(line.strip() for line in lines[-LOG_TAIL_LINES:] if line.strip())
        return f"last output: {last or '(none)'}"


@contextmanager
def _process(
    argv: Sequence[str], env: Mapping[str, str], log_path: Path, what: str
) -> Iterator[Process]:
    with log_path.open("ab") as log:
        popen = subprocess.Popen(  # noqa: S603  (our own interpreter and modules)
            list(argv),
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tempfile.gettempdir(),  # away from any .env in the working directory
        )
        try:
            yield Process(popen, what, log_path)
        finally:
            _stop(popen)


def _stop(popen: subprocess.Popen[bytes]) -> None:
    """SIGTERM (dramatiq's warm shutdown; the simulator's stop), then SIGKILL if it hangs."""
    if popen.poll() is not None:
        return
    popen.send_signal(signal.SIGTERM)
    try:
        popen.wait(WORKER_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait()


def _wait_until(ready: Callable[[], bool], timeout_s: float, proc: Process) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise BenchError(
                f"{proc.what} exited with {proc.popen.returncode} while starting; {proc.tail()}"
            )
        if ready():
            return
        time.sleep(READY_POLL_S)
    raise BenchError(f"{proc.what} not ready after {timeout_s:.0f}s; {proc.tail()}")


# -- figures -------------------------------------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (``pct`` in 0..100) of a non-empty sequence."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """Columns padded to their widest cell: the first ``left`` left-aligned (labels), the
    rest right-aligned (numbers)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            c.ljust(w) if i < left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(padded).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def machine_summary(database_url: str, client: redis.Redis) -> str:
    """One line naming the machine and the versions the figures depend on."""
    packages = ("dramatiq", "stripe", "psycopg", "redis")
    versions = " ".join(f"{p} {_version(p)}" for p in packages)
    info = client.info("server")
    return (
        f"machine: {os.cpu_count()} cores, {platform.system()} {platform.machine()}; "
        f"python {platform.python_version()}; {versions}; "
        f"postgresql {server_version(database_url)}; redis-server {info.get('redis_version', '?')}"
    )


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "?"
