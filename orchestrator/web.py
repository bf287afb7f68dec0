"""The ``web`` process: ASGI app with ``/healthz`` (liveness: the process answers),
``/readyz`` (readiness: PostgreSQL and Redis answer), ``/metrics``, ``POST /webhooks/stripe``
and the ops routes."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from orchestrator.api import Orchestrator
from orchestrator.breaker import BreakerCollector, SharedBreaker
from orchestrator.db import Store
from orchestrator.maintenance.deadletters import recent_dead_letters
from orchestrator.models import JobState
from orchestrator.ops.health import READY_TIMEOUT_S, Readiness
from orchestrator.ops.heartbeats import FleetStatus, heartbeat_client
from orchestrator.ops.http import ops_routes
from orchestrator.ops.metrics import OpsCollector
from orchestrator.ops.service import Operations
from orchestrator.providers.stripe.webhooks import stripe_endpoint


class JobsCollector(Collector):
    """Jobs by state, read from PostgreSQL at scrape time (the truth, shared by all hosts)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Any:
        gauge = GaugeMetricFamily("orchestrator_jobs", "Jobs by state", labels=["state"])
        counts = self.store.count_by_state()
        for state in JobState:
            gauge.add_metric([str(state)], counts.get(str(state), 0))
        yield gauge


def create_app(orch: Orchestrator | None = None) -> Starlette:
    orchestrator = orch or Orchestrator.from_env()
    settings = orchestrator.settings
    # One shared breaker (and Redis pool) serves /metrics and /ops/api/breaker alike.
    breaker = SharedBreaker.from_settings(settings)
    registry = CollectorRegistry()
    registry.register(JobsCollector(orchestrator.store))
    registry.register(OpsCollector(orchestrator.store, orchestrator.ops_store, settings))
    registry.register(BreakerCollector(breaker))
    fleet = FleetStatus(settings)
    ops = ops_routes(
        Operations.from_orchestrator(orchestrator),
        token=settings.ops_token.get_secret_value() if settings.ops_token else None,
        breaker=breaker,
        dead_letters=functools.partial(recent_dead_letters, orchestrator),
        fleet=fleet,
    )
    ready_redis = heartbeat_client(settings.redis_url, READY_TIMEOUT_S)
    readiness = Readiness({"postgres": orchestrator.ops_store.now, "redis": ready_redis.ping})

    async def healthz(request: Request) -> Response:
        """Liveness: the process serves requests (nothing else is asked)."""
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        """Readiness: 200 when PostgreSQL and Redis each answer in time, else 503 naming which
        did not."""
        ok, answers = await readiness()
        return JSONResponse(answers, status_code=200 if ok else 503)

    def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        readiness.close()
        ready_redis.close()
        fleet.close()
        if orch is None:  # built here, once per process: release its pool on shutdown
            orchestrator.close()

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
            Route("/webhooks/stripe", stripe_endpoint(orchestrator), methods=["POST"]),
            *ops,
        ],
        lifespan=lifespan,
    )
