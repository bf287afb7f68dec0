"""The ops HTTP surface of the ``web`` process: ``/ops/api/...`` JSON, ``/ops/`` dashboard.

Authentication
--------------
* The JSON API (and ``/ops/openapi.json``) wants ``Authorization: Bearer
  $ORCHESTRATOR_OPS_TOKEN``, compared in constant time. No token configured: every request
  is refused (401), never let through.
* The dashboard logs in with the same token through a form. The cookie holds a session
  derived from the token (``<issued>.<HMAC(token, issued)>``), never the token itself; it is
  ``HttpOnly``, ``SameSite=Strict`` and expires after :data:`SESSION_TTL_S`. Rotating the token
  ends every session. Every dashboard POST also carries a per-session CSRF token (an HMAC of
  the session), so a cross-site form cannot act even where SameSite is not enforced.

The operator named in audit rows is ``http:<X-Ops-Actor header>`` (``http:ops-token`` without
it); the dashboard's is ``http:dashboard``.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import html
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from orchestrator.breaker import PROVIDERS, SharedBreaker
from orchestrator.errors import InvalidOperation, JobNotFound, OrchestratorError, ValidationError
from orchestrator.logs import get_logger
from orchestrator.ops.dashboard import render_dashboard
from orchestrator.ops.filters import JobFilter, actor_name
from orchestrator.ops.openapi import OPENAPI
from orchestrator.ops.service import Operations
from orchestrator.webhooks.events import WebhookRejected
from orchestrator.webhooks.ingest import read_body

log = get_logger(__name__)

SESSION_COOKIE = "orchestrator_ops_session"
# A dashboard session lasts one working day; logging in again is cheap.
SESSION_TTL_S = 8 * 3600
# A cookie issued this far in the future (clock skew between web hosts) is still accepted.
SESSION_SKEW_S = 60
# Bulk replay over HTTP is bounded so one request ends well inside proxy timeouts.
HTTP_BULK_LIMIT = 200
# The dashboard's chart covers the last hour, one point per minute.
CHART_WINDOW_S = 3600
MAX_BODY_BYTES = 64 * 1024
DASHBOARD_ACTOR = "http:dashboard"
# The dashboard shows this many of the newest ledger drift rows.
DASHBOARD_DRIFT_ROWS = 20

Handler = Callable[[Request], Awaitable[Response]]
# A JSON API handler: the request and its parsed JSON body ({} for a GET) -> the JSON answer.
ApiHandler = Callable[[Request, dict[str, Any]], Any]
# The broker's dead letters, newest first, at most the given number (JSON-ready).
DeadLetters = Callable[[int], list[dict[str, Any]]]
# Live workers and the clock leader from their heartbeats (orchestrator.ops.heartbeats).
Fleet = Callable[[], dict[str, Any]]


class OpsAuth:
    """Bearer checks, dashboard sessions and CSRF tokens, all keyed on the ops token."""

    def __init__(self, token: str | None, now: Callable[[], float] = time.time) -> None:
        self._token = token.encode() if token else None
        self._now = now

    def bearer_ok(self, request: Request) -> bool:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if self._token is None or scheme.lower() != "bearer" or not value.strip():
            return False
        return hmac.compare_digest(value.strip().encode(), self._token)

    def token_ok(self, candidate: str) -> bool:
        if self._token is None or not candidate:
            return False
        return hmac.compare_digest(candidate.encode(), self._token)

    def _sign(self, purpose: str, value: str) -> str:
        assert self._token is not None
        return hmac.new(self._token, f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()

    def new_session(self) -> str:
        issued = str(int(self._now()))
        return f"{issued}.{self._sign('ops-session', issued)}"

    def session_ok(self, cookie: str | None) -> bool:
        if self._token is None or not cookie:
            return False
        issued, _, sig = cookie.partition(".")
        if (
            not issued.isascii()
            or not issued.isdigit()
            or not _same(sig, self._sign("ops-session", issued))
        ):
            return False
        age_s = self._now() - int(issued)
        return -SESSION_SKEW_S <= age_s <= SESSION_TTL_S

    def csrf_for(self, cookie: str) -> str:
        return self._sign("ops-csrf", cookie)[:32]

    def csrf_ok(self, cookie: str, candidate: str) -> bool:
        return bool(candidate) and _same(candidate, self.csrf_for(cookie))


def _same(candidate: str, expected: str) -> bool:
    """Constant-time comparison of text from a client, which may hold any character
    (hmac.compare_digest refuses non-ASCII str: compare the UTF-8 bytes)."""
    return hmac.compare_digest(candidate.encode("utf-8", "replace"), expected.encode())


class _Surface:
    """What the JSON API and the dashboard both serve from."""

    def __init__(
        self, ops: Operations, auth: OpsAuth, breaker: SharedBreaker, dead_letters: DeadLetters
    ) -> None:
        self.ops = ops
        self.auth = auth
        self._breaker = breaker
        self._dead_letters = dead_letters


def ops_routes(
    ops: Operations,
    *,
    token: str | None,
    breaker: SharedBreaker,
    dead_letters: DeadLetters,
    fleet: Fleet | None = None,
) -> list[BaseRoute]:
    """Every ``/ops`` route: ``ops`` acts, ``token`` authenticates (None: refuse everything),
    ``breaker`` reports the breakers' states, ``dead_letters`` lists the broker's, ``fleet``
    the processes' heartbeats."""
    auth = OpsAuth(token)
    api = _Api(ops, auth, breaker, dead_letters)
    dash = _Dashboard(ops, auth, breaker, dead_letters)
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
        Route("/ops/", dash.index, methods=["GET"]),
        Route("/ops/login", dash.login, methods=["POST"]),
        Route("/ops/logout", dash.logout, methods=["POST"]),
        Route("/ops/dlq/{job_id}/replay", dash.replay, methods=["POST"]),
        Route("/ops/dlq/{job_id}/discard", dash.discard, methods=["POST"]),
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


