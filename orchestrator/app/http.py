"""The app HTTP API (``/api/v1``): charges, refunds and emails for services in other languages,
served by the ``web`` process against one shared :class:`~orchestrator.api.Orchestrator`.

Routes (documented in :mod:`orchestrator.app.openapi`, served at ``/api/v1/openapi.json``)::

    POST /api/v1/charges              Idempotency-Key   -> 201 new job | 200 same job
    POST /api/v1/refunds              Idempotency-Key   -> 201 | 200
    POST /api/v1/emails               Idempotency-Key   -> 201 | 200
    GET  /api/v1/jobs/{job_id}                          -> 200
    POST /api/v1/jobs/{job_id}/cancel Idempotency-Key   -> 200

Authentication: ``Authorization: Bearer $ORCHESTRATOR_API_TOKEN``, compared in constant time.
It is its own secret: the ops token is refused here (and this one on ``/ops``). No token
configured: every request is refused (401), never let through.

Idempotency: the ``Idempotency-Key`` header is the job's idempotency key, exactly as the Python
API's ``idempotency_key`` argument, so an HTTP request and a Python call with the same key and
the same fields are the same job. The same key and body again answer 200 with that job (201 the
request that made it: of simultaneous first requests, exactly one); the same key with another
body is a 409.

Cancel is ``Orchestrator.cancel``: the job, cancelled, or for an uncaptured authorization its
``void`` job (the same one while it is live). It needs the header too, but its idempotency comes
from the job's state, not from the key (nothing is stored under it): cancelling a job that is
already ``cancelled`` answers 200 with it, so a retried cancel gets the answer the first one got;
a cancel refused because the job had started answers 409 again as long as it is not cancelled.
A missing ``from_email`` with no ``ORCHESTRATOR_EMAIL_FROM`` (the library's ConfigError) is a 400
naming both.

Errors are ``{"error": message, "code": ...}``: 400 invalid input (unknown field, wrong type, the
library's ``ValidationError``), 401, 404 no such job, 409 conflict (``IdempotencyConflict``, or
``InvalidOperation``: the job's state forbids it), 413 body over :data:`MAX_BODY_BYTES`. Client
input never causes a 5xx. Blocking work (PostgreSQL, the broker) runs in the threadpool.
"""

from __future__ import annotations

import functools
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from orchestrator import validation as v
from orchestrator.api import created_by
from orchestrator.app import openapi as doc
from orchestrator.errors import (
    ConfigError,
    IdempotencyConflict,
    InvalidOperation,
    JobNotFound,
    ValidationError,
)
from orchestrator.logs import get_logger
from orchestrator.models import Job, JobState
from orchestrator.secrets.tokens import Token, token_reader
from orchestrator.webhooks.events import WebhookRejected
from orchestrator.webhooks.ingest import read_body

if TYPE_CHECKING:
    from orchestrator.api import Orchestrator

log = get_logger(__name__)

PREFIX = "/api/v1"
# An email body may hold 1,000,000 characters (validation.MAX_BODY_CHARS), more bytes once
# JSON-escaped; 2 MiB bounds what one request makes the web process hold.
MAX_BODY_BYTES = 2 * 1024 * 1024
KEY_HEADER = "idempotency-key"

Handler = Callable[[Request], Awaitable[Response]]


class ApiError(Exception):
    """An answer other than 2xx, raised by the request parsing."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "code": code}, status_code=status)


# -- the Job as JSON -----------------------------------------------------------------------


def job_json(job: Job) -> dict[str, Any]:
    """The typed Job of the OpenAPI document (``JOB``): ids, states, amounts, provider refs,
    errors and times; never the request's params (email bodies, recipients) nor card data."""
    return {
        "id": job.id,
        "kind": str(job.kind),
        "state": str(job.state),
        "provider": job.provider,
        "idempotency_key": job.idempotency_key,
        "amount": job.amount,
        "currency": job.currency,
        "customer": job.customer,
        "parent_job_id": job.parent_job_id,
        "metadata": dict(job.metadata),
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "refunded_amount": job.refunded_amount,
        "captured": job.captured,
        "captured_amount": job.captured_amount,
        "capture_before": None if job.capture_before is None else job.capture_before.isoformat(),
        "provider_ref": job.provider_ref,
        "provider_status": job.provider_status,
        "provider_details": job.provider_details,
        "last_error_code": job.last_error_code,
        "last_error": job.last_error,
        "dead_reason": job.dead_reason,
        "next_attempt_at": job.next_attempt_at.isoformat(),
        "created_at": job.created_at.isoformat(),
        "updated_at": job.updated_at.isoformat(),
    }


