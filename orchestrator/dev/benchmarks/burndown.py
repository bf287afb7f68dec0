"""A burn-down, River's benchmark shape: N jobs inserted up front, then workers started and
timed until the queue is empty, with no-op work; the orchestrator beside bare dramatiq.

River's ``river bench --num-total-jobs N`` inserts N jobs in batches (``InsertMany``, a COPY)
before its client starts, counts jobs completed from the start and reports jobs/s over the
time to the last one. Here, in one run on the same machine, with the same worker processes
and threads for both (``--processes``, ``--threads``; the charges benchmark's defaults):

* ``orchestrator``: N charges accepted with ``orch.charge_many`` in batches of 10,000, one
  thread, their messages sent by the orchestrator's background sender as in production
  (a committed job is handed to it; the clock is not running and not needed). The insert
  rate counts until every message is in Redis. Then ``python -m dramatiq`` with the
  production actors, whose provider answers ``succeeded`` at once, no HTTP
  (:mod:`orchestrator.dev.benchmarks.burndown_workers`); done means no job left in a live
  state (the ``/metrics`` count), all N ``succeeded``.
* ``dramatiq``: N messages to an actor that does nothing, on the same Redis with the same
  broker options, enqueued with dramatiq's own enqueue script, 10,000 to a pipeline, before
  the workers start; done means every message acked. No PostgreSQL.

The clock starts when every worker process is fetching (their boot, mostly imports, is
reported apart): jobs/s counts the jobs finished from then to the end. Progress comes from
the queue's message hash in Redis (dramatiq deletes a message from it when it acks, after the
actor returned, so for the orchestrator after the settle committed), an O(1) read every
0.1 s; PostgreSQL is asked only once that hash is empty. As in River, nothing happens between
the insert and the start (no VACUUM, no CHECKPOINT): the drain pays for what the load left.

The PostgreSQL rows written (``pg_stat_user_tables``) and WAL bytes of each phase are printed
per job: where the orchestrator's work goes, next to the rate.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import current_millis

from orchestrator.api import Orchestrator
from orchestrator.broker import HEARTBEAT_TIMEOUT_MS, MAINTENANCE_CHANCE
from orchestrator.db.bench import Writes, writes
from orchestrator.dev.benchmarks import support
from orchestrator.dev.benchmarks.support import BenchError, WorkerShape, World
from orchestrator.models import JobState

DEFAULT_JOBS = 1_000_000
QUICK_JOBS = 20_000
# Jobs per charge_many call and messages per Redis pipeline: the bulk benchmark's batch
# (River inserts 5,000 a batch).
INSERT_BATCH = 10_000
# Progress is read this often while messages remain; PostgreSQL is polled this often once the
# queue is empty (a few in-flight jobs at most: a cheap count), so the end is seen promptly.
POLL_S = 0.1
END_POLL_S = 0.02
# A progress line at every tenth of the jobs, or after this long without one.
PROGRESS_SHARE = 0.1
PROGRESS_EVERY_S = 30.0
# No job finished for this long: stuck, not slow.
STALL_S = 120.0
# The sender hands 1,000,000 messages to Redis one by one: minutes, not hours.
SEND_TIMEOUT_S = 1800.0
# Table statistics are read until two reads this far apart agree (at most STATS_SETTLE_S).
STATS_POLL_S = 0.25
STATS_SETTLE_S = 10.0

# The contract with burndown_workers (which imports these; this module never imports it).
WORKER_MODULE = "orchestrator.dev.benchmarks.burndown_workers"
VARIANT_ENV = "BENCH_BURNDOWN_VARIANT"
NAMESPACE_ENV = "BENCH_REDIS_NAMESPACE"
BARE_QUEUE = "burndown"
BARE_ACTOR = "bench_burndown_noop"

AMOUNT_MINOR_UNITS = 1000
CURRENCY = "usd"
CUSTOMER = "cus_bench"
PAYMENT_METHOD = "pm_card_visa"


class Variant(StrEnum):
    ORCHESTRATOR = "orchestrator"
    DRAMATIQ = "dramatiq"


@dataclass(frozen=True, slots=True)
class Result:
    """One variant: its insert, its workers' boot and its drain."""

    variant: Variant
    jobs: int
    accepted_s: float  # the insert calls alone (charge_many; the pipelines for dramatiq)
    insert_s: float  # until every message was in Redis
    boot_s: float  # worker processes started to all of them fetching
    drain_s: float  # all fetching to the last job finished
    drained: int  # jobs finished during drain_s (the rest finished while the workers booted)
    insert_writes: Writes | None = None  # PostgreSQL, orchestrator only
    drain_writes: Writes | None = None

    @property
    def insert_rate(self) -> float:
        return self.jobs / self.insert_s

    @property
    def rate(self) -> float:
        """Jobs per second while every worker process was running."""
        return self.drained / self.drain_s

    @property
    def launch_rate(self) -> float:
        """Jobs per second from the start of the worker processes, their boot included."""
        return self.jobs / (self.boot_s + self.drain_s)


