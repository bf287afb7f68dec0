"""The ops HTTP surface of the ``web`` process: :func:`ops_routes` (every ``/ops`` route) and
the ``/ops/api/...`` JSON API; the ``/ops/`` dashboard's handlers are
:mod:`orchestrator.ops.dashboard_routes`'s, the token, session and client checks
:mod:`orchestrator.ops.auth`'s.

* The JSON API (and ``/ops/openapi.json``) wants ``Authorization: Bearer
  $ORCHESTRATOR_OPS_TOKEN``, compared in constant time. No token configured: every request
  is refused (401), never let through.
* The dashboard signs in with the same token and keeps a session cookie backed by Redis; see
  :mod:`orchestrator.ops.auth` for the cookie, the sign-in throttle and trusted proxies.
* Request bodies are JSON objects, read as a stream and refused (413) past
  :data:`~orchestrator.ops.surface.MAX_BODY_BYTES`; bulk replay handles at most
  :data:`HTTP_BULK_LIMIT` jobs per request.

The operator named in audit rows is ``http:<X-Ops-Actor header>`` (``http:ops-token`` without
it); the dashboard's is ``http:dashboard``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import redis
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from orchestrator.breaker import SharedBreaker
from orchestrator.config import parse_trusted_proxies
from orchestrator.errors import InvalidOperation, JobNotFound, OrchestratorError, ValidationError
from orchestrator.ops.auth import ClientInfo, LoginThrottle, OpsAuth, SessionStore
from orchestrator.ops.dashboard_routes import dashboard_routes
from orchestrator.ops.filters import JobFilter, actor_name
from orchestrator.ops.openapi import OPENAPI
from orchestrator.ops.service import Operations
from orchestrator.ops.surface import (
    CHART_WINDOW_S,
    MAX_BODY_BYTES,
    DeadLetters,
    Handler,
    Surface,
    breaker_states,
)
from orchestrator.secrets.tokens import Token
from orchestrator.webhooks.events import WebhookRejected
from orchestrator.webhooks.ingest import read_body

# Bulk replay over HTTP is bounded so one request ends well inside proxy timeouts.
HTTP_BULK_LIMIT = 200

# A JSON API handler: the request and its parsed JSON body ({} for a GET) -> the JSON answer.
ApiHandler = Callable[[Request, dict[str, Any]], Any]
# Live workers and the clock leader from their heartbeats (orchestrator.ops.heartbeats).
Fleet = Callable[[], dict[str, Any]]


def ops_routes(
    ops: Operations,
    *,
    token: Token,
    breaker: SharedBreaker,
    dead_letters: DeadLetters,
    fleet: Fleet | None = None,
    redis_client: redis.Redis | None = None,
    namespace: str = "orchestrator",
    public_url: str | None = None,
    trusted_proxies: str = "",
) -> list[BaseRoute]:
    """Every ``/ops`` route: ``ops`` acts, ``token`` authenticates (None: refuse everything),
    ``breaker`` reports the breakers' states, ``dead_letters`` lists the broker's, ``fleet``
    the processes' heartbeats. ``redis_client`` (keys under ``namespace``) holds dashboard
    sessions and sign-in counters (None: the dashboard refuses every sign-in, 503);
    ``public_url`` and ``trusted_proxies`` are ORCHESTRATOR_PUBLIC_URL and
    ORCHESTRATOR_TRUSTED_PROXIES."""
    auth = OpsAuth(token)
    api = _Api(ops, auth, breaker, dead_letters)
    # The JSON API: every handler behind the bearer check (api.guard), by method and path.
    api_get: dict[str, ApiHandler] = {
        "/ops/openapi.json": api.openapi,
        "/ops/api/counts": api.counts,
        "/ops/api/attempts": api.attempts,
        "/ops/api/breaker": api.breaker,
        "/ops/api/drift": api.drift,
        "/ops/api/jobs": api.jobs,
        "/ops/api/jobs/{job_id}": api.job,
        "/ops/api/dlq": api.dlq,
        "/ops/api/dlq/broker": api.broker_dead_letters,
        "/ops/api/dlq/{job_id}": api.job,
        "/ops/api/status": _fleet_status(fleet),
    }
    api_post: dict[str, ApiHandler] = {
        "/ops/api/dlq/replay": api.replay_bulk,
        "/ops/api/dlq/{job_id}/replay": api.replay,
        "/ops/api/dlq/{job_id}/discard": api.discard,
    }
    return [
        *(Route(path, api.guard(h), methods=["GET"]) for path, h in api_get.items()),
        *(Route(path, api.guard(h), methods=["POST"]) for path, h in api_post.items()),
        # The dashboard: a session cookie, and a CSRF token on every POST.
        *dashboard_routes(
            ops,
            auth,
            breaker,
            dead_letters,
            sessions=SessionStore(redis_client, namespace, auth),
            throttle=LoginThrottle(redis_client, namespace),
            clients=ClientInfo(parse_trusted_proxies(trusted_proxies), public_url),
        ),
    ]


# -- JSON API ------------------------------------------------------------------------------


def _fleet_status(fleet: Fleet | None) -> ApiHandler:
    """GET /ops/api/status: ``fleet()``, or 503 when Redis cannot say (or none is wired)."""

    def status(request: Request, body: dict[str, Any]) -> Any:
        if fleet is None:
            return _error(503, "process heartbeats are not configured")
        try:
            return fleet()
        except OrchestratorError as exc:
            return _error(503, str(exc))

    return status


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class _Api(Surface):
    def guard(self, handler: ApiHandler) -> Handler:
        """401 without the bearer token; errors mapped to 4xx; the handler runs in a thread."""

        async def endpoint(request: Request) -> Response:
            if not self.auth.bearer_ok(request):
                return JSONResponse(
                    {"error": "unauthorized"},
                    status_code=401,
                    headers={"WWW-Authenticate": 'Bearer realm="orchestrator-ops"'},
                )
            try:
                body = await _json_body(request) if request.method == "POST" else {}
                result = await run_in_threadpool(functools.partial(handler, request, body))
            except WebhookRejected as exc:  # a body over the cap: 413, read no further
                return _error(exc.status, exc.reason)
            except ValidationError as exc:
                return _error(400, str(exc))
            except JobNotFound as exc:
                return _error(404, str(exc))
            except InvalidOperation as exc:
                return _error(409, str(exc))
            return result if isinstance(result, Response) else JSONResponse(result)

        return endpoint

    def openapi(self, request: Request, body: dict[str, Any]) -> Any:
        return OPENAPI

    def counts(self, request: Request, body: dict[str, Any]) -> Any:
        return self.ops.counts().to_dict()

    def attempts(self, request: Request, body: dict[str, Any]) -> Any:
        window_s = _int_param(request, "window_s", CHART_WINDOW_S, 60, 7 * 24 * 3600)
        return {"window_s": window_s, "points": self.ops.attempts_per_minute(window_s)}

    def breaker(self, request: Request, body: dict[str, Any]) -> Any:
        return {"providers": breaker_states(self._breaker)}

    def drift(self, request: Request, body: dict[str, Any]) -> Any:
        return self.ops.drift(_limit(request))

    def jobs(self, request: Request, body: dict[str, Any]) -> Any:
        p = request.query_params
        flt = JobFilter.parse(
            state=p.get("state"),
            kind=p.get("kind"),
            provider=p.get("provider"),
            error_code=p.get("error_code"),
            created_after=p.get("since"),
            created_before=p.get("until"),
        )
        page = self.ops.list_jobs(flt, limit=_limit(request), cursor=p.get("cursor"))
        return page.to_dict()

    def dlq(self, request: Request, body: dict[str, Any]) -> Any:
        p = request.query_params
        flt = _dlq_filter(p)
        return self.ops.list_dead(flt, limit=_limit(request), cursor=p.get("cursor")).to_dict()

    def broker_dead_letters(self, request: Request, body: dict[str, Any]) -> Any:
        limit = _int_param(request, "limit", 50, 1, 500)
        return {"dead_letters": self._dead_letters(limit)}

    def job(self, request: Request, body: dict[str, Any]) -> Any:
        return self.ops.show(request.path_params["job_id"]).to_dict()

    def replay(self, request: Request, body: dict[str, Any]) -> Any:
        reason = _str_field(body, "reason")
        result = self.ops.replay(
            request.path_params["job_id"],
            _actor(request),
            reason=reason,
            accept_duplicate_risk=_flag(body, "accept_duplicate_risk"),
        )
        return result.to_dict()

    def discard(self, request: Request, body: dict[str, Any]) -> Any:
        reason = _str_field(body, "reason") or ""
        force = _flag(body, "force")
        job = self.ops.discard(request.path_params["job_id"], _actor(request), reason, force=force)
        return job.to_dict()

    def replay_bulk(self, request: Request, body: dict[str, Any]) -> Any:
        flt = _dlq_filter(
            {
                k: v
                for k in ("kind", "provider", "error_code", "since", "until")
                if (v := _str_field(body, k))
            }
        )
        limit = body.get("limit", HTTP_BULK_LIMIT)
        if (
            isinstance(limit, bool)
            or not isinstance(limit, int)
            or not 1 <= limit <= HTTP_BULK_LIMIT
        ):
            raise ValidationError(f"limit must be an integer from 1 to {HTTP_BULK_LIMIT}")
        dry_run = body.get("dry_run", False)
        if not isinstance(dry_run, bool):
            raise ValidationError("dry_run must be a boolean")
        rate_per_s = body.get("rate_per_s")
        if rate_per_s is not None and (
            isinstance(rate_per_s, bool) or not isinstance(rate_per_s, int | float)
        ):
            raise ValidationError("rate_per_s must be a number")
        report = self.ops.replay_matching(
            flt,
            _actor(request),
            rate_per_s=float(rate_per_s) if rate_per_s is not None else None,
            dry_run=dry_run,
            limit=limit,
            reason=_str_field(body, "reason"),
            accept_duplicate_risk=_flag(body, "accept_duplicate_risk"),
        )
        return report.to_dict()


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise ValidationError(f"{name} must be a boolean")
    return value


async def _json_body(request: Request) -> dict[str, Any]:
    """The JSON object of a request body, read as a stream and refused (413) past the cap."""
    raw = await read_body(request, MAX_BODY_BYTES)
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):  # digits past Python's int cap included
        raise ValidationError("request body must be JSON") from None
    except RecursionError:  # nesting deeper than the parser follows
        raise ValidationError("request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise ValidationError("request body must be a JSON object")
    return body


def _str_field(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError(f"{name} must be a string")
    return value


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationError(f"{name} must be an integer") from None
    if not low <= value <= high:
        raise ValidationError(f"{name} must be from {low} to {high}")
    return value


def _limit(request: Request) -> int:
    return _int_param(request, "limit", 50, 1, 500)


def _dlq_filter(p: Any) -> JobFilter:
    return JobFilter.parse(
        kind=p.get("kind"),
        provider=p.get("provider"),
        error_code=p.get("error_code"),
        created_after=p.get("since"),
        created_before=p.get("until"),
    )


def _actor(request: Request) -> str:
    name = request.headers.get("x-ops-actor", "").strip() or "ops-token"
    return actor_name(f"http:{name}"[:200])
