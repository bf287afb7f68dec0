"""The ``web`` process: an ASGI app with ``/healthz`` and ``/metrics``."""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from orchestrator.api import Orchestrator
from orchestrator.models import JobState


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

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[Route("/healthz", healthz), Route("/metrics", metrics)])
