"""SendGrid, through the official SDK: emails as v3 mail sends.

SendGrid keeps no idempotency keys: a request sent twice is delivered twice. So every outcome
that may have delivered (a cut connection, a read timeout, a 5xx other than 503) is reported
as ambiguous, and the executor never retries it blindly (``honours_idempotency_keys`` is
False): the job goes ``dead`` with reason ``ambiguous`` unless it opted into at-least-once
delivery. Every message carries ``custom_args.orchestrator_job_id`` so that it can be traced
in SendGrid's activity feed and event webhooks.

:func:`classify_error` is the one place where the SDK's exceptions become outcomes. The SDK
(``python_http_client`` over ``urllib``) raises:

* ``python_http_client.exceptions.HTTPError`` and its subclasses for any HTTP error status;
* ``urllib.error.URLError`` when the request could not be sent (refused, DNS, connect timeout);
* ``TimeoutError`` (``socket.timeout``) when the answer did not come within the timeout;
* ``http.client.HTTPException`` / ``ConnectionError`` when the connection broke after sending.
"""

from __future__ import annotations

import http.client
import urllib.error
from collections.abc import Callable, Mapping
from typing import Any

import python_http_client.exceptions as sg_errors
import sendgrid

from orchestrator.config import Settings
from orchestrator.models import AttemptOutcome, Job, JobKind
from orchestrator.providers.base import NO_RESPONSE, SERVER_ERROR, Outcome
from orchestrator.providers.http import clip, header, retry_after_s
from orchestrator.providers.registry import ProviderSpec
from orchestrator.validation import JOB_ID_METADATA_KEY, sendgrid_template_id

# 503 means SendGrid did not take the request in (v3 API unavailable): provably not delivered.
# Other 5xx (500, 502, 504) may come after the message was queued for delivery.
NOT_ACCEPTED_STATUSES = frozenset({503})
RATE_LIMITED_STATUS = 429


class SendGridProvider:
    """Emails through ``sendgrid.SendGridAPIClient``; safe to share between threads.

    The SDK builds a fresh ``urllib`` opener per request; the only shared state, the
    client's header dict, is written once with the same values.
    """

    name = "sendgrid"
    honours_idempotency_keys = False

    def __init__(
        self, api_key: str | Callable[[], str], *, api_base: str, timeout_s: float
    ) -> None:
        """``api_key`` is the key, or a callable read before every send (e.g. ``lambda:
        settings.require_secret("sendgrid_api_key")``) so a rotated key is used at once."""

        def new_client(key: str) -> Any:
            client = sendgrid.SendGridAPIClient(key, host=api_base)
            # urllib has one timeout for connecting and for each read; the SDK has none by
            # default (it would wait forever). Every request built from this client inherits it.
            client.client.timeout = timeout_s
            return client

        self._api_key: Callable[[], str] = api_key if callable(api_key) else lambda: api_key
        self._new_client = new_client
        key = self._api_key()
        # The client holds the key in its headers: a changed key gets a new client (two
        # threads seeing the change at once may each build one; either is right).
        self._keyed_client: tuple[str, Any] = (key, new_client(key))

    def execute(self, job: Job, idempotency_key: str) -> Outcome:
        """Send the job's message once. ``idempotency_key`` is unused: SendGrid has none."""
        key = self._api_key()
        current_key, client = self._keyed_client
        if key != current_key:
            client = self._new_client(key)
            self._keyed_client = (key, client)
        try:
            response = client.send(mail_body(job))
        except Exception as exc:
            return classify_error(exc)
        return outcome_of_response(job, response.status_code, response.headers)

    def lookup(self, job: Job) -> Outcome | None:
        """SendGrid offers no read-your-write lookup of a send (the Email Activity API is a
        paid add-on and lags by minutes), so nothing can ever be proven: always None."""
        return None

    def lookup_is_consistent(self, job: Job) -> bool:
        return False


def mail_body(job: Job) -> dict[str, Any]:
    """The v3 mail/send body for an email job: identical on every attempt."""
    params = job.params
    personalization: dict[str, Any] = {"to": [{"email": to} for to in params["to"]]}
    body: dict[str, Any] = {
        "personalizations": [personalization],
        "from": {"email": params["from"]},
        "custom_args": {JOB_ID_METADATA_KEY: job.id},
    }
    if params.get("subject"):
        body["subject"] = params["subject"]
    if params.get("template"):
        body["template_id"] = params["template"]
        if params.get("template_data"):
            personalization["dynamic_template_data"] = params["template_data"]
    else:
        body["content"] = [{"type": "text/plain", "value": params["body"]}]
    return body