@dataclass(frozen=True, slots=True)
class Report:
    jobs: int
    shape: WorkerShape
    machine: str
    results: tuple[Result, ...]

    def result(self, variant: Variant) -> Result:
        return next(r for r in self.results if r.variant is variant)


# -- entry point ---------------------------------------------------------------------------


def run(args: argparse.Namespace) -> None:
    """Measure both variants and print the figures (the registry's entry point)."""
    jobs = args.jobs or (QUICK_JOBS if args.quick else DEFAULT_JOBS)
    shape = WorkerShape(args.processes, args.threads)
    print(_header(jobs, shape), flush=True)
    print(render(measure(args.database_url, args.redis_url, jobs, shape)), flush=True)


def measure(database_url: str, redis_url: str, jobs: int, shape: WorkerShape) -> Report:
    """Both variants against a fresh database and namespace, removed afterwards."""
    with (
        tempfile.TemporaryDirectory(prefix="orchestrator-bench-") as tmp,
        support.bench_world(database_url, redis_url, "burndown", rate_limits="") as world,
    ):
        machine = support.machine_summary(world.settings.database_url, world.client)
        log_dir = Path(tmp)
        orchestrator = _orchestrator(world, jobs, shape, log_dir)
        bare = _bare(world, jobs, shape, log_dir)
    return Report(jobs, shape, machine, (orchestrator, bare))


# -- the orchestrator ----------------------------------------------------------------------


def _orchestrator(world: World, jobs: int, shape: WorkerShape, log_dir: Path) -> Result:
    settings = world.settings
    url = settings.database_url
    messages = _Messages(world.client, world.namespace, settings.queue_name)
    before_insert = _reported_writes(url)
    with Orchestrator(settings) as orch, contextlib.closing(orch.broker):
        accepted_s, insert_s = _insert_charges(orch, jobs, messages)
        driver_id = _broker_id(orch)
    # The inserting connections are closed: everything they wrote is in the statistics.
    before_drain = _reported_writes(url)
    if messages.left() != jobs:
        raise BenchError(f"orchestrator: {messages.left()} messages queued for {jobs} jobs")
    env = {
        VARIANT_ENV: Variant.ORCHESTRATOR.value,
        "DATABASE_URL": url,
        "REDIS_URL": settings.redis_url,
        "ORCHESTRATOR_REDIS_NAMESPACE": world.namespace,
        "ORCHESTRATOR_QUEUE": settings.queue_name,
        "ORCHESTRATOR_LOG_LEVEL": "warning",
        "ORCHESTRATOR_LOG_FORMAT": "json",
        # Stripe's live-mode call limit (100/s) would measure the limiter, not the work.
        "ORCHESTRATOR_RATE_LIMITS": "",
        "STRIPE_API_KEY": support.BENCH_STRIPE_KEY,
    }
    with Orchestrator(settings) as orch, contextlib.closing(orch.broker):

        def live() -> int:
            return sum(orch.ops_store.live_jobs_by_state().values())

        boot_s, drain_s, drained = _drain(
            Variant.ORCHESTRATOR, world, env, shape, log_dir, messages, jobs, driver_id, live
        )
        by_state = orch.store.count_by_state()
    if by_state != {JobState.SUCCEEDED.value: jobs}:
        raise BenchError(f"orchestrator: jobs by state {by_state}, expected {jobs} succeeded")
    # The workers have exited: their statistics are all reported now.
    after_drain = _reported_writes(url)
    return Result(
        Variant.ORCHESTRATOR,
        jobs,
        accepted_s,
        insert_s,
        boot_s,
        drain_s,
        drained,
        before_drain.since(before_insert),
        after_drain.since(before_drain),
    )


