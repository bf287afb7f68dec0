"""The ``web`` process: ASGI app with ``/healthz``, ``/metrics`` and ``POST /webhooks/stripe``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from orchestrator import webhooks
from orchestrator.api import Orchestrator
from orchestrator.breaker import BreakerCollector, SharedBreaker
from orchestrator.models import JobState
from orchestrator.ops_metrics import OpsCollector
from orchestrator.ops_web import ops_routes


class JobsCollector(Collector):
    """Jobs by state, read from PostgreSQL at scrape time (the truth, shared by all hosts)."""

    def __init__(self, orch: Orchestrator) -> None:
        self.orch = orch

    def collect(self) -> Any:
        gauge = GaugeMetricFamily("orchestrator_jobs", "Jobs by state", labels=["state"])
        counts = self.orch.store.count_by_state()
        for state in JobState:
            gauge.add_metric([str(state)], counts.get(str(state), 0))
        yield gauge


def create_app(orch: Orchestrator | None = None) -> Starlette:
    orchestrator = orch or Orchestrator.from_env()
    registry = CollectorRegistry()
    registry.register(JobsCollector(orchestrator))
    registry.register(OpsCollector(orchestrator))
    registry.register(BreakerCollector(SharedBreaker.from_settings(orchestrator.settings)))

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        if orch is None:  # built here, once per process: release its pool on shutdown
            orchestrator.close()

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/metrics", metrics),
            Route("/webhooks/stripe", webhooks.stripe_endpoint(orchestrator), methods=["POST"]),
            *ops_routes(orchestrator),
        ],
        lifespan=lifespan,
    )
