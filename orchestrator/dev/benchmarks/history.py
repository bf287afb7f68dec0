"""History does not slow the present: the same operations on an empty ``jobs`` table and
beside N finished jobs.

In a throwaway database and a Redis namespace unique to the run (no workers, no provider:
nothing here calls out), from one thread, twice: first with no history, then after loading N
finished jobs (10,000,000; ``--quick``: 200,000; ``--charges`` overrides). Each time, over the
same small present (a hundred dead jobs with recent attempts, then what the operations
themselves enqueue):

* enqueue: ``orch.charge()`` p50/p99 over 1,000 calls (after 200 to warm up);
* claim: ``Store.claim`` p50/p99 over 1,000 pending jobs, as a worker claims (keyed provider);
* clock: one ``Clock(orch).run_once()`` pass, median of 5 (the audit is off: it calls Stripe);
* dlq list: ``Operations.list_dead(JobFilter(), limit=50)``, the first page, median of 20;
* scrape: ``generate_latest(metrics_registry(orch))``, the whole ``/metrics``, median of 10;
* counts: ``Operations.counts()``, what the dashboard and ``/ops/api/counts`` show, median
  of 10 (and, for comparison only, ``Store.count_by_state``, the count of every job they
  used to read, median of 3);

and, for each, the shared buffers (hit + read) its SQL touches, from ``EXPLAIN (ANALYZE,
BUFFERS)`` of the named queries it runs (modifying ones in a transaction rolled back): those
show whether the cost grows with history, whatever the timing noise of a shared machine.
Target: every operation within 20 % of its cost on the empty table (ratio <= 1.20).

The history is generated in PostgreSQL (``INSERT ... SELECT generate_series``, in chunks)
with the triggers off (``session_replication_role = replica``: no outbox, no FK checks) and
the secondary indexes dropped and rebuilt after, as a bulk load would: charges spread over a
year up to an hour ago, 90 % succeeded (with ``provider_ref``), 7 % failed, 3 % cancelled, one
in 4,000 dead;
their transitions (created, claimed, settled); one attempt each for the jobs inside the
attempt retention window (older ones the clock has deleted by then); then VACUUM ANALYZE,
what autovacuum does after such a load, and a CHECKPOINT, so that the load's writes are
not flushed while the second run measures.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
import redis
from prometheus_client import generate_latest
from psycopg.types.json import Jsonb

from orchestrator.api import Orchestrator
from orchestrator.config import Settings
from orchestrator.db.bench import (
    SEED_PRESENT,
    Load,
    buffers,
    execute,
    load_history,
)
from orchestrator.dev.benchmarks import support
from orchestrator.dev.benchmarks.support import BenchError
from orchestrator.maintenance import BATCH_LIMIT
from orchestrator.maintenance.clock import Clock
from orchestrator.maintenance.schedule import lead_s
from orchestrator.models import LIVE_STATES, JobState
from orchestrator.ops.filters import JobFilter, decode_cursor
from orchestrator.ops.metrics import (
    LATENCY_BUCKETS_MS,
    METRICS_WINDOW_S,
    metrics_registry,
)
from orchestrator.ops.service import Operations

DEFAULT_HISTORY = 10_000_000
QUICK_HISTORY = 200_000
ENQUEUE_CALLS = 1_000
WARMUP_CALLS = 200
CLAIMS = 1_000
CLOCK_PASSES = 5
DLQ_LISTS = 20
DLQ_PAGE = 50
SCRAPES = 10
COUNTS = 10
FULL_COUNTS = 3
TARGET_RATIO = 1.20
# The present, in both runs: dead jobs in the DLQ, each with an attempt inside the metrics window.
LIVE_DEAD = 100
SEND_TIMEOUT_S = 120.0

OPERATIONS = ("enqueue", "claim", "clock", "dlq list", "scrape", "counts")
# Timed beside the operations for comparison, with no target: the full count by state.
FULL_COUNT = "count_by_state"


# -- figures ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Phase:
    """One run's timings (ms) by operation and the shared buffers of each query by name."""

    timings: dict[str, list[float]] = field(default_factory=dict)
    buffers: dict[str, int] = field(default_factory=dict)