def _reported_writes(url: str) -> Writes:
    """:func:`writes` once the backends that wrote have reported: a backend reports its
    counts as it exits (or at most once a second while it lives), so after the writers closed
    their connections the counts stop moving within moments."""
    last = writes(url)
    deadline = time.monotonic() + STATS_SETTLE_S
    while time.monotonic() < deadline:
        time.sleep(STATS_POLL_S)
        now = writes(url)
        if now.tables == last.tables:
            return now
        last = now
    return last


def _insert_charges(orch: Orchestrator, jobs: int, messages: _Messages) -> tuple[float, float]:
    """charge_many in batches from one thread; (seconds in the calls, seconds until the
    background sender had sent every message)."""
    tag = uuid.uuid4().hex[:8]
    marks = _Marks(jobs, "inserted")
    accepted_s = 0.0
    started = time.perf_counter()
    for first in range(0, jobs, INSERT_BATCH):
        items = [
            {
                "amount": AMOUNT_MINOR_UNITS,
                "currency": CURRENCY,
                "customer": CUSTOMER,
                "payment_method": PAYMENT_METHOD,
                "idempotency_key": f"burndown-{tag}-{i}",
            }
            for i in range(first, min(first + INSERT_BATCH, jobs))
        ]
        call_started = time.perf_counter()
        created = orch.charge_many(items)
        accepted_s += time.perf_counter() - call_started
        if len(created) != len(items):
            raise BenchError(f"charge_many returned {len(created)} jobs for {len(items)} items")
        done = first + len(items)
        marks.report(
            Variant.ORCHESTRATOR,
            done,
            time.perf_counter() - started,
            f"; {messages.left():,} messages in Redis",
        )
    if not orch.dispatcher.flush(SEND_TIMEOUT_S):
        raise BenchError(f"orchestrator: messages still unsent after {SEND_TIMEOUT_S:.0f}s")
    return accepted_s, time.perf_counter() - started


def _broker_id(orch: Orchestrator) -> str:
    """The driver's broker id, which joins the namespace's heartbeats when it enqueues."""
    if not isinstance(orch.broker, RedisBroker):
        raise BenchError("the burn-down benchmark needs dramatiq's Redis broker")
    return str(orch.broker.broker_id)


# -- bare dramatiq -------------------------------------------------------------------------


def _bare(world: World, jobs: int, shape: WorkerShape, log_dir: Path) -> Result:
    # Under the world's namespace, so bench_world deletes its keys too.
    namespace = f"{world.namespace}-bare"
    broker = RedisBroker(  # type: ignore[no-untyped-call]
        url=world.settings.redis_url,
        namespace=namespace,
        heartbeat_timeout=HEARTBEAT_TIMEOUT_MS,
        maintenance_chance=MAINTENANCE_CHANCE,
    )
    progress = _Messages(world.client, namespace, BARE_QUEUE)
    try:
        started = time.perf_counter()
        _enqueue_bare(broker, jobs, progress)
        insert_s = time.perf_counter() - started
        if progress.left() != jobs or world.client.llen(progress.queue_key) != jobs:
            raise BenchError(f"dramatiq: {progress.left()} messages queued for {jobs}")
        env = {
            VARIANT_ENV: Variant.DRAMATIQ.value,
            "REDIS_URL": world.settings.redis_url,
            NAMESPACE_ENV: namespace,
        }
        boot_s, drain_s, drained = _drain(
            Variant.DRAMATIQ,
            world,
            env,
            shape,
            log_dir,
            progress,
            jobs,
            str(broker.broker_id),
            lambda: 0,
        )
    finally:
        broker.close()
    return Result(Variant.DRAMATIQ, jobs, insert_s, insert_s, boot_s, drain_s, drained)


