"""Charges end to end: the orchestrator beside the naive SDK call and a no-op actor.

For each provider latency (the simulator at 0 ms and 50 ms) and each variant, the driver
starts the variant's dramatiq workers (real processes, the same shape for every variant),
waits until they fetch and have drained a warm-up round, then enqueues N messages as fast as
it can from one thread and measures from the first enqueue to the moment a count (polled
every 50 ms) shows all N finished:

* ``orchestrator``: ``Orchestrator.charge()`` then ``python -m dramatiq actors``; finished
  means a terminal job state in PostgreSQL (all must be ``succeeded``);
* ``naive``: a plain actor making the same stripe SDK call with an idempotency key, nothing
  persisted (:mod:`orchestrator.dev.benchmarks.baseline_actors`);
* ``noop``: an actor doing nothing, the floor set by dramatiq and Redis.

Finished baselines are counted with a Redis ``INCR``. Enqueue latency is the duration of
each ``orch.charge()`` call (and of each ``broker.enqueue()`` for the baselines).

Around each drain the CPU time of every process involved is read from ``/proc``
(:mod:`orchestrator.dev.benchmarks.cpu`) and printed per job: the driver, the workers, the
simulator, PostgreSQL and Redis. When the machine is busy the rates follow these sums, so
the table says which process a variant's extra CPU went to.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from orchestrator.api import Orchestrator
from orchestrator.broker import HEARTBEAT_TIMEOUT_MS, MAINTENANCE_CHANCE
from orchestrator.config import load_settings
from orchestrator.dev.benchmarks import cpu, support
from orchestrator.dev.benchmarks.support import BenchError, WorkerShape
from orchestrator.dev.simulator import SimulatorControl
from orchestrator.models import JobState

# The contract with baseline_actors (which imports these; this module never imports it).
NAMESPACE_ENV = "BENCH_REDIS_NAMESPACE"
QUEUE_ENV = "BENCH_QUEUE"
NAIVE_HTTP_ENV = "BENCH_NAIVE_HTTP"  # "sdk" or "orchestrator" (--naive-http)
NAIVE_ACTOR = "bench_naive_charge"
NOOP_ACTOR = "bench_noop"
BASELINE_QUEUE = "bench"
BASELINE_MODULE = "orchestrator.dev.benchmarks.baseline_actors"
ORCHESTRATOR_MODULE = "actors"

# Charges per run at 0 ms; at 50 ms each run takes longer, so half as many.
DEFAULT_CHARGES = 2000
QUICK_CHARGES = 200
SLOW_LATENCY_MS = 50.0
# How often the driver counts finished jobs: the drain time is over-stated by at most this.
POLL_S = 0.05
# A drain that takes longer than this (plus a per-job allowance) is stuck, not slow.
DRAIN_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_PER_JOB_S = 0.05
# What every charge asks for: a card that succeeds in the simulator.
AMOUNT_MINOR_UNITS = 1000
CURRENCY = "usd"
PAYMENT_METHOD = "pm_card_visa"
CUSTOMER = "cus_bench"

# The targets, reported against (never asserted): the orchestrator's drain rate as a
# share of the naive call's, by provider latency, and the p99 of orch.charge() from one
# producer while the workers run.
TARGET_SHARE_OF_NAIVE = {0.0: 0.75, SLOW_LATENCY_MS: 0.95}
TARGET_ENQUEUE_P99_MS = 2.0

TERMINAL_STATES = frozenset(s.value for s in JobState if s.is_terminal)


def done_key(namespace: str) -> str:
    """The Redis counter the baseline actors increment once per finished message."""
    return f"{namespace}:bench:done"


class Variant(StrEnum):
    ORCHESTRATOR = "orchestrator"
    NAIVE = "naive"
    NOOP = "noop"


@dataclass(frozen=True, slots=True)
class Scenario:
    """One drain: ``charges`` messages with the simulator answering after ``latency_ms``."""

    latency_ms: float
    charges: int


@dataclass(frozen=True, slots=True)
class Config:
    scenarios: tuple[Scenario, ...]
    shape: WorkerShape
    producers: int  # driver threads enqueueing at once
    naive_http: str  # the naive actor's HTTP client: "sdk" (its default) or "orchestrator"
    server_url: str  # PostgreSQL server: the bench database is created there
    redis_url: str


@dataclass(frozen=True, slots=True)
class Result:
    """One variant drained at one latency."""

    variant: Variant
    latency_ms: float
    jobs: int
    enqueue_s: float  # first enqueue to last enqueue returned
    total_s: float  # first enqueue to all finished (as seen by the poll)
    enqueue_ms: tuple[float, ...]  # duration of each enqueue call
    # CPU ms per job by process group over the drain (cpu.per_job_ms).
    cpu_ms: Mapping[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Jobs per second, first enqueue to last finished."""
        return self.jobs / self.total_s

    @property
    def cpu_total_ms(self) -> float:
        return sum(self.cpu_ms.values())

    @property
    def busy_cores(self) -> float:
        """CPU used over the drain by every process counted, in cores."""
        return self.cpu_total_ms * self.jobs / 1000 / self.total_s

    def enqueue_pct_ms(self, pct: float) -> float:
        return support.percentile(self.enqueue_ms, pct)


