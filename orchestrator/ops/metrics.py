"""Operator metrics for ``/metrics``, computed at scrape time from PostgreSQL and Redis.

Workers serve no HTTP, so counters kept in worker memory could not be scraped (and would
reset on every restart). Instead the ``web`` process reads the truth when scraped:

* ``orchestrator_attempts_recent{provider,outcome}``: attempts that finished in the last
  :data:`METRICS_WINDOW_S` (a gauge over a sliding window, not a counter: graph it as is);
* ``orchestrator_provider_latency_seconds{provider}``: a histogram of those attempts'
  ``job_attempts.duration_ms`` over the same window (so ``_count``/``_sum`` may go down);
* ``orchestrator_jobs{state}``: jobs in each live state
  (:data:`~orchestrator.models.LIVE_STATES`, ``dead`` included); settled jobs are counted
  by the next family, never by scanning their rows;
* ``orchestrator_jobs_settled_total{kind,provider,state}``: settles ever (a counter), from
  ``job_settled_totals`` plus the ``job_settlements`` outbox not drained yet;
* ``orchestrator_dlq_size``: jobs in ``dead`` (over the DLQ's partial index);
* ``orchestrator_queue_depth{queue}``: messages waiting in the dramatiq queue and its delay
  queue, on whichever broker (Redis ``LLEN``; RabbitMQ's ready count, from a passive declare);
* ``orchestrator_broker_dead_letters``: messages in dramatiq's ``.XQ`` not yet reconciled;
* ``orchestrator_reconcile_actions_total{action}``: dead letters the clock reconciled, by action;
* ``orchestrator_ledger_drift{kind}``: drift between the ledger and the provider recorded in
  ``ledger_drift`` (by webhooks and audits), by kind (every kind, 0 when none).

Job rows are kept forever, so no scrape reads them in bulk: each PostgreSQL read costs what
is live (live jobs, the DLQ, the outbox backlog, a recent window), whatever the history.
A broker failure leaves the broker-backed metrics out of that scrape; it never fails the scrape.
(``orchestrator_breaker_state`` is the breaker's own collector.) :func:`metrics_registry`
gathers them all; :func:`metrics_endpoint` serves it (behind ``ORCHESTRATOR_METRICS_TOKEN``
when set), on the ``web`` app or on its own listener (``ORCHESTRATOR_METRICS_BIND``,
:class:`MetricsServer`).
"""

from __future__ import annotations

import contextlib
import hmac
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from orchestrator.breaker import BreakerCollector, SharedBreaker
from orchestrator.brokers import BrokerOps, BrokerUnavailable, broker_ops
from orchestrator.config import Settings
from orchestrator.db import OpsStore
from orchestrator.errors import OrchestratorError
from orchestrator.logs import get_logger
from orchestrator.ops.ledger import DriftKind
from orchestrator.secrets.tokens import Token, token_reader

if TYPE_CHECKING:
    from orchestrator.api import Orchestrator

log = get_logger(__name__)

# Long enough to cover several scrape intervals, short enough to reflect the present.
METRICS_WINDOW_S = 300
# Provider call latency bucket upper bounds (ms): Stripe answers in 100 ms .. a few seconds.
LATENCY_BUCKETS_MS = (25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000)
# A scrape must not hang on the broker.
REDIS_TIMEOUT_S = 1.0
# How long `orchestrator web` waits for its separate /metrics listener to come up.
METRICS_SERVER_START_S = 10.0


class JobsCollector(Collector):
    """Live jobs by state and settles ever, read from PostgreSQL at scrape time (the truth,
    shared by all hosts); neither read grows with the number of settled jobs."""

    def __init__(self, ops_store: OpsStore) -> None:
        self.ops_store = ops_store

    def collect(self) -> Iterator[Metric]:
        live = self.ops_store.live_jobs_by_state()
        gauge = GaugeMetricFamily(
            "orchestrator_jobs", "Jobs in each live (not settled) state", labels=["state"]
        )
        for state, n in live.items():
            gauge.add_metric([state], n)
        yield gauge
        settled = CounterMetricFamily(
            "orchestrator_jobs_settled",
            "Jobs settled (moved into succeeded, failed, dead or cancelled), by kind, provider"
            " and state; a replayed job that settles again counts again",
            labels=["kind", "provider", "state"],
        )
        for r in self.ops_store.settled_totals():
            settled.add_metric([r["kind"], r["provider"], r["state"]], int(r["n"]))
        yield settled


