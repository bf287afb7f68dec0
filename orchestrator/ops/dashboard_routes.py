"""The ``/ops/`` dashboard's request handlers: the page, sign-in and sign-out, and the
replay/discard forms (the dashboard and confirmation pages are rendered by
:mod:`orchestrator.ops.dashboard`).

* Signing in posts the ops token through a form; success sets the session cookie and stores
  the session in Redis, sign-in attempts are throttled per client, and signing out revokes
  the session server-side (all of it :mod:`orchestrator.ops.auth`'s). Replaying and
  discarding need a live session and the session's CSRF token.
* The session store (Redis) unavailable: every dashboard endpoint answers 503
  (:func:`_fail_closed`), never lets a cookie through on its signature alone.
* Replaying a dead ``ambiguous`` job (a send that may have been delivered) first shows a
  confirmation page; only its confirmed POST replays, accepting (and auditing) the duplicate
  risk.
* Form bodies are read as a stream and refused (413) past the cap, before any is held whole.

The operator named in the dashboard's audit rows is ``http:dashboard``.
"""

from __future__ import annotations

import functools
import html
from typing import Any
from urllib.parse import parse_qs, quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from orchestrator.breaker import SharedBreaker
from orchestrator.errors import InvalidOperation, JobNotFound, ValidationError
from orchestrator.logs import get_logger
from orchestrator.models import DeadReason, JobState
from orchestrator.ops.auth import (
    SESSION_COOKIE,
    SESSION_TTL_S,
    ClientInfo,
    LoginThrottle,
    OpsAuth,
    SessionStore,
    SessionsUnavailable,
)
from orchestrator.ops.dashboard import render_dashboard, render_replay_confirmation
from orchestrator.ops.filters import JobFilter
from orchestrator.ops.service import Operations
from orchestrator.ops.surface import (
    CHART_WINDOW_S,
    MAX_BODY_BYTES,
    DeadLetters,
    Handler,
    Surface,
    breaker_states,
)
from orchestrator.webhooks.events import WebhookRejected
from orchestrator.webhooks.ingest import read_body

log = get_logger(__name__)

DASHBOARD_ACTOR = "http:dashboard"
# The dashboard shows this many of the newest ledger drift rows.
DASHBOARD_DRIFT_ROWS = 20


def dashboard_routes(
    ops: Operations,
    auth: OpsAuth,
    breaker: SharedBreaker,
    dead_letters: DeadLetters,
    *,
    sessions: SessionStore,
    throttle: LoginThrottle,
    clients: ClientInfo,
) -> list[BaseRoute]:
    """The dashboard's routes: a session cookie, and a CSRF token on every POST."""
    dash = _Dashboard(
        ops,
        auth,
        breaker,
        dead_letters,
        sessions=sessions,
        throttle=throttle,
        clients=clients,
    )
    return [
        Route("/ops/", _fail_closed(dash.index), methods=["GET"]),
        Route("/ops/login", _fail_closed(dash.login), methods=["POST"]),
        Route("/ops/logout", _fail_closed(dash.logout), methods=["POST"]),
        Route("/ops/dlq/{job_id}/replay", _fail_closed(dash.replay), methods=["POST"]),
        Route("/ops/dlq/{job_id}/discard", _fail_closed(dash.discard), methods=["POST"]),
    ]