@dataclass(frozen=True, slots=True)
class Report:
    config: Config
    machine: str
    results: tuple[Result, ...]

    def result(self, variant: Variant, latency_ms: float) -> Result:
        return next(r for r in self.results if r.variant is variant and r.latency_ms == latency_ms)


# -- entry point ---------------------------------------------------------------------------


def run(args: argparse.Namespace) -> None:
    """Measure and print, ``--repeat`` times over (the registry's entry point)."""
    config = config_from_args(args)
    print(_header(config), flush=True)
    reports = []
    for round_ in range(1, args.repeat + 1):
        if args.repeat > 1:
            print(f"-- run {round_} of {args.repeat}", flush=True)
        reports.append(measure(config))
        print(render(reports[-1]), flush=True)
    if len(reports) > 1:
        print(render_summary(reports), flush=True)


def config_from_args(args: argparse.Namespace) -> Config:
    charges = args.charges or (QUICK_CHARGES if args.quick else DEFAULT_CHARGES)
    return Config(
        scenarios=(Scenario(0.0, charges), Scenario(SLOW_LATENCY_MS, max(1, charges // 2))),
        shape=WorkerShape(args.processes, args.threads),
        producers=args.producers,
        naive_http=args.naive_http,
        server_url=args.database_url,
        redis_url=args.redis_url,
    )


def measure(config: Config) -> Report:
    """Run every variant at every latency against fresh infrastructure; clean up after."""
    client = redis.Redis.from_url(config.redis_url)
    tag = uuid.uuid4().hex[:8]
    try:
        with (
            tempfile.TemporaryDirectory(prefix="orchestrator-bench-") as tmp,
            support.fresh_database(config.server_url) as database_url,
            support.simulator_process(Path(tmp)) as (simulator_url, control, simulator),
        ):
            env = _Env(
                config,
                database_url,
                simulator_url,
                simulator.popen.pid,
                control,
                client,
                Path(tmp),
                tag,
            )
            machine = support.machine_summary(database_url, client)
            results = [r for variant in Variant for r in _measure_variant(env, variant)]
    finally:
        client.close()
    return Report(config, machine, tuple(results))


# -- one variant ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Env:
    config: Config
    database_url: str
    simulator_url: str
    simulator_pid: int
    control: SimulatorControl
    redis: redis.Redis
    log_dir: Path
    tag: str  # unique to the run: namespaces and keys never meet an earlier run's

    def namespace(self, variant: Variant) -> str:
        return f"orchestrator-bench-{self.tag}-{variant}"


@dataclass(frozen=True, slots=True)
class _Driver:
    """How the driver feeds one variant and counts what it finished."""

    enqueue: Callable[[str], None]  # one message, given a key unique to it
    finished: Callable[[], int]
    succeeded: Callable[[], int]
    broker_id: str  # the driver's own broker, not a worker


def _measure_variant(env: _Env, variant: Variant) -> list[Result]:
    namespace = env.namespace(variant)
    try:
        with _driver(env, variant, namespace) as (driver, module, worker_env):
            log_path = env.log_dir / f"workers-{variant}.log"
            shape = env.config.shape
            with support.worker_processes(module, worker_env, shape, log_path) as proc:
                support.wait_for_workers(
                    proc, env.redis, namespace, shape.processes, {driver.broker_id}
                )
                warm_up = Scenario(0.0, shape.processes * shape.threads)
                _prepare_simulator(env.control, warm_up)
                _drain(variant, warm_up, driver, f"{env.tag}-warmup", env.config.producers)
                trees = {cpu.WORKERS: proc.popen.pid, cpu.SIMULATOR: env.simulator_pid}
                results = []
                for scenario in env.config.scenarios:
                    _prepare_simulator(env.control, scenario)
                    key_prefix = f"{env.tag}-{scenario.latency_ms:g}ms"
                    before = cpu.snapshot(trees)
                    result = _drain(variant, scenario, driver, key_prefix, env.config.producers)
                    used = cpu.per_job_ms(before, cpu.snapshot(trees), scenario.charges)
                    results.append(replace(result, cpu_ms=used))
                return results
    finally:
        support.flush_namespace(env.redis, namespace)


def _prepare_simulator(control: SimulatorControl, scenario: Scenario) -> None:
    control.reset()  # objects and saved keys of earlier runs would only slow lookups down
    control.set_faults("stripe", latency_ms=scenario.latency_ms)


@contextmanager
def _driver(
    env: _Env, variant: Variant, namespace: str
) -> Iterator[tuple[_Driver, str, dict[str, str]]]:
    worker_env = {
        "REDIS_URL": env.config.redis_url,
        "STRIPE_API_KEY": support.BENCH_STRIPE_KEY,
        "STRIPE_API_BASE": env.simulator_url,
    }
    if variant is Variant.ORCHESTRATOR:
        with _orchestrator_driver(env, namespace) as driver:
            worker_env.update(
                DATABASE_URL=env.database_url,
                ORCHESTRATOR_REDIS_NAMESPACE=namespace,
                ORCHESTRATOR_LOG_LEVEL="warning",
                ORCHESTRATOR_LOG_FORMAT="json",
                # The fleet-wide call rate limit models Stripe's live mode (100/s); against
                # the simulator it would measure the limiter, not the orchestrator.
                ORCHESTRATOR_RATE_LIMITS="",
            )
            yield driver, ORCHESTRATOR_MODULE, worker_env
        return
    actor = NAIVE_ACTOR if variant is Variant.NAIVE else NOOP_ACTOR
    with _baseline_driver(env, namespace, actor) as driver:
        worker_env.update(
            {
                NAMESPACE_ENV: namespace,
                QUEUE_ENV: BASELINE_QUEUE,
                NAIVE_HTTP_ENV: env.config.naive_http,
            }
        )
        yield driver, BASELINE_MODULE, worker_env


@contextmanager
def _orchestrator_driver(env: _Env, namespace: str) -> Iterator[_Driver]:
    settings = load_settings(
        database_url=env.database_url,
        redis_url=env.config.redis_url,
        redis_namespace=namespace,
        stripe_api_key=support.BENCH_STRIPE_KEY,
        stripe_api_base=env.simulator_url,
        log_level="warning",
    )
    with Orchestrator(settings) as orch, contextlib.closing(orch.broker):

        def enqueue(key: str) -> None:
            orch.charge(AMOUNT_MINOR_UNITS, CURRENCY, CUSTOMER, PAYMENT_METHOD, key)

        def count(states: frozenset[str]) -> int:
            return sum(n for state, n in orch.store.count_by_state().items() if state in states)

        yield _Driver(
            enqueue=enqueue,
            finished=lambda: count(TERMINAL_STATES),
            succeeded=lambda: count(frozenset({JobState.SUCCEEDED.value})),
            broker_id=_broker_id(orch.broker),
        )


@contextmanager
def _baseline_driver(env: _Env, namespace: str, actor: str) -> Iterator[_Driver]:
    broker = RedisBroker(  # type: ignore[no-untyped-call]
        url=env.config.redis_url,
        namespace=namespace,
        heartbeat_timeout=HEARTBEAT_TIMEOUT_MS,
        maintenance_chance=MAINTENANCE_CHANCE,
    )
    counter = done_key(namespace)

    def enqueue(key: str) -> None:
        args: tuple[Any, ...] = (
            (AMOUNT_MINOR_UNITS, CURRENCY, PAYMENT_METHOD, key) if actor == NAIVE_ACTOR else ()
        )
        message: dramatiq.Message[Any] = dramatiq.Message(
            queue_name=BASELINE_QUEUE, actor_name=actor, args=args, kwargs={}, options={}
        )
        broker.enqueue(message)

    def finished() -> int:
        return int(env.redis.get(counter) or 0)

    try:
        yield _Driver(enqueue, finished, finished, _broker_id(broker))
    finally:
        broker.close()


def _broker_id(broker: dramatiq.Broker) -> str:
    """The id a Redis broker writes into the namespace's heartbeats when it dispatches."""
    if not isinstance(broker, RedisBroker):
        raise BenchError("the benchmark needs dramatiq's Redis broker")
    return str(broker.broker_id)


def _drain(
    variant: Variant, scenario: Scenario, driver: _Driver, key_prefix: str, producers: int
) -> Result:
    """Enqueue ``scenario.charges`` messages, then poll until all have finished."""
    finished_before, succeeded_before = driver.finished(), driver.succeeded()
    keys = [f"bench-{key_prefix}-{i}" for i in range(scenario.charges)]
    started = time.perf_counter()
    if producers == 1:
        durations_ms = _enqueue_all(driver, keys)
    else:
        with ThreadPoolExecutor(producers, thread_name_prefix="bench-producer") as pool:
            shares = pool.map(_enqueue_all, [driver] * producers, _deal(keys, producers))
            durations_ms = [d for share in shares for d in share]
    enqueued = time.perf_counter()
    deadline = time.monotonic() + DRAIN_TIMEOUT_S + DRAIN_TIMEOUT_PER_JOB_S * scenario.charges
    while (done := driver.finished() - finished_before) < scenario.charges:
        if time.monotonic() > deadline:
            raise BenchError(
                f"{variant} at {scenario.latency_ms:g} ms: only {done} of "
                f"{scenario.charges} finished before the timeout"
            )
        time.sleep(POLL_S)
    total_s = time.perf_counter() - started
    succeeded = driver.succeeded() - succeeded_before
    if succeeded != scenario.charges:
        raise BenchError(
            f"{variant} at {scenario.latency_ms:g} ms: {succeeded} of {scenario.charges} "
            "succeeded; the run is not a fair measurement"
        )
    return Result(
        variant,
        scenario.latency_ms,
        scenario.charges,
        enqueued - started,
        total_s,
        tuple(durations_ms),
    )


def _enqueue_all(driver: _Driver, keys: Sequence[str]) -> list[float]:
    """Enqueue one message per key, back to back; the duration of each call in ms."""
    durations_ms = []
    for key in keys:
        call_started = time.perf_counter()
        driver.enqueue(key)
        durations_ms.append((time.perf_counter() - call_started) * 1000)
    return durations_ms


def _deal(keys: Sequence[str], hands: int) -> list[Sequence[str]]:
    return [keys[i::hands] for i in range(hands)]


# -- printing ------------------------------------------------------------------------------


def _header(config: Config) -> str:
    runs = ", ".join(f"{s.charges} at {s.latency_ms:g} ms" for s in config.scenarios)
    return (
        f"== charges end to end ({runs}); workers: {config.shape.processes} processes x "
        f"{config.shape.threads} threads per variant; {config.producers} enqueueing "
        "thread(s); simulator in its own process; no call rate limit; naive HTTP client: "
        f"{config.naive_http}"
    )


def render(report: Report) -> str:
    """The figures as a table, then the ratios and the targets they are held against."""
    headers = ["latency", "variant", "jobs", "enqueue s", "total s", "jobs/s",
               "enq p50 ms", "enq p99 ms"]  # fmt: skip
    rows = [
        [
            f"{r.latency_ms:g} ms",
            str(r.variant),
            str(r.jobs),
            f"{r.enqueue_s:.2f}",
            f"{r.total_s:.2f}",
            f"{r.rate:.1f}",
            f"{r.enqueue_pct_ms(50):.2f}",
            f"{r.enqueue_pct_ms(99):.2f}",
        ]
        for r in sorted(
            report.results, key=lambda r: (r.latency_ms, list(Variant).index(r.variant))
        )
    ]
    lines = [report.machine, support.render_table(headers, rows, left=2), ""]
    lines.extend(_ratio_lines(report))
    lines.extend(["", *_cpu_lines(report)])
    return "\n".join(lines)


def _cpu_lines(report: Report) -> list[str]:
    """CPU per job by process group, and the share of the naive's that each variant's rate
    would be held to if the machine were CPU-bound (naive CPU per job / its own)."""
    results = sorted(report.results, key=lambda r: (r.latency_ms, list(Variant).index(r.variant)))
    groups = [g for g in cpu.ORDER if any(g in r.cpu_ms for r in results)]
    headers = ["latency", "variant", *groups, "total", "busy cores"]
    rows = [
        [
            f"{r.latency_ms:g} ms",
            str(r.variant),
            *(f"{r.cpu_ms.get(g, 0.0):.2f}" for g in groups),
            f"{r.cpu_total_ms:.2f}",
            f"{r.busy_cores:.2f}",
        ]
        for r in results
    ]
    lines = [
        "CPU per job (ms) over each drain, from /proc; postgresql and redis: local servers, "
        "all their work",
        support.render_table(headers, rows, left=2),
    ]
    for scenario in report.config.scenarios:
        orch = report.result(Variant.ORCHESTRATOR, scenario.latency_ms)
        naive = report.result(Variant.NAIVE, scenario.latency_ms)
        if orch.cpu_total_ms > 0:
            lines.append(
                f"{scenario.latency_ms:g} ms: naive/orchestrator CPU per job "
                f"{naive.cpu_total_ms / orch.cpu_total_ms:.2f} (the rate ratio's ceiling when "
                f"every core is busy); orchestrator busy {orch.busy_cores:.2f} of "
                f"{os.cpu_count()} cores"
            )
    return lines


def _ratio_lines(report: Report) -> list[str]:
    lines = []
    for scenario in report.config.scenarios:
        latency = scenario.latency_ms
        orch = report.result(Variant.ORCHESTRATOR, latency)
        vs_naive = orch.rate / report.result(Variant.NAIVE, latency).rate
        vs_noop = orch.rate / report.result(Variant.NOOP, latency).rate
        target = TARGET_SHARE_OF_NAIVE.get(latency)
        verdict = (
            "" if target is None else f"  (target >= {target:.2f}: {_verdict(vs_naive >= target)})"
        )
        lines.append(
            f"{latency:g} ms: orchestrator/naive {vs_naive:.2f}{verdict}   "
            f"orchestrator/noop {vs_noop:.2f}"
        )
    p99s = [report.result(Variant.ORCHESTRATOR, s.latency_ms).enqueue_pct_ms(99)
            for s in report.config.scenarios]  # fmt: skip
    worst = max(p99s)
    lines.append(
        f"orch.charge() p99: {_join_ms(p99s)}  "
        f"(target <= {TARGET_ENQUEUE_P99_MS:g} ms: {_verdict(worst <= TARGET_ENQUEUE_P99_MS)})"
    )
    return lines


def render_summary(reports: Sequence[Report]) -> str:
    """Median, lowest and highest of each ratio and of the enqueue p99 over the runs."""
    first = reports[0]
    lines = [f"== over {len(reports)} runs: median (lowest-highest)"]
    for scenario in first.config.scenarios:
        latency = scenario.latency_ms
        ratios = [
            r.result(Variant.ORCHESTRATOR, latency).rate / r.result(Variant.NAIVE, latency).rate
            for r in reports
        ]
        target = TARGET_SHARE_OF_NAIVE.get(latency)
        verdict = "" if target is None else f"  (target >= {target:.2f})"
        lines.append(f"{latency:g} ms: orchestrator/naive {_spread(ratios, '.2f')}{verdict}")
    for scenario in first.config.scenarios:
        p99s = [
            r.result(Variant.ORCHESTRATOR, scenario.latency_ms).enqueue_pct_ms(99) for r in reports
        ]
        lines.append(
            f"orch.charge() p99 at {scenario.latency_ms:g} ms: {_spread(p99s, '.2f')} ms  "
            f"(target <= {TARGET_ENQUEUE_P99_MS:g} ms)"
        )
    for scenario in first.config.scenarios:
        orchs = [r.result(Variant.ORCHESTRATOR, scenario.latency_ms) for r in reports]
        naives = [r.result(Variant.NAIVE, scenario.latency_ms) for r in reports]
        if all(o.cpu_total_ms > 0 for o in orchs):
            shares = [n.cpu_total_ms / o.cpu_total_ms for n, o in zip(naives, orchs, strict=True)]
            lines.append(
                f"CPU per job at {scenario.latency_ms:g} ms: orchestrator "
                f"{_spread([o.cpu_total_ms for o in orchs], '.2f')} ms (postgresql "
                f"{_spread([o.cpu_ms.get(cpu.POSTGRESQL, 0.0) for o in orchs], '.2f')}), naive "
                f"{_spread([n.cpu_total_ms for n in naives], '.2f')} ms; naive/orchestrator "
                f"{_spread(shares, '.2f')}"
            )
    return "\n".join(lines)


def _spread(values: Sequence[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _join_ms(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.2f} ms" for v in values)