# Which named queries each operation runs (their buffers summed as the operation's).
OPERATION_QUERIES: dict[str, tuple[str, ...]] = {
    "enqueue": ("insert_job",),
    "claim": ("claim_job",),
    "clock": (
        "expire_leases",
        "dispatch_due",
        "next_scheduled_due",
        "due_for_dispatch",
        "delete_old_attempts",
        "stale_webhook_events",
        "delete_old_webhook_events",
        "take_settlements",
    ),
    "dlq list": ("ops_list_dead",),
    "scrape": (
        "metrics_live_jobs",
        "metrics_dlq_size",
        "metrics_settled_totals",
        "metrics_attempt_outcomes",
        "metrics_attempt_latency",
        "broker_dead_letters_by_action",
        "ledger_drift_by_kind",
    ),
    "counts": ("metrics_live_jobs", "metrics_settled_totals"),
}


def run(args: argparse.Namespace) -> None:
    n = args.charges or (QUICK_HISTORY if args.quick else DEFAULT_HISTORY)
    # The audit lists Stripe's objects: no provider here.
    with support.bench_world(
        args.database_url, args.redis_url, "history", audit_interval_s=0
    ) as world:
        settings, url = world.settings, world.settings.database_url
        machine = support.machine_summary(url, world.client)
        empty = _phase(settings, "empty")
        _clear(url, world.client, world.namespace)
        print(f"== history: loading {n:,} finished jobs ...", flush=True)
        load = load_history(url, n, settings.attempt_retention_days)
        full = _phase(settings, "full")
    print(render(n, empty, full, load, machine))


# -- one run over the present ------------------------------------------------------------------


def _phase(settings: Settings, tag: str) -> Phase:
    phase = Phase()
    with Orchestrator(settings) as orch, contextlib.closing(orch.broker):
        execute(settings.database_url, SEED_PRESENT, {"tag": tag, "n": LIVE_DEAD})
        execute(settings.database_url, "ANALYZE jobs; ANALYZE job_attempts")
        phase.timings["enqueue"] = _enqueue(orch, tag)
        phase.timings["claim"] = _claims(orch, tag)
        # Statistics that know the present (what autovacuum's analyze would soon say).
        execute(settings.database_url, "ANALYZE jobs; ANALYZE job_attempts")
        clock = Clock(orch)
        phase.timings["clock"] = _repeat(clock.run_once, CLOCK_PASSES)
        ops = Operations.from_orchestrator(orch)
        phase.timings["dlq list"] = _repeat(
            lambda: _first_page(ops.list_dead(JobFilter(), limit=DLQ_PAGE).jobs), DLQ_LISTS
        )
        registry = metrics_registry(orch)
        phase.timings["scrape"] = _repeat(lambda: generate_latest(registry), SCRAPES)
        phase.timings["counts"] = _repeat(ops.counts, COUNTS)
        phase.timings[FULL_COUNT] = _repeat(orch.store.count_by_state, FULL_COUNTS)
        probe = orch.charge(1000, "usd", "cus_bench", "pm_card_visa", f"probe-{tag}")
        if not orch.dispatcher.flush(SEND_TIMEOUT_S):
            raise BenchError(f"messages still unsent after {SEND_TIMEOUT_S:.0f}s")
        phase.buffers = _all_buffers(orch, probe.id, tag)
    return phase


def _first_page(jobs: Sequence[object]) -> None:
    if len(jobs) != DLQ_PAGE:
        raise BenchError(f"the DLQ's first page has {len(jobs)} jobs, expected {DLQ_PAGE}")


def _repeat(call: Callable[[], object], times: int) -> list[float]:
    call()  # warm-up: connections, prepared statements, caches
    timings = []
    for _ in range(times):
        started = time.perf_counter()
        call()
        timings.append((time.perf_counter() - started) * 1000)
    return timings


def _enqueue(orch: Orchestrator, tag: str) -> list[float]:
    for i in range(WARMUP_CALLS):
        orch.charge(1000, "usd", "cus_bench", "pm_card_visa", f"warm-{tag}-{i}")
    if not orch.dispatcher.flush(SEND_TIMEOUT_S):
        raise BenchError(f"messages still unsent after {SEND_TIMEOUT_S:.0f}s")
    timings = []
    for i in range(ENQUEUE_CALLS):
        key = f"one-{tag}-{i}"
        started = time.perf_counter()
        orch.charge(1000, "usd", "cus_bench", "pm_card_visa", key, {"order": key})
        timings.append((time.perf_counter() - started) * 1000)
    if not orch.dispatcher.flush(SEND_TIMEOUT_S):
        raise BenchError(f"messages still unsent after {SEND_TIMEOUT_S:.0f}s")
    return timings


