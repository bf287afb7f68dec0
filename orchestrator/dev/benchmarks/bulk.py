"""Accepting charges in bulk: ``orch.charge_many(items)`` beside as many ``orch.charge()`` calls.

In a throwaway database and a Redis namespace unique to the run (no workers: this measures
acceptance, not execution), from one thread:

* ``charge() x N``: N single calls back to back (each its own insert, its message handed to
  the background sender), then the wait until the sender has sent every message;
* ``charge_many(N)``: one call with N items (validation, one insert statement, the N
  messages handed over), then the same wait for the sender; three batches (``--repeat``
  more), the median reported (a shared 2-core machine varies by 20 % from run to run).

N is 10,000 (``--quick``: 1,000; ``--charges`` overrides). The singles go first and their
messages are all sent before the batch starts, so neither run pays for the other's sending.
Target: 10,000 charges accepted by ``charge_many`` in under 1 s.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
import uuid
from typing import Any

from orchestrator.api import Orchestrator
from orchestrator.dev.benchmarks import support
from orchestrator.dev.benchmarks.support import BenchError

DEFAULT_CHARGES = 10_000
QUICK_CHARGES = 1_000
WARMUP_CHARGES = 200
TARGET_S = 1.0
# charge_many batches measured (more with --repeat): the median is reported.
BATCHES = 3
TARGET_CHARGES = 10_000
SEND_TIMEOUT_S = 120.0


def _item(key: str) -> dict[str, Any]:
    return {
        "amount": 1000,
        "currency": "usd",
        "customer": "cus_bench",
        "payment_method": "pm_card_visa",
        "idempotency_key": key,
        "metadata": {"order": key},
    }


def _sent(orch: Orchestrator) -> float:
    """Seconds until the background sender has sent everything handed to it."""
    started = time.perf_counter()
    if not orch.dispatcher.flush(SEND_TIMEOUT_S):
        raise BenchError(f"messages still unsent after {SEND_TIMEOUT_S:.0f}s")
    return time.perf_counter() - started


def run(args: argparse.Namespace) -> None:
    n = args.charges or (QUICK_CHARGES if args.quick else DEFAULT_CHARGES)
    tag = uuid.uuid4().hex[:8]
    with (
        support.bench_world(args.database_url, args.redis_url, "bulk") as world,
        Orchestrator(world.settings) as orch,
        contextlib.closing(orch.broker),
    ):
        figures = _measure(orch, n, tag, max(args.repeat, BATCHES))
    _report(n, *figures)


def _measure(
    orch: Orchestrator, n: int, tag: str, batches: int
) -> tuple[float, float, list[float], float]:
    # Warm-up: connections, prepared statements, the sender thread.
    for i in range(WARMUP_CHARGES):
        orch.charge(1000, "usd", "cus_bench", "pm_card_visa", f"warm-{tag}-{i}")
    orch.charge_many([_item(f"warm-bulk-{tag}-{i}") for i in range(WARMUP_CHARGES)])
    _sent(orch)
    started = time.perf_counter()
    for i in range(n):
        orch.charge(1000, "usd", "cus_bench", "pm_card_visa", f"one-{tag}-{i}", {"order": "x"})
    singles_s = time.perf_counter() - started
    singles_sent_s = _sent(orch)
    bulk_runs: list[float] = []
    bulk_sent_s = 0.0
    for batch in range(batches):
        items = [_item(f"many-{tag}-{batch}-{i}") for i in range(n)]
        started = time.perf_counter()
        jobs = orch.charge_many(items)
        bulk_runs.append(time.perf_counter() - started)
        bulk_sent_s = _sent(orch)  # each batch is sent before the next starts
        if len(jobs) != n or len({j.id for j in jobs}) != n:
            raise BenchError(f"charge_many returned {len(jobs)} jobs for {n} items")
    return singles_s, singles_sent_s, bulk_runs, bulk_sent_s


def _report(
    n: int, singles_s: float, singles_sent_s: float, bulk_runs: list[float], bulk_sent_s: float
) -> None:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    bulk_s = statistics.median(bulk_runs)
    print(f"== bulk acceptance: {n} charges, one thread, no workers (load {load})")
    rows = [
        ["charge() x N", f"{singles_s:.3f}", f"{n / singles_s:,.0f}", f"{singles_sent_s:.3f}"],
        ["charge_many(N)", f"{bulk_s:.3f}", f"{n / bulk_s:,.0f}", f"{bulk_sent_s:.3f}"],
    ]
    headers = ["call", "accepted in s", "charges/s", "then all sent in s"]
    print(support.render_table(headers, rows))
    if len(bulk_runs) > 1:
        runs = ", ".join(f"{x:.3f}" for x in bulk_runs)
        print(f"charge_many: median of {len(bulk_runs)} batches ({runs} s)")
    print(f"charge_many is {singles_s / bulk_s:.1f}x faster than {n} single charge() calls")
    if n == TARGET_CHARGES:
        verdict = "met" if bulk_s < TARGET_S else "MISSED"
        print(f"target {TARGET_CHARGES} charges accepted in < {TARGET_S:g} s: {verdict}")