def _enqueue_bare(broker: RedisBroker, jobs: int, progress: _Messages) -> None:
    """``broker.enqueue`` for each message, batched: dramatiq's own dispatch script (the same
    Redis writes, ``hset`` of the body and ``rpush`` of the id) called on a pipeline, 10,000
    messages a round trip. The arguments follow the script's header (dispatch.lua)."""
    script = broker.scripts["dispatch"]
    keys = [broker.namespace]
    marks = _Marks(jobs, "enqueued")
    started = time.perf_counter()
    for first in range(0, jobs, INSERT_BATCH):
        count = min(INSERT_BATCH, jobs - first)
        with broker.client.pipeline(transaction=False) as pipe:
            for _ in range(count):
                message_id = str(uuid.uuid4())
                message: dramatiq.Message[Any] = dramatiq.Message(
                    queue_name=BARE_QUEUE,
                    actor_name=BARE_ACTOR,
                    args=(),
                    kwargs={},
                    options={"redis_message_id": message_id},
                )
                args = [
                    "enqueue",
                    current_millis(),
                    BARE_QUEUE,
                    broker.broker_id,
                    broker.heartbeat_timeout,
                    broker.dead_message_ttl,
                    0,  # no maintenance: nothing is dead yet
                    0,  # max_unpack_size: only fetch reads it
                    message_id,
                    message.encode(),
                ]
                script(keys=keys, args=args, client=pipe)
            pipe.execute()
        marks.report(
            Variant.DRAMATIQ,
            first + count,
            time.perf_counter() - started,
            f"; {progress.left():,} messages in Redis",
        )


# -- the drain -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Messages:
    """A queue's messages not acked yet: dramatiq keeps each one's body in ``<queue>.msgs``
    (and ``<queue>.DQ.msgs`` while delayed) from enqueue to ack, so their sizes, two O(1)
    reads, say how many jobs are still to finish."""

    client: redis.Redis
    namespace: str
    queue: str

    @property
    def queue_key(self) -> str:
        return f"{self.namespace}:{self.queue}"

    def left(self) -> int:
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hlen(f"{self.queue_key}.msgs")
            pipe.hlen(f"{self.queue_key}.DQ.msgs")
            sizes: list[int] = pipe.execute()
        return sum(sizes)


