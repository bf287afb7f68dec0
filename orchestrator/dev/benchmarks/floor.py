"""What a job's durability costs at the least, beside what the orchestrator's job costs.

``scripts/bench --only floor`` runs jobs one after another from one thread, on a throwaway
database, in three variants that commit the same three times per job:

* ``floor``: three statements and nothing else. A bare row whose key is unique is inserted
  with the WAL flush, then claimed and settled by primary key with asynchronous commits, as
  the orchestrator commits a keyed provider's claim and settle (:class:`FloorJobs`).
* ``orchestrator``: ``orch.charge()``, then ``Executor.run()`` with a provider that answers
  at once (:class:`~orchestrator.dev.benchmarks.noop_provider.NoopProvider`). These are the
  same three commits with everything they write: the job row and its indexes, three
  transitions, the attempt and the settlement, and the client code around them (validation,
  the message sent to Redis, the executor's decisions).
* ``orchestrator-info``: the same jobs logging what a deployment logs by default
  (``ORCHESTRATOR_LOG_LEVEL=info``: a job's events, rendered as JSON and redacted) into a sink
  that counts the lines. The other variants log at warning, as every benchmark does.

The rounds alternate the variants' order. Each round prints, per job, the CPU time of PostgreSQL
(every local ``postgres`` process) and of this process (all its threads), read from ``/proc``,
and the WAL written. Nothing else runs: these are the statements' own costs, without the
contention of the charges benchmark, where workers, the simulator and PostgreSQL share the
cores. The ratio says how much of PostgreSQL's work per job is the orchestrator's schema and
how much the commits themselves.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import logging
import statistics
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum

import structlog

from orchestrator.api import Orchestrator
from orchestrator.db.bench import FloorJobs
from orchestrator.dev.benchmarks import cpu, support
from orchestrator.dev.benchmarks.burndown import (
    AMOUNT_MINOR_UNITS,
    CURRENCY,
    CUSTOMER,
    PAYMENT_METHOD,
)
from orchestrator.dev.benchmarks.noop_provider import NOOP_PROVIDER, NoopProvider
from orchestrator.dev.benchmarks.support import BenchError
from orchestrator.logs import configure_logging
from orchestrator.models import JobState

DEFAULT_JOBS = 2000
QUICK_JOBS = 100
DEFAULT_ROUNDS = 4
# Jobs of each variant before the first round: pooled connections open, statements prepared.
WARM_UP_JOBS = 50


class Variant(StrEnum):
    FLOOR = "floor"
    ORCHESTRATOR = "orchestrator"
    ORCHESTRATOR_INFO = "orchestrator-info"


@dataclass(frozen=True, slots=True)
class Round:
    """One variant's jobs, one after another."""

    variant: Variant
    jobs: int
    wall_s: float
    postgresql_us: float  # CPU per job, every local postgres process
    client_us: float  # CPU per job, this process (all its threads)
    wal_bytes: float  # WAL written per job
    log_lines: float  # lines logged per job

    @property
    def wall_us(self) -> float:
        return self.wall_s * 1e6 / self.jobs


@dataclass(frozen=True, slots=True)
class Report:
    jobs: int
    machine: str
    rounds: tuple[Round, ...]

    def of(self, variant: Variant) -> list[Round]:
        return [r for r in self.rounds if r.variant is variant]


def run(args: argparse.Namespace) -> None:
    """Measure and print (the registry's entry point)."""
    jobs = args.charges or (QUICK_JOBS if args.quick else DEFAULT_JOBS)
    rounds = args.repeat if args.repeat > 1 else (1 if args.quick else DEFAULT_ROUNDS)
    print(
        f"== durability floor: one thread, {jobs:,} jobs per round, {rounds} round(s) of each "
        "variant, alternating; CPU from /proc",
        flush=True,
    )
    print(render(measure(args.database_url, args.redis_url, jobs, rounds)), flush=True)


def measure(database_url: str, redis_url: str, jobs: int, rounds: int) -> Report:
    """``rounds`` rounds of ``jobs`` jobs per variant, alternating which goes first."""
    tag = uuid.uuid4().hex[:8]
    with (
        support.bench_world(database_url, redis_url, "floor", rate_limits="") as world,
        Orchestrator(world.settings) as orch,
        contextlib.closing(orch.broker),
        contextlib.closing(FloorJobs(world.settings.database_url)) as floor,
    ):
        executor = orch.executor(providers={NOOP_PROVIDER: NoopProvider()})

        def orchestrator_job(key: str) -> None:
            job = orch.charge(AMOUNT_MINOR_UNITS, CURRENCY, CUSTOMER, PAYMENT_METHOD, key)
            state = executor.run(job.id)
            if state is not JobState.SUCCEEDED:
                raise BenchError(f"floor: a no-op charge ended {state}, not succeeded")

        def floor_job(key: str) -> None:
            floor.run(key, f"bench-{tag}")

        run_job: dict[Variant, Callable[[str], None]] = {
            Variant.FLOOR: floor_job,
            Variant.ORCHESTRATOR: orchestrator_job,
            Variant.ORCHESTRATOR_INFO: orchestrator_job,
        }
        flush = orch.dispatcher.flush
        sink = LineCounter()
        for variant, job in run_job.items():
            with _logging(variant, sink):
                _jobs(job, f"{tag}-warm-{variant}", WARM_UP_JOBS)
        flush()
        results = []
        for round_ in range(rounds):
            order = list(Variant) if round_ % 2 == 0 else list(reversed(Variant))
            for variant in order:
                prefix = f"{tag}-{round_}-{variant}"
                lines_before = sink.lines
                with _logging(variant, sink):
                    result = _round(variant, run_job[variant], prefix, jobs, floor, flush)
                log_lines = (sink.lines - lines_before) / jobs
                results.append(dataclasses.replace(result, log_lines=log_lines))
        machine = support.machine_summary(world.settings.database_url, world.client)
    return Report(jobs, machine, tuple(results))


