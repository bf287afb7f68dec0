"""Stripe's exceptions as outcomes: the one place where a ``stripe.StripeError`` (or the
network error behind it) becomes what the executor must do with the job."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import requests
import stripe
import urllib3

from orchestrator.models import AttemptOutcome
from orchestrator.providers.base import NO_RESPONSE, SERVER_ERROR, Outcome
from orchestrator.providers.http import clip, header, retry_after_s

# The network errors behind an APIConnectionError: urllib3's (Urllib3Client), and requests'
# (the SDK's default client). urllib3's NewConnectionError is a ConnectTimeoutError too.
_CONNECT_TIMEOUTS = (requests.exceptions.ConnectTimeout, urllib3.exceptions.ConnectTimeoutError)


_READ_TIMEOUTS = (requests.exceptions.ReadTimeout, urllib3.exceptions.ReadTimeoutError)


def classify_error(exc: stripe.StripeError) -> Outcome:
    """Map one stripe exception to what the executor must do with the job."""
    status = exc.http_status
    code = exc.code
    fields: dict[str, Any] = {
        "error_class": type(exc).__name__,
        "error_code": code,
        "message": clip(exc.user_message or str(exc)),
        "http_status": status,
        "request_id": exc.request_id,
    }
    should_retry = header(exc.headers, "Stripe-Should-Retry")

    if isinstance(exc, stripe.APIConnectionError):
        return _classify_connection_error(exc, fields)
    if isinstance(exc, stripe.CardError):
        ref = _intent_id_of(exc)
        return Outcome(
            AttemptOutcome.PERMANENT,
            provider_ref=ref,
            **{**fields, "error_code": _decline_code(exc) or code},
        )
    if isinstance(exc, stripe.RateLimitError):
        return Outcome(
            AttemptOutcome.NOT_EXECUTED,
            retry_after_s=retry_after_s(exc.headers),
            **{**fields, "error_code": code or "rate_limited"},
        )
    if isinstance(exc, stripe.IdempotencyError):
        # Our parameters for this key changed: a bug. The first request may have executed.
        return Outcome(AttemptOutcome.AMBIGUOUS, unknown_cause=SERVER_ERROR, **fields)
    if status == 409:
        # idempotency_key_in_use: the same key is executing elsewhere; its saved result
        # will answer a later retry with the same key.
        return Outcome(
            AttemptOutcome.NOT_EXECUTED, retry_after_s=retry_after_s(exc.headers), **fields
        )
    if status is not None and status >= 500:
        if should_retry == "true":
            return Outcome(AttemptOutcome.NOT_EXECUTED, **fields)
        # Stripe saved this 5xx against the key: resending replays it. Look the object up.
        return Outcome(AttemptOutcome.AMBIGUOUS, unknown_cause=SERVER_ERROR, **fields)
    if should_retry == "true":
        return Outcome(AttemptOutcome.NOT_EXECUTED, **fields)
    if isinstance(
        exc,
        (stripe.InvalidRequestError, stripe.AuthenticationError, stripe.PermissionError),
    ) or (status is not None and 400 <= status < 500):
        return Outcome(AttemptOutcome.PERMANENT, **fields)
    return Outcome(AttemptOutcome.AMBIGUOUS, unknown_cause=SERVER_ERROR, **fields)


def _classify_connection_error(exc: stripe.APIConnectionError, fields: dict[str, Any]) -> Outcome:
    cause = exc.__cause__
    if isinstance(cause, _CONNECT_TIMEOUTS) or _refused(cause):
        # The connection never opened: nothing was sent.
        return Outcome(AttemptOutcome.NOT_EXECUTED, **{**fields, "error_code": "connect_failed"})
    code = "read_timeout" if isinstance(cause, _READ_TIMEOUTS) else "no_response"
    return Outcome(
        AttemptOutcome.AMBIGUOUS, unknown_cause=NO_RESPONSE, **{**fields, "error_code": code}
    )


def _refused(cause: BaseException | None) -> bool:
    """A ConnectionError raised while opening the connection (refused, DNS, unreachable)."""
    seen = 0
    while cause is not None and seen < 8:
        if isinstance(cause, ConnectionRefusedError):
            return True
        name = type(cause).__name__
        if name in {"NewConnectionError", "NameResolutionError"}:
            return True
        for arg in getattr(cause, "args", ()):
            if isinstance(arg, ConnectionRefusedError):
                return True
            if type(arg).__name__ in {"NewConnectionError", "NameResolutionError"}:
                return True
            reason = getattr(arg, "reason", None)
            if type(reason).__name__ in {"NewConnectionError", "NameResolutionError"}:
                return True
        cause = cause.__cause__ or cause.__context__
        seen += 1
    return False


def _error_body(exc: stripe.StripeError) -> Mapping[str, Any]:
    body: Any = exc.json_body or {}
    error = body.get("error") if isinstance(body, Mapping) else None
    return error if isinstance(error, Mapping) else {}


def intent_of_error(exc: stripe.StripeError) -> Mapping[str, Any] | None:
    """The PaymentIntent an error body carries (Stripe includes it in card errors and in
    ``payment_intent_unexpected_state``), or None."""
    intent = _error_body(exc).get("payment_intent")
    return intent if isinstance(intent, Mapping) and "id" in intent and "status" in intent else None


def _intent_id_of(exc: stripe.CardError) -> str | None:
    intent = _error_body(exc).get("payment_intent")
    ref = intent.get("id") if isinstance(intent, Mapping) else None
    return str(ref) if ref else None


def _decline_code(exc: stripe.CardError) -> str | None:
    code = _error_body(exc).get("decline_code")
    return str(code) if code else None
