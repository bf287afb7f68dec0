"""Razorpay's failures as outcomes: the one place where an exception raised while calling
Razorpay (through :mod:`orchestrator.providers.razorpay.transport`, or by the SDK itself)
becomes what the executor must do with the job.

By HTTP status first, then by what the body says:

========================================  ====================================================
429 Too Many Requests                     NOT_EXECUTED ``rate_limited`` (``Retry-After`` kept)
409 (a refund key still in progress)      NOT_EXECUTED: the same key answers once it is done
409 "different request with the same      AMBIGUOUS ``server_error``: our parameters changed
idempotency key"                          for a key that executed; only a lookup settles it
400, 401, 403, 404 and any other 4xx      PERMANENT, ``error.reason`` (or ``code``) as the code
5xx, JSON or not (an HTML 502)            AMBIGUOUS ``no_response`` (see below)
a 2xx whose body is not JSON              AMBIGUOUS ``no_response``
connection refused, DNS, connect timeout  NOT_EXECUTED ``connect_failed``: nothing was sent
read timeout                              AMBIGUOUS ``no_response`` (``read_timeout``)
connection cut after sending              AMBIGUOUS ``no_response``
the SDK's BadRequestError / GatewayError  PERMANENT; its ServerError: AMBIGUOUS ``no_response``
anything else                             AMBIGUOUS ``no_response``
========================================  ====================================================

Why a 5xx is ``no_response`` and not ``server_error``: Razorpay keeps no idempotency key for
orders and payments, so nothing is saved against our key that a resend would replay. A resend
with the same key generation is what makes a charge safe: it looks the generation's order up
by its receipt before creating anything, the receipt is unique at Razorpay (a second order
with it is refused at write time, whatever a read shows), and an order takes at most one
successful payment. ``server_error`` would instead move a job whose lookup found nothing to the
next key generation, a new order, which a payment still being processed for the old one could
not be stopped by. For refunds, Razorpay's own answer to a 5xx on an idempotent refund is to
retry with the same ``X-Refund-Idempotency`` key.
"""

from __future__ import annotations

from typing import Any

import razorpay.errors  # type: ignore[import-untyped]
import requests
import urllib3

from orchestrator.models import AttemptOutcome
from orchestrator.providers.base import NO_RESPONSE, SERVER_ERROR, Outcome
from orchestrator.providers.http import clip, retry_after_s
from orchestrator.providers.razorpay.transport import RazorpayHTTPError, RazorpayTransportError

RATE_LIMITED = 429
CONFLICT = 409
# The SDK's exception classes by Razorpay's error.code (razorpay/client.py).
_SDK_CLASS = {
    "BAD_REQUEST_ERROR": "BadRequestError",
    "GATEWAY_ERROR": "GatewayError",
    "SERVER_ERROR": "ServerError",
}
# Names of the network errors raised while opening a connection (nothing was sent).
_CONNECT_ERRORS = frozenset(
    {"NewConnectionError", "NameResolutionError", "ConnectTimeoutError", "ConnectionRefusedError"}
)


def classify_error(exc: BaseException) -> Outcome:
    """Map one exception raised while calling Razorpay to what the executor must do."""
    if isinstance(exc, RazorpayHTTPError):
        return _classify_http(exc)
    if isinstance(exc, RazorpayTransportError):
        return classify_network(exc.__cause__, type(exc).__name__)
    if isinstance(exc, requests.exceptions.RequestException):
        return classify_network(exc, type(exc).__name__)
    if isinstance(exc, razorpay.errors.BadRequestError | razorpay.errors.GatewayError):
        # Only reached if a call bypassed the session: the SDK kept the description alone.
        return Outcome(
            AttemptOutcome.PERMANENT, error_class=type(exc).__name__, message=clip(str(exc))
        )
    return Outcome(
        AttemptOutcome.AMBIGUOUS,
        error_class=type(exc).__name__,
        error_code="unexpected_error",
        message=clip(str(exc)),
        unknown_cause=NO_RESPONSE,
    )