class _Api(_Surface):
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
        return {"jobs_by_state": self.ops.counts()}

    def attempts(self, request: Request, body: dict[str, Any]) -> Any:
        window_s = _int_param(request, "window_s", CHART_WINDOW_S, 60, 7 * 24 * 3600)
        return {"window_s": window_s, "points": self.ops.attempts_per_minute(window_s)}

    def breaker(self, request: Request, body: dict[str, Any]) -> Any:
        return {"providers": _breaker_states(self._breaker)}

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
    except (ValueError, UnicodeDecodeError):
        raise ValidationError("request body must be JSON") from None
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


def _breaker_states(breaker: SharedBreaker) -> list[dict[str, Any]]:
    """Each provider's breaker, as the shared breaker (Redis) sees it."""
    return [breaker.status(provider).to_dict() for provider in PROVIDERS]


# -- dashboard -----------------------------------------------------------------------------


class _Dashboard(_Surface):
    def _session(self, request: Request) -> str | None:
        cookie = request.cookies.get(SESSION_COOKIE)
        return cookie if cookie and self.auth.session_ok(cookie) else None

    async def index(self, request: Request) -> Response:
        session = self._session(request)
        if session is None:
            return HTMLResponse(_login_page(None), status_code=401)
        notice = request.query_params.get("notice")
        page = await run_in_threadpool(self._render, session, notice)
        return HTMLResponse(page, headers=_NO_STORE)

    def _render(self, session: str, notice: str | None) -> str:
        return render_dashboard(
            counts=self.ops.counts(),
            dead=self.ops.list_dead(JobFilter(), limit=50).jobs,
            broker_letters=self._dead_letters(20),
            breakers=_safe_breakers(self._breaker),
            points=self.ops.attempts_per_minute(CHART_WINDOW_S),
            drift=self.ops.drift(DASHBOARD_DRIFT_ROWS),
            csrf=self.auth.csrf_for(session),
            notice=notice,
        )

    async def login(self, request: Request) -> Response:
        try:
            form = await _form(request)
        except WebhookRejected as exc:
            return HTMLResponse(_login_page("request too large"), status_code=exc.status)
        if not self.auth.token_ok(form.get("token", "")):
            log.warning("ops.login_failed")
            return HTMLResponse(_login_page("wrong token"), status_code=401)
        response = RedirectResponse("/ops/", status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            self.auth.new_session(),
            max_age=SESSION_TTL_S,
            path="/ops",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def logout(self, request: Request) -> Response:
        response = RedirectResponse("/ops/", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/ops")
        return response

    async def _checked(self, request: Request) -> tuple[str, dict[str, str]] | Response:
        session = self._session(request)
        if session is None:
            return HTMLResponse(_login_page(None), status_code=401)
        try:
            form = await _form(request)
        except WebhookRejected as exc:
            return HTMLResponse("<p>Request too large.</p>", status_code=exc.status)
        if not self.auth.csrf_ok(session, form.get("csrf", "")):
            return HTMLResponse("<p>Stale or forged form: reload the page.</p>", status_code=403)
        return session, form

    async def replay(self, request: Request) -> Response:
        checked = await self._checked(request)
        if isinstance(checked, Response):
            return checked
        job_id = request.path_params["job_id"]
        try:
            result = await run_in_threadpool(self.ops.replay, job_id, DASHBOARD_ACTOR)
            notice = f"{result.action} {result.job_id}: {result.reason}"
        except (ValidationError, JobNotFound, InvalidOperation) as exc:
            notice = f"replay refused: {exc}"
        return _back(notice)

    async def discard(self, request: Request) -> Response:
        checked = await self._checked(request)
        if isinstance(checked, Response):
            return checked
        _, form = checked
        job_id = request.path_params["job_id"]
        try:
            await run_in_threadpool(
                self.ops.discard, job_id, DASHBOARD_ACTOR, form.get("reason", "")
            )
            notice = f"discarded {job_id}"
        except (ValidationError, JobNotFound, InvalidOperation) as exc:
            notice = f"discard refused: {exc}"
        return _back(notice)


_NO_STORE = {"Cache-Control": "no-store"}


def _back(notice: str) -> Response:
    return RedirectResponse(f"/ops/?notice={quote(notice[:300])}", status_code=303)


async def _form(request: Request) -> dict[str, str]:
    """A form body, read as a stream: past the cap (unauthenticated, for /ops/login) it is
    refused with WebhookRejected(413) before it is held whole."""
    raw = await read_body(request, MAX_BODY_BYTES)
    parsed = parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v[0] for k, v in parsed.items() if v}


def _safe_breakers(breaker: SharedBreaker) -> list[dict[str, Any]]:
    try:
        return _breaker_states(breaker)
    except Exception as exc:  # the dashboard still renders without breaker state
        log.warning("ops.breaker_status_failed", error=type(exc).__name__)
        return []


def _login_page(error: str | None) -> str:
    message = f'<p class="error">{html.escape(error)}</p>' if error else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>orchestrator ops: sign in</title></head>
<body><h1>orchestrator ops</h1>{message}
<form method="post" action="/ops/login">
<label>Ops token <input id="token" type="password" name="token" autocomplete="off"></label>
<button id="login" type="submit">Sign in</button>
</form></body></html>"""