class _Marks:
    """Prints a progress line at each tenth of ``total`` or every 30 s, whichever is first."""

    def __init__(self, total: int, verb: str) -> None:
        self.total = total
        self.verb = verb
        self.step = max(1, int(total * PROGRESS_SHARE))
        self.next = self.step
        self.last_at = 0.0
        self.last_done = 0

    def report(self, variant: Variant, done: int, elapsed_s: float, extra: str = "") -> None:
        if done < self.next and elapsed_s - self.last_at < PROGRESS_EVERY_S:
            return
        interval = elapsed_s - self.last_at
        recent = (done - self.last_done) / interval if interval > 0 else 0.0
        print(
            f"   {variant}: {self.verb} {done:,} of {self.total:,} in {elapsed_s:.1f}s "
            f"({recent:,.0f}/s since the last line){extra}",
            flush=True,
        )
        self.next = (done // self.step + 1) * self.step
        self.last_at, self.last_done = elapsed_s, done


def _drain(
    variant: Variant,
    world: World,
    env: dict[str, str],
    shape: WorkerShape,
    log_dir: Path,
    messages: _Messages,
    jobs: int,
    driver_broker_id: str,
    live_jobs: Callable[[], int],
) -> tuple[float, float, int]:
    """Start the workers on the queue already full; (boot s, drain s, jobs drained in it)."""
    log_path = log_dir / f"workers-{variant}.log"
    launched = time.perf_counter()
    with support.worker_processes(WORKER_MODULE, env, shape, log_path) as proc:
        support.wait_for_workers(
            proc, world.client, messages.namespace, shape.processes, {driver_broker_id}
        )
        ready = time.perf_counter()
        finished_at, drained = _wait_empty(variant, proc, messages, jobs, ready, live_jobs)
    return ready - launched, finished_at - ready, drained


def _wait_empty(
    variant: Variant,
    proc: support.Process,
    messages: _Messages,
    jobs: int,
    ready: float,
    live_jobs: Callable[[], int],
) -> tuple[float, int]:
    """Poll until no message is left and no job is live; (when, jobs finished since ready)."""
    at_ready = jobs - messages.left()
    marks = _Marks(jobs, "finished")
    marks.next = (at_ready // marks.step + 1) * marks.step
    last_done, last_change = at_ready, ready
    while True:
        left = messages.left()
        now = time.perf_counter()
        done = jobs - left
        if left == 0 and live_jobs() == 0:
            return now, jobs - at_ready
        marks.report(variant, done, now - ready)
        if done != last_done:
            last_done, last_change = done, now
        elif now - last_change > STALL_S:
            raise BenchError(
                f"{variant}: {done:,} of {jobs:,} finished, none for {STALL_S:.0f}s; {proc.tail()}"
            )
        if proc.popen.poll() is not None:
            raise BenchError(
                f"{variant}: workers exited with {proc.popen.returncode}; {proc.tail()}"
            )
        time.sleep(POLL_S if left else END_POLL_S)


# -- printing ------------------------------------------------------------------------------


def _header(jobs: int, shape: WorkerShape) -> str:
    return (
        f"== burn-down: {jobs:,} jobs inserted, then drained by {shape.processes} processes x "
        f"{shape.threads} threads per variant; no-op work (orchestrator: a provider answering "
        f"succeeded at once; dramatiq: an empty actor); one run, same machine (load {_load()})"
    )


def _load() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def render(report: Report) -> str:
    """The figures as a table, the ratio, and what PostgreSQL wrote per job."""
    headers = ["variant", "jobs", "insert s", "inserted/s", "boot s", "drain s", "jobs/s",
               "incl. boot jobs/s"]  # fmt: skip
    rows = [
        [
            str(r.variant),
            f"{r.jobs:,}",
            f"{r.insert_s:.1f}",
            f"{r.insert_rate:,.0f}",
            f"{r.boot_s:.1f}",
            f"{r.drain_s:.1f}",
            f"{r.rate:,.0f}",
            f"{r.launch_rate:,.0f}",
        ]
        for r in report.results
    ]
    orch = report.result(Variant.ORCHESTRATOR)
    bare = report.result(Variant.DRAMATIQ)
    lines = [
        f"{report.machine}; load at the end {_load()}",
        support.render_table(headers, rows),
        "",
        f"orchestrator/dramatiq: {orch.rate / bare.rate:.2f} "
        f"({orch.rate:,.0f} vs {bare.rate:,.0f} jobs/s)",
        f"insert: charge_many x {INSERT_BATCH:,} accepted {orch.jobs:,} in {orch.accepted_s:.1f}s "
        f"({orch.jobs / orch.accepted_s:,.0f}/s), every message in Redis after "
        f"{orch.insert_s:.1f}s; dramatiq's enqueue, {INSERT_BATCH:,} a pipeline: "
        f"{bare.insert_s:.1f}s ({bare.insert_rate:,.0f}/s)",
    ]
    for phase, written, seconds in (
        ("insert", orch.insert_writes, orch.insert_s),
        ("drain", orch.drain_writes, orch.drain_s),
    ):
        if written is not None:
            lines.append(_writes_line(phase, written, orch.jobs, seconds))
    return "\n".join(lines)


def _writes_line(phase: str, written: Writes, jobs: int, seconds: float) -> str:
    """``PostgreSQL, drain: 6.0 rows/job (jobs 2 upd, ...), 12,345 rows/s, 3.1 kB WAL/job``."""
    parts = []
    for name, (ins, upd, hot, dele) in sorted(written.tables.items()):
        kinds = [
            f"{count / jobs:.2g} {what}"
            for count, what in ((ins, "ins"), (upd, "upd"), (dele, "del"))
            if count
        ]
        if upd:
            kinds.append(f"{hot / upd:.0%} HOT")
        parts.append(f"{name} {' '.join(kinds)}")
    return (
        f"PostgreSQL, {phase}: {written.rows / jobs:.1f} rows/job ({'; '.join(parts)}), "
        f"{written.rows / seconds:,.0f} rows/s, {written.wal_bytes / jobs / 1024:.1f} kB WAL/job"
    )


__all__ = ["DEFAULT_JOBS", "QUICK_JOBS", "Report", "Result", "Variant", "measure", "render", "run"]