def _classify_http(exc: RazorpayHTTPError) -> Outcome:
    status = exc.http_status
    fields: dict[str, Any] = {
        "error_class": _SDK_CLASS.get((exc.code or "").upper(), "RazorpayHTTPError"),
        "error_code": exc.reason or (exc.code.lower() if exc.code else f"http_{status}"),
        "message": clip(exc.description),
        "http_status": status,
    }
    if status == RATE_LIMITED:
        return Outcome(
            AttemptOutcome.NOT_EXECUTED,
            retry_after_s=retry_after_s(exc.headers),
            **{**fields, "error_code": "rate_limited"},
        )
    if status == CONFLICT:
        if is_different_request_for_key(exc):
            # The key executed with other parameters (our bug): the refund may exist.
            return Outcome(AttemptOutcome.AMBIGUOUS, unknown_cause=SERVER_ERROR, **fields)
        # A request with the same key is still being processed: its result answers later.
        return Outcome(
            AttemptOutcome.NOT_EXECUTED,
            retry_after_s=retry_after_s(exc.headers),
            **{**fields, "error_code": "idempotency_key_in_use"},
        )
    if 400 <= status < 500:
        return Outcome(AttemptOutcome.PERMANENT, provider_ref=_payment_id_of(exc), **fields)
    if 200 <= status < 300:  # executed, but the answer cannot be read
        return Outcome(
            AttemptOutcome.AMBIGUOUS,
            unknown_cause=NO_RESPONSE,
            **{**fields, "error_code": "unreadable_response"},
        )
    return Outcome(AttemptOutcome.AMBIGUOUS, unknown_cause=NO_RESPONSE, **fields)


def classify_network(cause: BaseException | None, error_class: str) -> Outcome:
    """A request that got no HTTP answer: not sent at all (refused, DNS, connect timeout), or
    sent with no answer read (read timeout, connection cut)."""
    fields: dict[str, Any] = {
        "error_class": type(cause).__name__ if cause is not None else error_class,
        "message": clip(str(cause) if cause is not None else error_class),
    }
    if isinstance(cause, requests.exceptions.ConnectTimeout) or _opening_failed(cause):
        return Outcome(AttemptOutcome.NOT_EXECUTED, error_code="connect_failed", **fields)
    if isinstance(
        cause,
        requests.exceptions.InvalidURL
        | requests.exceptions.MissingSchema
        | requests.exceptions.InvalidSchema,
    ):
        return Outcome(AttemptOutcome.NOT_EXECUTED, error_code="connect_failed", **fields)
    code = (
        "read_timeout"
        if isinstance(cause, requests.exceptions.ReadTimeout | urllib3.exceptions.ReadTimeoutError)
        else "no_response"
    )
    return Outcome(AttemptOutcome.AMBIGUOUS, unknown_cause=NO_RESPONSE, error_code=code, **fields)


def _opening_failed(cause: BaseException | None) -> bool:
    """Whether the error chain says the connection never opened (refused, DNS, unreachable,
    connect timeout): then nothing was sent. ``requests`` wraps urllib3's MaxRetryError,
    whose ``reason`` is the error met while connecting."""
    seen = 0
    while cause is not None and seen < 8:
        if type(cause).__name__ in _CONNECT_ERRORS or isinstance(cause, ConnectionRefusedError):
            return True
        for arg in getattr(cause, "args", ()):
            if isinstance(arg, BaseException) and _names_connect_error(arg):
                return True
        if _names_connect_error(getattr(cause, "reason", None)):
            return True
        cause = cause.__cause__ or cause.__context__
        seen += 1
    return False


def _names_connect_error(error: object) -> bool:
    if not isinstance(error, BaseException):
        return False
    if isinstance(error, ConnectionRefusedError) or type(error).__name__ in _CONNECT_ERRORS:
        return True
    reason = getattr(error, "reason", None)
    return isinstance(reason, BaseException) and (
        isinstance(reason, ConnectionRefusedError) or type(reason).__name__ in _CONNECT_ERRORS
    )


# -- what an error body says -----------------------------------------------------------------


def is_receipt_taken(exc: BaseException) -> bool:
    """Razorpay refused an order because its receipt is already used ("Order receipt should
    be unique"): the order of this receipt exists, made by an earlier attempt."""
    if not isinstance(exc, RazorpayHTTPError) or exc.http_status != 400:
        return False
    text = exc.description.lower()
    return "receipt" in text and any(w in text for w in ("unique", "already", "same receipt"))


def is_order_already_paid(exc: BaseException) -> bool:
    """Razorpay refused a payment because the order already has its successful payment (an
    order takes one): the money is taken, by an earlier attempt of the same key generation."""
    if not isinstance(exc, RazorpayHTTPError) or not 400 <= exc.http_status < 500:
        return False
    text = f"{exc.reason or ''} {exc.description}".lower()
    return "order_already_paid" in text or any(
        phrase in text
        for phrase in (
            "order already paid",
            "already been paid",
            "order is already paid",
            "payment already made",
            "payment already done",
            "already has a payment",
            "payment has already been made",
        )
    )


def is_different_request_for_key(exc: RazorpayHTTPError) -> bool:
    return "different request" in exc.description.lower()


def _payment_id_of(exc: RazorpayHTTPError) -> str | None:
    """The payment a failed payment request still made (Razorpay names it in
    ``error.metadata.payment_id`` when the gateway declined it), or None."""
    value = exc.metadata.get("payment_id")
    return str(value) if value else None
