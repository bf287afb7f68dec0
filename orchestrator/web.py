"""The ``web`` process: ASGI app with ``/healthz`` (liveness: the process answers),
``/readyz`` (readiness: PostgreSQL, Redis and a broker of its own answer), ``/metrics``,
``POST /webhooks/stripe``, the ops routes (``/ops/``) and the app HTTP API (``/api/v1``)."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from orchestrator.api import Orchestrator
from orchestrator.app.http import api_routes
from orchestrator.breaker import SharedBreaker
from orchestrator.brokers import broker_ops
from orchestrator.maintenance.deadletters import recent_dead_letters
from orchestrator.ops.health import READY_TIMEOUT_S, Readiness
from orchestrator.ops.heartbeats import FleetStatus, heartbeat_client
from orchestrator.ops.http import ops_routes
from orchestrator.ops.metrics import metrics_endpoint, metrics_registry
from orchestrator.ops.service import Operations
from orchestrator.secrets.tokens import setting_token
from orchestrator.webhooks.ingest import webhook_routes


def create_app(orch: Orchestrator | None = None) -> Starlette:
    orchestrator = orch or Orchestrator.from_env()
    settings = orchestrator.settings
    # One shared breaker (and Redis pool) serves /metrics and /ops/api/breaker alike.
    breaker = SharedBreaker.from_settings(settings)
    registry = metrics_registry(orchestrator, breaker)
    # Tokens are read per request: a rotated reference or file applies without a restart.
    metrics_token = setting_token(settings, "metrics_token")
    # With ORCHESTRATOR_METRICS_BIND, /metrics is served only there (`orchestrator web` starts
    # that listener over app.state.metrics_registry): here it answers 404.
    metrics = (
        []
        if settings.metrics_bind
        else [Route("/metrics", metrics_endpoint(registry, metrics_token))]
    )
    fleet = FleetStatus(settings)
    sessions_redis = heartbeat_client(settings.redis_url)
    ops = ops_routes(
        Operations.from_orchestrator(orchestrator),
        token=setting_token(settings, "ops_token"),
        breaker=breaker,
        dead_letters=functools.partial(recent_dead_letters, orchestrator),
        fleet=fleet,
        # Dashboard sessions and sign-in counters (short timeouts: a silent Redis fails closed).
        redis_client=sessions_redis,
        namespace=settings.redis_namespace,
        public_url=settings.public_url,
        trusted_proxies=settings.trusted_proxies,
    )
    # The app HTTP API (/api/v1) for services in other languages: its own bearer token.
    app_api = api_routes(
        orchestrator,
        token=setting_token(settings, "api_token"),
    )
    ready_redis = heartbeat_client(settings.redis_url, READY_TIMEOUT_S)
    checks: dict[str, Callable[[], object]] = {
        "postgres": orchestrator.ops_store.now,
        "redis": ready_redis.ping,
    }
    ready_broker = None
    if settings.dramatiq_broker_url != settings.redis_url:  # a broker of its own: ask it too
        ready_broker = broker_ops(settings, READY_TIMEOUT_S)
        checks["broker"] = functools.partial(ready_broker.counts, settings.queue_name)
    readiness = Readiness(checks)

    async def healthz(request: Request) -> Response:
        """Liveness: the process serves requests (nothing else is asked)."""
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        """Readiness: 200 when PostgreSQL and Redis each answer in time, else 503 naming which
        did not."""
        ok, answers = await readiness()
        return JSONResponse(answers, status_code=200 if ok else 503)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        readiness.close()
        ready_redis.close()
        if ready_broker is not None:
            ready_broker.close()
        sessions_redis.close()
        fleet.close()
        if orch is None:  # built here, once per process: release its pool on shutdown
            orchestrator.close()

    app = Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            *metrics,
            *webhook_routes(orchestrator),
            *ops,
            *app_api,
        ],
        lifespan=lifespan,
    )
    app.state.metrics_registry = registry  # for the separate /metrics listener
    return app