class OpsCollector(Collector):
    """Reads ``ops_store`` (PostgreSQL) and the queues named by ``settings`` (the broker)."""

    def __init__(self, ops_store: OpsStore, settings: Settings) -> None:
        self.ops_store = ops_store
        self.settings = settings
        self._broker: BrokerOps = broker_ops(settings, REDIS_TIMEOUT_S)

    def collect(self) -> Iterator[Metric]:
        ops_store = self.ops_store
        outcomes = ops_store.attempt_outcomes(METRICS_WINDOW_S)
        bounds = [b + 1 for b in LATENCY_BUCKETS_MS]  # see metrics_attempt_latency
        latency = ops_store.attempt_latency(METRICS_WINDOW_S, bounds)
        actions = ops_store.dead_letters_by_action()
        yield _outcomes(outcomes)
        yield from _latency(latency)
        dlq = GaugeMetricFamily("orchestrator_dlq_size", "Jobs in the dead state")
        dlq.add_metric([], ops_store.dlq_size())
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
        yield from self._broker_metrics()

    def _broker_metrics(self) -> Iterator[Metric]:
        queue = self.settings.queue_name
        try:
            counts = self._broker.counts(queue)
        except BrokerUnavailable as exc:
            log.warning("metrics.broker_unavailable", broker=self._broker.kind, error=str(exc))
            return
        depth = GaugeMetricFamily(
            "orchestrator_queue_depth", "Messages waiting in the dramatiq queue", labels=["queue"]
        )
        depth.add_metric([queue], counts.queued)
        depth.add_metric([f"{queue}.DQ"], counts.delayed)
        yield depth
        xq = GaugeMetricFamily(
            "orchestrator_broker_dead_letters", "Messages in dramatiq's dead-letter queue"
        )
        xq.add_metric([], counts.dead)
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


# -- the registry and where it is served ----------------------------------------------------


def metrics_registry(
    orchestrator: Orchestrator, breaker: SharedBreaker | None = None
) -> CollectorRegistry:
    """Every family of ``/metrics``, each exactly once: jobs, operator series, breakers.
    ``breaker`` is the web process's shared one (a new one from the settings when None)."""
    settings = orchestrator.settings
    registry = CollectorRegistry()
    registry.register(JobsCollector(orchestrator.ops_store))
    registry.register(OpsCollector(orchestrator.ops_store, settings))
    registry.register(BreakerCollector(breaker or SharedBreaker.from_settings(settings)))
    return registry


def metrics_endpoint(registry: CollectorRegistry, token: Token) -> Callable[[Request], Response]:
    """The ``GET /metrics`` handler (sync: Starlette runs it in a thread, off the event loop).
    With ``token``, a scrape must carry ``Authorization: Bearer <token>`` (compared in
    constant time) or gets 401 before anything is read."""
    read_token = token_reader(token)  # per scrape: a rotated token applies at once

    def metrics(request: Request) -> Response:
        expected = read_token()
        if expected is not None and not _bearer_ok(request, expected):
            return Response(
                "unauthorized\n",
                status_code=401,
                media_type="text/plain",
                headers={"WWW-Authenticate": 'Bearer realm="orchestrator-metrics"'},
            )
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return metrics


def _bearer_ok(request: Request, expected: bytes) -> bool:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return False
    # The header may hold any character: compare UTF-8 bytes (compare_digest refuses non-ASCII).
    return hmac.compare_digest(value.strip().encode("utf-8", "replace"), expected)


def metrics_app(registry: CollectorRegistry, token: Token) -> Starlette:
    """``/metrics`` alone, for its own listener (ORCHESTRATOR_METRICS_BIND)."""
    return Starlette(routes=[Route("/metrics", metrics_endpoint(registry, token))])


class MetricsServer:
    """``/metrics`` on its own ``host:port``: a uvicorn server in a daemon thread of the ``web``
    process (prometheus_client's own server cannot check a bearer token)."""

    def __init__(self, app: Starlette, host: str, port: int) -> None:
        import uvicorn

        config = uvicorn.Config(
            app, host=host, port=port, log_config=None, access_log=False, lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="metrics-http", daemon=True)
        self.host = host
        self._asked = port

    def _run(self) -> None:
        # uvicorn exits (SystemExit) when it cannot listen: start() reports that instead.
        with contextlib.suppress(SystemExit):
            self._server.run()

    @property
    def port(self) -> int:
        """The port listened on (the one asked for, or the one picked for port 0)."""
        port: int = self._server.servers[0].sockets[0].getsockname()[1]
        return port

    def start(self, timeout_s: float = METRICS_SERVER_START_S) -> MetricsServer:
        """Listen, or raise OrchestratorError (e.g. the address is taken)."""
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started and self._thread.is_alive():
            if time.monotonic() > deadline:
                self.stop()
                break
            time.sleep(0.02)
        if not self._server.started:
            where = f"{self.host}:{self._asked}"
            raise OrchestratorError(f"/metrics could not listen on {where} (see the log)")
        log.info("metrics.listening", host=self.host, port=self.port)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=10)


def serve_metrics(registry: CollectorRegistry, host: str, port: int, token: Token) -> MetricsServer:
    """Start ``/metrics`` on ``host:port`` (stop it with ``.stop()``)."""
    return MetricsServer(metrics_app(registry, token), host, port).start()