def _claims(orch: Orchestrator, tag: str) -> list[float]:
    items = [
        {
            "amount": 1000,
            "currency": "usd",
            "customer": "cus_bench",
            "payment_method": "pm_card_visa",
            "idempotency_key": f"claim-{tag}-{i}",
        }
        for i in range(CLAIMS + WARMUP_CALLS)
    ]
    jobs = orch.charge_many(items)
    if not orch.dispatcher.flush(SEND_TIMEOUT_S):
        raise BenchError(f"messages still unsent after {SEND_TIMEOUT_S:.0f}s")
    owner = f"worker:bench-history:{tag}"
    lease_s = orch.settings.lease_s
    timings = []
    for i, job in enumerate(jobs):
        started = time.perf_counter()
        row = orch.store.claim(job.id, owner, lease_s, ("stripe",))
        elapsed = (time.perf_counter() - started) * 1000
        if row is None or row["state"] != JobState.RUNNING:
            raise BenchError(f"claim of pending job {job.id} returned {row and row['state']}")
        if i >= WARMUP_CALLS:
            timings.append(elapsed)
    return timings


# -- buffers ---------------------------------------------------------------------------------


def _query_args(orch: Orchestrator, probe_id: str, tag: str) -> dict[str, dict[str, Any]]:
    """Each measured query with the arguments its operation passes."""
    settings = orch.settings
    cursor_at, cursor_id = decode_cursor(None)
    grace_s = settings.dispatch_grace_s
    return {
        "insert_job": {
            "kind": "charge",
            "provider": "stripe",
            "idempotency_key": f"explain-{tag}",
            "fingerprint": "0" * 64,
            "amount": 1000,
            "currency": "usd",
            "customer": "cus_bench",
            "payment_method": "pm_card_visa",
            "parent_job_id": None,
            "params": Jsonb({"metadata": {"order": "x"}}),
            "max_attempts": settings.max_attempts,
            "horizon_s": settings.retry_horizon_s,
            "changed_by": "api",
        },
        "claim_job": {
            "id": probe_id,
            "owner": "worker:explain",
            "lease_s": settings.lease_s,
            "keyed_providers": ["stripe"],
        },
        "expire_leases": {"owner": "clock:explain", "limit": BATCH_LIMIT},
        "dispatch_due": {"limit": BATCH_LIMIT, "lead_s": lead_s(settings.broker_delay_window_s)},
        "next_scheduled_due": {},
        "due_for_dispatch": {"grace_s": grace_s, "limit": BATCH_LIMIT},
        "delete_old_attempts": {"days": settings.attempt_retention_days, "limit": BATCH_LIMIT},
        "stale_webhook_events": {"grace_s": grace_s, "limit": BATCH_LIMIT},
        "delete_old_webhook_events": {
            "days": settings.event_retention_days,
            "limit": BATCH_LIMIT,
        },
        "take_settlements": {"limit": BATCH_LIMIT},
        "ops_list_dead": {
            **JobFilter(state=JobState.DEAD).args(),
            "cursor_created_at": cursor_at,
            "cursor_id": cursor_id,
            "limit": DLQ_PAGE + 1,
        },
        "metrics_live_jobs": {"states": [str(s) for s in LIVE_STATES]},
        "metrics_dlq_size": {},
        "metrics_settled_totals": {},
        "metrics_attempt_outcomes": {"window_s": METRICS_WINDOW_S},
        "metrics_attempt_latency": {
            "window_s": METRICS_WINDOW_S,
            "bounds_ms": [b + 1 for b in LATENCY_BUCKETS_MS],
        },
        "broker_dead_letters_by_action": {},
        "ledger_drift_by_kind": {},
    }


def _all_buffers(orch: Orchestrator, probe_id: str, tag: str) -> dict[str, int]:
    args = _query_args(orch, probe_id, tag)
    with psycopg.connect(orch.settings.database_url) as conn:
        return {name: buffers(conn, name, args[name]) for name in args}


# -- the history -------------------------------------------------------------------------------