class _Dashboard(Surface):
    def __init__(
        self,
        ops: Operations,
        auth: OpsAuth,
        breaker: SharedBreaker,
        dead_letters: DeadLetters,
        *,
        sessions: SessionStore,
        throttle: LoginThrottle,
        clients: ClientInfo,
    ) -> None:
        super().__init__(ops, auth, breaker, dead_letters)
        self.sessions = sessions
        self.throttle = throttle
        self.clients = clients

    async def _session(self, request: Request) -> str | None:
        """The request's session cookie when it is signed, unexpired and still held in Redis
        (raises SessionsUnavailable when Redis cannot say)."""
        cookie = request.cookies.get(SESSION_COOKIE)
        if not cookie or not self.auth.session_ok(cookie):
            return None
        active = await run_in_threadpool(self.sessions.active, cookie)
        return cookie if active else None

    async def index(self, request: Request) -> Response:
        session = await self._session(request)
        if session is None:
            return HTMLResponse(_login_page(None), status_code=401)
        notice = request.query_params.get("notice")
        page = await run_in_threadpool(self._render, session, notice)
        return HTMLResponse(page, headers=_NO_STORE)

    def _render(self, session: str, notice: str | None) -> str:
        counts = self.ops.counts()
        return render_dashboard(
            counts=counts.live,
            settled=counts.settled,
            dead=self.ops.list_dead(JobFilter(), limit=50).jobs,
            broker_letters=self._dead_letters(20),
            breakers=_safe_breakers(self._breaker),
            points=self.ops.attempts_per_minute(CHART_WINDOW_S),
            drift=self.ops.drift(DASHBOARD_DRIFT_ROWS),
            csrf=self.auth.csrf_for(session),
            notice=notice,
        )

    async def login(self, request: Request) -> Response:
        client = self.clients.throttle_key(request)
        allowed, retry_after_s = await run_in_threadpool(self.throttle.reserve, client)
        if not allowed:  # the token is not even looked at
            log.warning("ops.login_throttled", client=client, retry_after_s=retry_after_s)
            return HTMLResponse(
                _login_page(f"too many failed sign-ins: try again in {retry_after_s} s"),
                status_code=429,
                headers={"Retry-After": str(retry_after_s), **_NO_STORE},
            )
        try:
            form = await _form(request)
        except WebhookRejected as exc:
            return HTMLResponse(_login_page("request too large"), status_code=exc.status)
        if not self.auth.token_ok(form.get("token", "")):
            log.warning("ops.login_failed", client=client)
            return HTMLResponse(_login_page("wrong token"), status_code=401)
        await run_in_threadpool(self.throttle.release, client)
        cookie = self.auth.new_session()
        await run_in_threadpool(self.sessions.create, cookie)
        log.info("ops.login", client=client)
        response = RedirectResponse("/ops/", status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            cookie,
            max_age=SESSION_TTL_S,
            path="/ops",
            httponly=True,
            samesite="strict",
            secure=self.clients.https(request),
        )
        return response

    async def logout(self, request: Request) -> Response:
        """Ends the session server-side (a copy of the cookie stops working at once) and
        drops the cookie."""
        cookie = request.cookies.get(SESSION_COOKIE)
        response: Response = RedirectResponse("/ops/", status_code=303)
        if cookie and self.auth.session_ok(cookie):
            try:
                await run_in_threadpool(self.sessions.revoke, cookie)
            except SessionsUnavailable as exc:
                log.warning("ops.logout_failed", error=str(exc))
                response = _unavailable_page(
                    "Signed out in this browser, but the session could not be revoked on the "
                    "server: it ends when the token is rotated or after its lifetime."
                )
        response.delete_cookie(SESSION_COOKIE, path="/ops")
        return response

    async def _checked(self, request: Request) -> tuple[str, dict[str, str]] | Response:
        session = await self._session(request)
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
        """Replay a dead job. A dead ``ambiguous`` one (a send that may have been delivered)
        first gets a confirmation page; its confirmed POST (``accept_duplicate_risk=yes``)
        replays it, the risk accepted and audited."""
        checked = await self._checked(request)
        if isinstance(checked, Response):
            return checked
        session, form = checked
        job_id = request.path_params["job_id"]
        confirmed = form.get("accept_duplicate_risk") == "yes"
        try:
            if not confirmed:
                job = (await run_in_threadpool(self.ops.show, job_id)).job
                if job.state is JobState.DEAD and job.dead_reason == DeadReason.AMBIGUOUS:
                    page = render_replay_confirmation(job, self.auth.csrf_for(session))
                    return HTMLResponse(page, headers=_NO_STORE)
            reason = form.get("reason", "").strip() or None
            result = await run_in_threadpool(
                functools.partial(
                    self.ops.replay,
                    job_id,
                    DASHBOARD_ACTOR,
                    reason=reason,
                    accept_duplicate_risk=confirmed,
                )
            )
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


def _fail_closed(handler: Handler) -> Handler:
    """A dashboard endpoint whose session store (Redis) is down answers 503, never lets the
    request through on the cookie's signature alone."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except SessionsUnavailable as exc:
            log.warning("ops.sessions_unavailable", path=request.url.path, error=str(exc))
            return _unavailable_page(
                "The dashboard's session store (Redis) is unavailable, so no session can be "
                "checked: try again shortly. The JSON API (bearer token) is not affected."
            )

    return endpoint


def _unavailable_page(message: str) -> HTMLResponse:
    return HTMLResponse(
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        "<title>orchestrator ops: unavailable</title></head><body><h1>orchestrator ops</h1>"
        f'<p class="error" id="unavailable">{html.escape(message)}</p></body></html>',
        status_code=503,
        headers={"Retry-After": "5", **_NO_STORE},
    )


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
        return breaker_states(breaker)
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