def outcome_of_response(job: Job, status: int, headers: Mapping[str, str] | None) -> Outcome:
    """A 2xx: SendGrid accepted the message. Its X-Message-Id becomes the job's provider_ref."""
    message_id = header(headers, "X-Message-Id")
    return Outcome(
        AttemptOutcome.SUCCEEDED,
        # A success must name a provider object; without a message id the job id stands in.
        provider_ref=message_id or f"{JOB_ID_METADATA_KEY}:{job.id}",
        provider_status="accepted",
        http_status=status,
        request_id=message_id,
    )


def classify_error(exc: BaseException) -> Outcome:
    """Map one exception raised by the SendGrid SDK to what the executor must do."""
    if isinstance(exc, sg_errors.HTTPError):
        return _classify_http_error(exc)
    if isinstance(exc, urllib.error.URLError):
        # urllib raises URLError only while connecting and sending the request: SendGrid
        # never saw a complete request, so nothing can have been delivered.
        return Outcome(
            AttemptOutcome.NOT_EXECUTED,
            error_class=type(exc).__name__,
            error_code="connect_failed",
            message=clip(str(exc.reason)),
        )
    if isinstance(exc, ConnectionRefusedError):
        return Outcome(
            AttemptOutcome.NOT_EXECUTED,
            error_class=type(exc).__name__,
            error_code="connect_failed",
            message=clip(str(exc)),
        )
    if isinstance(exc, TimeoutError):
        code = "read_timeout"
    elif isinstance(exc, http.client.HTTPException | ConnectionError):
        code = "no_response"  # the connection broke after the request went out
    else:
        code = "unexpected_error"  # a bug or an unknown failure mid-call: assume it was sent
    return Outcome(
        AttemptOutcome.AMBIGUOUS,
        error_class=type(exc).__name__,
        error_code=code,
        message=clip(str(exc)),
        unknown_cause=NO_RESPONSE,
    )


def _classify_http_error(exc: sg_errors.HTTPError) -> Outcome:
    status = int(getattr(exc, "status_code", 0) or 0)
    headers = getattr(exc, "headers", None)
    fields: dict[str, Any] = {
        "error_class": type(exc).__name__,
        "error_code": f"http_{status}",
        "message": clip(_error_message(exc)),
        "http_status": status if 100 <= status <= 599 else None,
    }
    if status == RATE_LIMITED_STATUS:
        return Outcome(
            AttemptOutcome.NOT_EXECUTED,
            retry_after_s=retry_after_s(headers),
            **{**fields, "error_code": "rate_limited"},
        )
    if status in NOT_ACCEPTED_STATUSES:
        return Outcome(AttemptOutcome.NOT_EXECUTED, retry_after_s=retry_after_s(headers), **fields)
    if 400 <= status < 500:
        return Outcome(AttemptOutcome.PERMANENT, **fields)
    return Outcome(AttemptOutcome.AMBIGUOUS, unknown_cause=SERVER_ERROR, **fields)


def _error_message(exc: sg_errors.HTTPError) -> str:
    """SendGrid's ``{"errors": [{"message", "field"}]}``, joined; the raw reason otherwise."""
    try:
        errors = exc.to_dict.get("errors") or []
        parts = [
            f"{e.get('field')}: {e.get('message')}" if e.get("field") else str(e.get("message"))
            for e in errors
            if isinstance(e, Mapping)
        ]
    except Exception:  # not JSON, or not SendGrid's shape
        parts = []
    return "; ".join(parts) or str(getattr(exc, "reason", "") or type(exc).__name__)


def build(settings: Settings) -> SendGridProvider | None:
    """The SendGrid provider, or None when ``SENDGRID_API_KEY`` is not set."""
    if settings.sendgrid_api_key is None:
        return None
    return SendGridProvider(
        # Read per send: a rotated key (orchestrator.secrets) is used by the running worker.
        lambda: settings.require_secret("sendgrid_api_key"),
        api_base=settings.sendgrid_api_base,
        timeout_s=settings.provider_read_timeout_s,
    )


def email_checks(request: Mapping[str, Any]) -> None:
    """SendGrid's template ids: dynamic (``d-`` + 32 hex) or legacy (a UUID)."""
    if request.get("template"):
        sendgrid_template_id(request["template"])


SPEC = ProviderSpec(
    name="sendgrid",
    kinds=frozenset({JobKind.EMAIL}),
    build=build,
    email_checks=email_checks,
    # python_http_client logs whole payloads and headers (the API key) at DEBUG.
    sdk_loggers=("python_http_client",),
)