def _round(
    variant: Variant,
    job: Callable[[str], None],
    prefix: str,
    jobs: int,
    floor: FloorJobs,
    flush: Callable[[], bool],
) -> Round:
    wal_before = floor.wal_bytes()
    before = cpu.snapshot({})
    started = time.perf_counter()
    _jobs(job, prefix, jobs)
    flush()  # the orchestrator's messages are part of its jobs (none are pending for the floor)
    wall_s = time.perf_counter() - started
    used = cpu.per_job_ms(before, cpu.snapshot({}), jobs)
    wal = floor.wal_bytes() - wal_before
    return Round(
        variant,
        jobs,
        wall_s,
        used.get(cpu.POSTGRESQL, 0.0) * 1000,
        used.get(cpu.DRIVER, 0.0) * 1000,
        wal / jobs,
        0.0,
    )


class LineCounter(io.TextIOBase):
    """A text stream that keeps nothing but the number of lines written to it."""

    def __init__(self) -> None:
        super().__init__()
        self.lines = 0

    def write(self, text: str) -> int:
        self.lines += text.count("\n")
        return len(text)

    def isatty(self) -> bool:
        return False


@contextlib.contextmanager
def _logging(variant: Variant, sink: LineCounter) -> Iterator[None]:
    """For ``orchestrator-info``, logging configured as a deployment's (JSON, redacted, at
    info) into ``sink``, and put back as it was after; the other variants log as they do."""
    if variant is not Variant.ORCHESTRATOR_INFO:
        yield
        return
    root = logging.getLogger()
    handlers, level, config = root.handlers[:], root.level, structlog.get_config()
    configure_logging("json", "info", stream=sink)
    try:
        yield
    finally:
        structlog.configure(**config)
        root.handlers[:] = handlers
        root.setLevel(level)


def _jobs(job: Callable[[str], None], prefix: str, n: int) -> None:
    for i in range(n):
        job(f"bench-floor-{prefix}-{i}")


# -- printing ------------------------------------------------------------------------------


def render(report: Report) -> str:
    headers = ["round", "variant", "jobs", "wall µs/job", "postgresql µs/job",
               "client µs/job", "WAL bytes/job", "log lines/job"]  # fmt: skip
    rows = [
        [
            str(i // len(Variant) + 1),
            str(r.variant),
            str(r.jobs),
            f"{r.wall_us:.0f}",
            f"{r.postgresql_us:.0f}",
            f"{r.client_us:.0f}",
            f"{r.wal_bytes:.0f}",
            f"{r.log_lines:.1f}",
        ]
        for i, r in enumerate(report.rounds)
    ]
    floor, orch = report.of(Variant.FLOOR), report.of(Variant.ORCHESTRATOR)
    lines = [report.machine, support.render_table(headers, rows, left=2), ""]
    figures: tuple[tuple[str, Callable[[Round], float]], ...] = (
        ("postgresql CPU", lambda r: r.postgresql_us),
        ("client CPU", lambda r: r.client_us),
        ("WAL", lambda r: r.wal_bytes),
        ("wall", lambda r: r.wall_us),
    )
    for label, pick in figures:
        lines.append(_compare(label, [pick(r) for r in orch], [pick(r) for r in floor]))
    lines.append(_logging_cost(orch, report.of(Variant.ORCHESTRATOR_INFO)))
    return "\n".join(lines)


def _logging_cost(quiet: Sequence[Round], info: Sequence[Round]) -> str:
    """What logging at info adds to an orchestrator job: client CPU, medians."""
    q = statistics.median(r.client_us for r in quiet)
    i = statistics.median(r.client_us for r in info)
    lines = statistics.median(r.log_lines for r in info)
    return (
        f"logging at info, medians: {lines:.1f} lines per job, client CPU per job {i:,.0f} "
        f"against {q:,.0f} at warning: {i - q:+,.0f} µs, {(i - q) / lines:+,.0f} µs per line"
        if lines > 0
        else "logging at info: no line logged"
    )


def _compare(label: str, orch: Sequence[float], floor: Sequence[float]) -> str:
    """Medians of both variants and their ratio (n/a when the floor read 0)."""
    o, f = statistics.median(orch), statistics.median(floor)
    ratio = f"{o / f:.1f}x" if f > 0 else "n/a"
    return f"{label} per job, medians: orchestrator {o:,.0f}, floor {f:,.0f}: {ratio}"
