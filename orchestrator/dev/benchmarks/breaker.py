"""The breaker check's cost per call: one ``EVALSHA`` round trip to Redis on loopback.

Measured one call at a time from one thread (the latency every job attempt pays), for:

* ``PING (floor)``: the bare round trip, so a loaded machine shows as a slow floor;
* ``acquire (closed)``: the check before a provider call, token bucket included;
* ``record (success)``: reporting the call's end (window push, counters);
* ``acquire (open, denied)``: the check while the breaker is open;

with ``CALLS`` calls each (``--quick``: a tenth) after ``WARMUP_CALLS`` untimed ones, in a
namespace unique to the run. Target: p99 of the check at most 0.5 ms.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from collections.abc import Callable

from orchestrator.breaker import BreakerConfig, Permit, RedisBreaker, Signal, redis_client
from orchestrator.dev.benchmarks.support import flush_namespace, percentile, render_table

CALLS = 20_000
# Untimed calls first: script load (EVALSHA miss), connection setup, CPU caches.
WARMUP_CALLS = 500
# The bucket is configured high enough never to deny, so every check runs its full path.
BENCH_RATE_PER_S = 1e9
TARGET_P99_MS = 0.5
REDIS_TIMEOUT_S = 1.0


def _time(fn: Callable[[], object], calls: int) -> list[float]:
    for _ in range(WARMUP_CALLS):
        fn()
    samples: list[float] = []
    for _ in range(calls):
        started = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - started) / 1e6)
    return samples


def run(args: argparse.Namespace) -> None:
    calls = CALLS // 10 if args.quick else CALLS
    client = redis_client(args.redis_url, REDIS_TIMEOUT_S)
    namespace = f"bench-breaker-{uuid.uuid4().hex[:8]}"
    config = BreakerConfig(rate_limits={"stripe": BENCH_RATE_PER_S}, failure_threshold=1)
    breaker = RedisBreaker(client, config, namespace)
    permit = Permit("stripe", "allow", 0.0, "closed", "")
    try:
        rows: list[tuple[str, list[float]]] = [
            ("PING (floor)", _time(client.ping, calls)),
            ("acquire (closed)", _time(lambda: breaker.acquire("stripe"), calls)),
            ("record (success)", _time(lambda: breaker.record(permit, Signal.SUCCESS), calls)),
        ]
        breaker.record(permit, Signal.FAILURE)  # threshold 1: open for the cooldown (30 s)
        rows.append(("acquire (open, denied)", _time(lambda: breaker.acquire("stripe"), calls)))
    finally:
        flush_namespace(client, namespace)
        client.close()
    table = [
        [name, str(len(s)), *(f"{percentile(s, pct):.3f}" for pct in (50, 99, 99.9))]
        for name, s in rows
    ]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"breaker check on loopback Redis ({calls} calls each, one thread; load {load})")
    print(render_table(["call", "n", "p50 ms", "p99 ms", "p99.9 ms"], table))
    p99 = percentile(rows[1][1], 99)
    verdict = "met" if p99 <= TARGET_P99_MS else "MISSED"
    print(f"target p99 <= {TARGET_P99_MS} ms for the check: {verdict} ({p99:.3f} ms)")
