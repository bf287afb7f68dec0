"""Operator metrics for ``/metrics``, computed at scrape time from PostgreSQL and Redis.

Workers serve no HTTP, so counters kept in worker memory could not be scraped (and would
reset on every restart). Instead the ``web`` process reads the truth when scraped:

* ``orchestrator_attempts_recent{provider,outcome}``: attempts that finished in the last
  :data:`METRICS_WINDOW_S` (a gauge over a sliding window, not a counter: graph it as is);
* ``orchestrator_provider_latency_seconds{provider}``: a histogram of those attempts'
  ``job_attempts.duration_ms`` over the same window (so ``_count``/``_sum`` may go down);
* ``orchestrator_dlq_size``: jobs in ``dead``;
* ``orchestrator_queue_depth{queue}``: Redis ``LLEN`` of the dramatiq queue and its delay queue;
* ``orchestrator_broker_dead_letters``: messages in dramatiq's ``.XQ`` not yet reconciled;
* ``orchestrator_reconcile_actions_total{action}``: dead letters the clock reconciled, by action;
* ``orchestrator_ledger_drift{kind}``: drift between the ledger and the provider recorded in
  ``ledger_drift`` (by webhooks and audits), by kind (every kind, 0 when none).

A Redis failure leaves the Redis-backed metrics out of that scrape; it never fails the scrape.
(``orchestrator_breaker_state`` is the breaker's own collector, registered by ``web``.)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import redis
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from orchestrator.config import Settings
from orchestrator.db import OpsStore, Store
from orchestrator.logs import get_logger
from orchestrator.maintenance.deadletters import xq_keys
from orchestrator.ops.ledger import DriftKind

log = get_logger(__name__)

# Long enough to cover several scrape intervals, short enough to reflect the present.
METRICS_WINDOW_S = 300
# Provider call latency bucket upper bounds (ms): Stripe answers in 100 ms .. a few seconds.
LATENCY_BUCKETS_MS = (25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000)
# A scrape must not hang on Redis.
REDIS_TIMEOUT_S = 1.0


class OpsCollector(Collector):
    """Reads ``store`` and ``ops_store`` (PostgreSQL) and the queues named by ``settings``."""

    def __init__(self, store: Store, ops_store: OpsStore, settings: Settings) -> None:
        self.store = store
        self.ops_store = ops_store
        self.settings = settings
        self._redis = redis.Redis.from_url(
            settings.redis_url,
            socket_timeout=REDIS_TIMEOUT_S,
            socket_connect_timeout=REDIS_TIMEOUT_S,
        )

    def collect(self) -> Iterator[Metric]:
        ops_store = self.ops_store
        outcomes = ops_store.attempt_outcomes(METRICS_WINDOW_S)
        bounds = [b + 1 for b in LATENCY_BUCKETS_MS]  # see metrics_attempt_latency
        latency = ops_store.attempt_latency(METRICS_WINDOW_S, bounds)
        actions = ops_store.dead_letters_by_action()
        yield _outcomes(outcomes)
        yield from _latency(latency)
        dlq = GaugeMetricFamily("orchestrator_dlq_size", "Jobs in the dead state")
        dlq.add_metric([], self.store.count_by_state().get("dead", 0))
        yield dlq
        reconciled = CounterMetricFamily(
            "orchestrator_reconcile_actions",
            "Broker dead letters reconciled by the clock, by action",
            labels=["action"],
        )
        for action in ("redispatched", "none"):
            reconciled.add_metric([action], actions.get(action, 0))
        yield reconciled
        yield _drift(ops_store.drift_by_kind())
        yield from self._redis_metrics()

    def _redis_metrics(self) -> Iterator[Metric]:
        settings = self.settings
        queue = settings.queue_name
        names = [queue, f"{queue}.DQ"]
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.llen(f"{settings.redis_namespace}:{name}")
                pipe.zcard(xq_keys(settings.redis_namespace, queue)[0])
                results: list[Any] = pipe.execute()
        except redis.RedisError as exc:
            log.warning("metrics.redis_unavailable", error=type(exc).__name__)
            return
        depth = GaugeMetricFamily(
            "orchestrator_queue_depth", "Messages waiting in the dramatiq queue", labels=["queue"]
        )
        for name, n in zip(names, results, strict=False):
            depth.add_metric([name], int(n))
        yield depth
        xq = GaugeMetricFamily(
            "orchestrator_broker_dead_letters", "Messages in dramatiq's dead-letter set"
        )
        xq.add_metric([], int(results[-1]))
        yield xq


def _drift(by_kind: dict[str, int]) -> Metric:
    gauge = GaugeMetricFamily(
        "orchestrator_ledger_drift",
        "Recorded drift between the ledger and the provider (ledger_drift rows), by kind",
        labels=["kind"],
    )
    for kind in DriftKind:
        gauge.add_metric([str(kind)], by_kind.get(str(kind), 0))
    return gauge


def _outcomes(rows: list[dict[str, Any]]) -> Metric:
    gauge = GaugeMetricFamily(
        "orchestrator_attempts_recent",
        f"Provider attempts finished in the last {METRICS_WINDOW_S}s, by provider and outcome",
        labels=["provider", "outcome"],
    )
    for r in rows:
        gauge.add_metric([r["provider"], r["outcome"]], int(r["n"]))
    return gauge


def _latency(rows: list[dict[str, Any]]) -> Iterator[Metric]:
    by_provider: dict[str, dict[int, tuple[int, int]]] = {}
    for r in rows:
        by_provider.setdefault(r["provider"], {})[int(r["bucket"])] = (
            int(r["n"]),
            int(r["total_ms"] or 0),
        )
    family = HistogramMetricFamily(
        "orchestrator_provider_latency_seconds",
        f"Provider call duration over the last {METRICS_WINDOW_S}s (from job_attempts)",
        labels=["provider"],
    )
    for provider, buckets in sorted(by_provider.items()):
        cumulative = 0
        points: list[tuple[str, float]] = []
        for i, bound in enumerate(LATENCY_BUCKETS_MS):
            cumulative += buckets.get(i, (0, 0))[0]
            points.append((str(bound / 1000), cumulative))
        total = sum(n for n, _ in buckets.values())
        points.append(("+Inf", total))
        sum_s = sum(ms for _, ms in buckets.values()) / 1000
        family.add_metric([provider], points, sum_s)
    yield family