def _job_response(job: Job, status: int = 200) -> JSONResponse:
    location = {"Location": f"{PREFIX}/jobs/{job.id}"} if status in (200, 201) else {}
    return JSONResponse(job_json(job), status_code=status, headers=location)


# -- request parsing -----------------------------------------------------------------------


class ApiAuth:
    """The bearer check: constant time, and never open when no token is configured."""

    def __init__(self, token: Token) -> None:
        self._token = token_reader(token)  # read per request: a rotation applies at once

    def ok(self, request: Request) -> bool:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        expected = self._token()
        if expected is None or scheme.lower() != "bearer" or not value.strip():
            return False
        # compare_digest refuses non-ASCII str: compare the UTF-8 bytes.
        return hmac.compare_digest(value.strip().encode("utf-8", "replace"), expected)


def idempotency_key(request: Request) -> str:
    raw = request.headers.get(KEY_HEADER)
    if raw is None:
        raise ApiError(400, "invalid_request", "the Idempotency-Key header is required")
    # Header bytes arrive as latin-1; clients send UTF-8, as Python callers' str keys are.
    try:
        text = raw.encode("latin-1").decode("utf-8")
    except UnicodeError:
        text = raw
    try:
        return v.idempotency_key(text)
    except ValidationError as exc:
        raise ApiError(400, "invalid_request", f"Idempotency-Key: {exc}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object (empty: ``{}``), read as a stream and refused past the cap."""
    try:
        raw = await read_body(request, MAX_BODY_BYTES)
    except WebhookRejected as exc:
        code = "too_large" if exc.status == 413 else "invalid_request"
        raise ApiError(exc.status, code, exc.reason) from None
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ApiError(400, "invalid_request", "request body must be JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_request", "request body must be a JSON object")
    _refuse_unstorable_text(body)
    return body


def _refuse_unstorable_text(body: dict[str, Any]) -> None:
    """Refuse text PostgreSQL cannot store, wherever it sits: NUL characters, and half a UTF-16
    pair (JSON may escape one, ``"\\ud800"``). No valid request holds either. Walked without
    recursion (the parser already allowed deep nesting)."""
    pending: list[Any] = [body]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, str):
            if "\x00" in item:
                raise ApiError(400, "invalid_request", "request body holds a NUL character")
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise ApiError(
                    400, "invalid_request", "request body holds an unpaired surrogate"
                ) from None


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


def _has_type(schema: dict[str, Any], value: Any) -> bool:
    if "oneOf" in schema:
        return any(_has_type(option, value) for option in schema["oneOf"])
    kind = schema.get("type")
    if kind is None:
        return True
    if isinstance(value, bool) and kind != "boolean":
        return False
    return isinstance(value, _JSON_TYPES[kind])


def _describe(schema: dict[str, Any]) -> str:
    if "oneOf" in schema:
        return " or ".join(_describe(option) for option in schema["oneOf"])
    kind = str(schema.get("type", "value"))
    return {"integer": "an integer", "array": "an array", "object": "an object"}.get(
        kind, f"a {kind}"
    )