def _clear(url: str, client: redis.Redis, namespace: str) -> None:
    """Back to empty: the first run's jobs (and all that points at them) and its messages."""
    execute(
        url,
        "TRUNCATE jobs, job_transitions, job_attempts, job_settlements, job_settled_totals,"
        " operator_actions, webhook_events CASCADE",
    )
    support.flush_namespace(client, namespace)


# -- report ------------------------------------------------------------------------------------


def _figure(timings: list[float], how: str) -> float:
    if how == "p50":
        return support.percentile(timings, 50)
    if how == "p99":
        return support.percentile(timings, 99)
    return statistics.median(timings)


ROWS: tuple[tuple[str, str, str], ...] = (
    ("enqueue", "p50", "enqueue: orch.charge() p50"),
    ("enqueue", "p99", "enqueue: orch.charge() p99"),
    ("claim", "p50", "claim: Store.claim p50"),
    ("claim", "p99", "claim: Store.claim p99"),
    ("clock", "median", f"clock: run_once() median of {CLOCK_PASSES}"),
    ("dlq list", "median", f"dlq list: first page of {DLQ_PAGE}, median of {DLQ_LISTS}"),
    ("scrape", "median", f"scrape: /metrics, median of {SCRAPES}"),
    ("counts", "median", f"counts: dashboard and /ops/api/counts, median of {COUNTS}"),
)


def _verdict(ratio: float) -> str:
    return "ok" if ratio <= TARGET_RATIO else "OVER"


def _mb(size: int) -> str:
    return f"{size / 2**20:,.0f} MB"


def operation_buffers(phase: Phase, operation: str) -> int:
    return sum(phase.buffers[name] for name in OPERATION_QUERIES[operation])


def render(n: int, empty: Phase, full: Phase, load: Load, machine: str) -> str:
    load_avg = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        f"== history: the present beside {n:,} finished jobs, one thread (load {load_avg})",
        machine,
        f"history loaded in {load.total_s:.1f}s (insert {load.insert_s:.1f}s, secondary indexes"
        f" {load.index_s:.1f}s, vacuum analyze and checkpoint {load.vacuum_s:.1f}s)",
    ]
    size_rows = [
        [name, f"{tuples:,}", _mb(heap), _mb(indexes), _mb(total)]
        for name, tuples, heap, indexes, total in load.sizes
    ]
    lines.append(support.render_table(["table", "rows", "heap", "indexes", "total"], size_rows))
    lines.append("")
    rows = []
    over = 0
    for operation, how, label in ROWS:
        before, after = (
            _figure(empty.timings[operation], how),
            _figure(full.timings[operation], how),
        )
        # Judged as printed: a ratio shown as 1.20 is within the target, never "1.20 OVER".
        ratio = round(after / before, 2)
        over += ratio > TARGET_RATIO
        b_before, b_after = operation_buffers(empty, operation), operation_buffers(full, operation)
        rows.append(
            [
                label,
                f"{before:.3f}",
                f"{after:.3f}",
                f"{ratio:.2f}",
                _verdict(ratio),
                str(b_before),
                str(b_after),
            ]
        )
    headers = ["operation", "empty ms", f"with {n:,} ms", "ratio", "verdict", "buf empty", "buf N"]
    lines.append(support.render_table(headers, rows))
    full_count = (
        _figure(empty.timings[FULL_COUNT], "median"),
        _figure(full.timings[FULL_COUNT], "median"),
    )
    lines.append(
        f"for comparison, no target: Store.count_by_state (every job), median of {FULL_COUNTS}:"
        f" {full_count[0]:.3f} ms empty, {full_count[1]:.3f} ms with {n:,}"
    )
    lines.append("")
    lines.append("shared buffers (hit + read) by query, EXPLAIN (ANALYZE, BUFFERS):")
    detail = [
        [f"{operation}: {name}", str(empty.buffers[name]), str(full.buffers[name])]
        for operation, names in OPERATION_QUERIES.items()
        for name in names
    ]
    lines.append(support.render_table(["query", "empty", f"with {n:,}"], detail))
    verdict = "met" if not over else f"MISSED ({over} of {len(ROWS)} over)"
    lines.append(
        f"target: every operation within {TARGET_RATIO:.2f}x of its cost on the empty table:"
        f" {verdict}"
    )
    return "\n".join(lines)


__all__ = ["OPERATIONS", "Load", "Phase", "load_history", "render", "run"]
