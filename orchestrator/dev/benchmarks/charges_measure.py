"""Measuring charges end to end (the report is printed by
:mod:`orchestrator.dev.benchmarks.charges`).

For each provider latency (the simulator at 0 ms and 50 ms) and each variant, the driver
starts the variant's dramatiq workers (real processes, the same shape for every variant),
waits until they fetch and have drained a warm-up round, then enqueues N messages as fast as
it can from one thread and measures from the first enqueue to the moment a count (polled
every 50 ms) shows all N finished:

* ``orchestrator``: ``Orchestrator.charge()`` then ``python -m dramatiq actors``; finished
  means a terminal job state in PostgreSQL (all must be ``succeeded``);
* ``floor``: the naive call between the least any durable job writes: the driver inserts a
  bare row (one commit with the WAL flush) and enqueues, the actor claims the row before the
  call and settles it after (two asynchronous commits), as the orchestrator commits a keyed
  provider's job, without its schema or client code. What a design that records a job before
  the call and its outcome after can reach on this machine;
* ``naive``: a plain actor making the same stripe SDK call with an idempotency key, nothing
  persisted (:mod:`orchestrator.dev.benchmarks.baseline_actors`);
* ``noop``: an actor doing nothing, the floor set by dramatiq and Redis.

Finished baselines are counted with a Redis ``INCR``. Enqueue latency is the duration of
each ``orch.charge()`` call (and of each insert plus ``broker.enqueue()`` for the
baselines).

Around each drain the CPU time of every process involved is read from ``/proc``
(:mod:`orchestrator.dev.benchmarks.cpu`) and printed per job: the driver, the workers, the
simulator, PostgreSQL and Redis. When the machine is busy the rates follow these sums, so
the table says which process a variant's extra CPU went to.
"""

from __future__ import annotations

import contextlib
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
import psycopg
import redis
from dramatiq.brokers.redis import RedisBroker

from orchestrator.api import Orchestrator
from orchestrator.broker import HEARTBEAT_TIMEOUT_MS, MAINTENANCE_CHANCE
from orchestrator.config import load_settings
from orchestrator.db.bench import count_floor_settled, create_floor_table, floor_insert
from orchestrator.dev.benchmarks import cpu, support
from orchestrator.dev.benchmarks.support import BenchError, WorkerShape
from orchestrator.dev.simulator import SimulatorControl
from orchestrator.models import JobState

# The contract with baseline_actors (which imports these; this module never imports it).
NAMESPACE_ENV = "BENCH_REDIS_NAMESPACE"
QUEUE_ENV = "BENCH_QUEUE"
NAIVE_HTTP_ENV = "BENCH_NAIVE_HTTP"  # "sdk" or "orchestrator" (--naive-http)
NAIVE_ACTOR = "bench_naive_charge"
FLOOR_ACTOR = "bench_floor_charge"
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

TERMINAL_STATES = frozenset(s.value for s in JobState if s.is_terminal)


def done_key(namespace: str) -> str:
    """The Redis counter the baseline actors increment once per finished message."""
    return f"{namespace}:bench:done"


class Variant(StrEnum):
    ORCHESTRATOR = "orchestrator"
    FLOOR = "floor"
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


# -- measuring ---------------------------------------------------------------------------


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
    worker_env.update(
        {NAMESPACE_ENV: namespace, QUEUE_ENV: BASELINE_QUEUE, NAIVE_HTTP_ENV: env.config.naive_http}
    )
    if variant is Variant.FLOOR:
        with _floor_driver(env, namespace) as driver:
            worker_env["DATABASE_URL"] = env.database_url
            yield driver, BASELINE_MODULE, worker_env
        return
    actor = NAIVE_ACTOR if variant is Variant.NAIVE else NOOP_ACTOR
    with _baseline_driver(env, namespace, actor) as driver:
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
    finished = _done_count(env, namespace)
    with _baseline_broker(env, namespace) as broker:

        def enqueue(key: str) -> None:
            args = (
                (AMOUNT_MINOR_UNITS, CURRENCY, PAYMENT_METHOD, key) if actor == NAIVE_ACTOR else ()
            )
            broker.enqueue(_message(actor, args))

        yield _Driver(enqueue, finished, finished, _broker_id(broker))


@contextmanager
def _floor_driver(env: _Env, namespace: str) -> Iterator[_Driver]:
    """Insert the bare row (a commit with the WAL flush), then enqueue its charge."""
    finished = _done_count(env, namespace)
    with (
        psycopg.connect(env.database_url, autocommit=True) as conn,
        _baseline_broker(env, namespace) as broker,
    ):
        create_floor_table(conn)

        def enqueue(key: str) -> None:
            job_id = floor_insert(conn, key)
            args = (AMOUNT_MINOR_UNITS, CURRENCY, PAYMENT_METHOD, key, job_id)
            broker.enqueue(_message(FLOOR_ACTOR, args))

        # Succeeded: settled in PostgreSQL, not only counted by the actor.
        yield _Driver(enqueue, finished, lambda: count_floor_settled(conn), _broker_id(broker))


def _done_count(env: _Env, namespace: str) -> Callable[[], int]:
    """How many messages the baseline actors finished (their Redis counter)."""
    counter = done_key(namespace)
    return lambda: int(env.redis.get(counter) or 0)


@contextmanager
def _baseline_broker(env: _Env, namespace: str) -> Iterator[RedisBroker]:
    broker = RedisBroker(  # type: ignore[no-untyped-call]
        url=env.config.redis_url,
        namespace=namespace,
        heartbeat_timeout=HEARTBEAT_TIMEOUT_MS,
        maintenance_chance=MAINTENANCE_CHANCE,
    )
    try:
        yield broker
    finally:
        broker.close()


def _message(actor: str, args: tuple[Any, ...]) -> dramatiq.Message[Any]:
    return dramatiq.Message(
        queue_name=BASELINE_QUEUE, actor_name=actor, args=args, kwargs={}, options={}
    )


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