def checked_fields(schema: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """The body's fields given (``null`` dropped), after the document's shape checks: no unknown
    field, every required one present, each of its declared JSON type. Value rules (ranges,
    formats) are the library's, applied by the call itself."""
    properties: dict[str, Any] = schema["properties"]
    unknown = sorted(name for name in body if name not in properties)
    if unknown:
        raise ValidationError(f"unknown field {unknown[0][:64]!r}")
    for name in schema.get("required", []):
        if body.get(name) is None:
            raise ValidationError(f"{name} is required")
    given = {name: value for name, value in body.items() if value is not None}
    for name, value in given.items():
        if not _has_type(properties[name], value):
            raise ValidationError(f"{name} must be {_describe(properties[name])}")
    return given


# -- the calls -----------------------------------------------------------------------------


def _charge(orch: Orchestrator, key: str, fields: dict[str, Any]) -> Job:
    args = dict(fields)
    return orch.charge(
        args.pop("amount"),
        args.pop("currency"),
        args.pop("customer", None),
        args.pop("payment_method"),
        key,
        args.pop("metadata", None),
        **args,
    )


def _refund(orch: Orchestrator, key: str, fields: dict[str, Any]) -> Job:
    return orch.refund(
        fields["charge_job_id"],
        fields.get("amount"),
        idempotency_key=key,
        metadata=fields.get("metadata"),
    )


def _email(orch: Orchestrator, key: str, fields: dict[str, Any]) -> Job:
    args = dict(fields)
    return orch.send_email(
        args.pop("to"),
        args.pop("subject", None),
        args.pop("body", None),
        args.pop("template", None),
        idempotency_key=key,
        **args,
    )


def _cancel(orch: Orchestrator, job_id: str, reason: str) -> Job:
    """Cancel (the library validates the id and the reason). A job already ``cancelled`` is
    the answer a retried cancel expects: 200 with it, not the library's InvalidOperation."""
    try:
        return orch.cancel(job_id, reason=reason)
    except InvalidOperation:
        job = orch.job(job_id)
        if job.state is JobState.CANCELLED:
            return job
        raise


Create = Callable[["Orchestrator", str, dict[str, Any]], Job]


class AppApi:
    """The ``/api/v1`` handlers over one shared Orchestrator."""

    def __init__(self, orch: Orchestrator, token: Token) -> None:
        self.orch = orch
        self.auth = ApiAuth(token)

    def guarded(self, handler: Handler) -> Handler:
        """401 before anything else is read; ApiError and the library's errors as 4xx."""

        async def endpoint(request: Request) -> Response:
            if not self.auth.ok(request):
                return JSONResponse(
                    {"error": "unauthorized", "code": "unauthorized"},
                    status_code=401,
                    headers={"WWW-Authenticate": 'Bearer realm="orchestrator-api"'},
                )
            try:
                return await handler(request)
            except ApiError as exc:
                return error(exc.status, exc.code, exc.message)
            except (ValidationError, ConfigError) as exc:
                return error(400, "invalid_request", str(exc))
            except IdempotencyConflict as exc:
                return error(409, "idempotency_conflict", str(exc))
            except JobNotFound as exc:
                return error(404, "not_found", str(exc))
            except InvalidOperation as exc:
                return error(409, "conflict", str(exc))

        return endpoint

    def creator(self, schema: dict[str, Any], create: Create, kind: str) -> Handler:
        async def post(request: Request) -> Response:
            key = idempotency_key(request)
            fields = checked_fields(schema, await json_object(request))
            call = functools.partial(create, self.orch, key, fields)
            job, created = await run_in_threadpool(created_by, call)
            log.info("api.accepted", kind=kind, job_id=job.id, created=created)
            return _job_response(job, 201 if created else 200)

        return post

    async def job(self, request: Request) -> Response:
        job = await run_in_threadpool(self.orch.job, request.path_params["job_id"])
        return _job_response(job)

    async def cancel(self, request: Request) -> Response:
        idempotency_key(request)  # required; see the module's docstring for what it means
        fields = checked_fields(doc.CANCEL, await json_object(request))
        job_id = request.path_params["job_id"]
        job = await run_in_threadpool(_cancel, self.orch, job_id, fields["reason"])
        log.info("api.cancelled", job_id=job.id, state=str(job.state))
        return _job_response(job)

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(doc.OPENAPI)


def api_routes(orch: Orchestrator, *, token: Token) -> list[BaseRoute]:
    """Every ``/api/v1`` route; ``token`` authenticates (None: every request is refused)."""
    api = AppApi(orch, token)
    handlers: list[tuple[str, Handler, str]] = [
        ("/openapi.json", api.openapi, "GET"),
        ("/charges", api.creator(doc.CHARGE, _charge, "charge"), "POST"),
        ("/refunds", api.creator(doc.REFUND, _refund, "refund"), "POST"),
        ("/emails", api.creator(doc.EMAIL, _email, "email"), "POST"),
        ("/jobs/{job_id}", api.job, "GET"),
        ("/jobs/{job_id}/cancel", api.cancel, "POST"),
    ]
    return [
        Route(PREFIX + path, api.guarded(handler), methods=[method])
        for path, handler, method in handlers
    ]
