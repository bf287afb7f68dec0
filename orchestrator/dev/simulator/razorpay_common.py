"""Wire-level helpers for the Razorpay side: the error shape, Basic auth, JSON params,
collections and the validation Razorpay documents for its request fields.

Descriptions are Razorpay's own (its public error descriptions and API docs), so a client
that matches on them behaves here as it would against the real API.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from orchestrator.dev.simulator.common import RETRY_AFTER_S, Response, json_response
from orchestrator.dev.simulator.state import (
    RazorpayOrderRecord,
    RazorpayPaymentRecord,
    RazorpayRefundRecord,
    State,
)

RAZORPAY_ID_CHARS = 14  # Razorpay ids are a prefix and 14 alphanumerics: pay_29QQoUBi66xm2f
RAZORPAY_TEST_KEY_PREFIX = "rzp_test_"
# A JSON body that did not parse; routing answers it with a 400.
INVALID_JSON = "__invalid_json__"
MAX_NOTES = 15
MAX_NOTE_CHARS = 256
MAX_COLLECTION_COUNT = 100
DEFAULT_COLLECTION_COUNT = 10
SERVER_ERROR_DESCRIPTION = (
    "The server encountered an error. The incident has been reported to admins."
)
ID_DOES_NOT_EXIST = "The id provided does not exist"
# The documented format of an X-Refund-Idempotency key.
_IDEMPOTENCY_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{10,}$")


@dataclass(frozen=True)
class RzCall:
    """One Razorpay API call: path segments after the prefix (``["v1", "orders", id]``),
    parsed params and the caller's key secret (it signs ``razorpay_signature``)."""

    parts: list[str]
    params: dict[str, Any]
    key_secret: str = ""


class RazorpayError(Exception):
    """A Razorpay API error; raised by handlers, answered in Razorpay's error shape."""

    def __init__(
        self,
        status: int,
        description: str,
        *,
        code: str = "BAD_REQUEST_ERROR",
        source: str = "business",
        step: str = "payment_initiation",
        reason: str = "input_validation_failed",
        field: str | None = None,
        metadata: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(description)
        self.status = status
        self.error: dict[str, Any] = {
            "code": code,
            "description": description,
            "source": source,
            "step": step,
            "reason": reason,
            "metadata": dict(metadata or {}),
        }
        if field is not None:
            self.error["field"] = field

    def response(self) -> Response:
        return json_response(self.status, {"error": self.error})


def invalid(description: str, field: str | None = None, **extra: Any) -> RazorpayError:
    """A 400 for a request Razorpay's validation refuses."""
    return RazorpayError(400, description, field=field, **extra)


def not_found(field: str = "id") -> RazorpayError:
    """Razorpay answers an unknown (or another account's) id with a 400, not a 404."""
    return invalid(ID_DOES_NOT_EXIST, field)


def generic_error(status: int, description: str, code: str = "BAD_REQUEST_ERROR") -> Response:
    """Errors that are not about the request's content carry "NA" source, step and reason."""
    return RazorpayError(
        status, description, code=code, source="NA", step="NA", reason="NA"
    ).response()


def unauthorized() -> Response:
    return generic_error(401, "Authentication failed")


def url_not_found() -> Response:
    return generic_error(400, "The requested URL was not found on the server.")


def server_error(status: int = 500) -> Response:
    return generic_error(status, SERVER_ERROR_DESCRIPTION, "SERVER_ERROR")


def rate_limited() -> Response:
    resp = generic_error(429, "Request failed. Please try after sometime.")
    resp.headers["Retry-After"] = str(RETRY_AFTER_S)
    return resp


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """``(key_id, key_secret)`` from an ``Authorization: Basic ...`` header."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    key_id, sep, secret = decoded.partition(":")
    return (key_id, secret) if sep and key_id else None


def authorized_key_id(header: str | None, key_id: str | None, key_secret: str | None) -> str | None:
    """The key id of a request whose credentials are right, else None.

    Without configured credentials any ``rzp_test_`` key id with a non-empty secret passes,
    as the Stripe side accepts any ``sk_test_`` key.
    """
    creds = basic_credentials(header)
    if creds is None:
        return None
    given_id, given_secret = creds
    if key_id is not None or key_secret is not None:
        return given_id if (given_id, given_secret) == (key_id, key_secret) else None
    if given_id.startswith(RAZORPAY_TEST_KEY_PREFIX) and given_secret:
        return given_id
    return None


def parse_params(method: str, query: str, body: bytes) -> dict[str, Any]:
    """Query parameters for GET, the JSON object body otherwise (the SDK sends JSON)."""
    if method in ("GET", "DELETE"):
        return dict(parse_qsl(query, keep_blank_values=True))
    if not body.strip():
        return {}
    try:
        parsed = json.loads(body)
    except ValueError:
        return {INVALID_JSON: True}
    return parsed if isinstance(parsed, dict) else {INVALID_JSON: True}


def check_idempotency_key(key: str) -> Response | None:
    """A 400 for an ``X-Refund-Idempotency`` key outside the documented format."""
    if _IDEMPOTENCY_KEY_RE.match(key):
        return None
    return invalid(
        "The idempotency key must be at least 10 characters long and can contain "
        "alphabets, numbers, hyphens and underscores only.",
        "X-Refund-Idempotency",
    ).response()


def idempotency_key_in_use() -> Response:
    """Razorpay's documented 409 for a key whose first request is still being processed."""
    return generic_error(409, "Request failed because another payment operation is in progress")


def idempotency_key_mismatch() -> Response:
    """Razorpay's documented answer to a key reused with another request body."""
    return generic_error(
        400, "Different request with the same idempotency key has already been processed."
    )


def reject_extra_fields(params: Mapping[str, Any], allowed: Iterable[str]) -> None:
    """Razorpay refuses fields an endpoint does not take (``extra_field_sent``)."""
    extra = sorted(set(params) - set(allowed))
    if extra:
        raise invalid(
            f"{', '.join(extra)} is/are not required and should not be sent",
            extra[0],
            reason="extra_field_sent",
        )


def require(params: Mapping[str, Any], *names: str) -> None:
    for name in names:
        if params.get(name) in (None, ""):
            raise invalid(f"The {name} field is required.", name)


def parse_int(params: Mapping[str, Any], name: str) -> int | None:
    """An integer field (JSON number, or digits from a query string); None when absent."""
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    if isinstance(raw, bool):
        raise invalid(f"The {name} must be an integer.", name)
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    if isinstance(raw, str) and raw.strip().lstrip("-").isdigit():
        return int(raw.strip())
    raise invalid(f"The {name} must be an integer.", name)


def parse_amount(params: Mapping[str, Any], currency: str) -> int:
    """A positive amount in the currency's subunit; at least 1.00 as Razorpay requires."""
    amount = parse_int(params, "amount")
    if amount is None:
        raise invalid("The amount field is required.", "amount")
    if amount < 100:
        raise invalid(f"The amount must be at least {currency} 1.00", "amount")
    return amount


def parse_currency(params: Mapping[str, Any]) -> str:
    raw = params.get("currency")
    if raw in (None, ""):
        raise invalid("The currency field is required.", "currency")
    if not isinstance(raw, str) or not re.fullmatch(r"[A-Z]{3}", raw):
        raise invalid("Currency is not supported", "currency")
    return raw


def parse_notes(params: Mapping[str, Any]) -> dict[str, Any] | list[Any]:
    """Notes as stored: a key-value object, or ``[]`` when empty (Razorpay answers empty
    notes as an empty JSON array, not an object)."""
    raw = params.get("notes")
    if raw in (None, [], {}):
        return []
    if not isinstance(raw, dict):
        raise invalid("The notes must be an array.", "notes")
    if len(raw) > MAX_NOTES:
        raise invalid(
            f"Number of fields in notes should be less than or equal to {MAX_NOTES}", "notes"
        )
    for key, value in raw.items():
        if isinstance(value, (dict, list)) or len(str(value)) > MAX_NOTE_CHARS:
            raise invalid(
                f"The notes.{key} may not be greater than {MAX_NOTE_CHARS} characters.", "notes"
            )
    return dict(raw)


def collection(items: list[dict[str, Any]], params: Mapping[str, Any]) -> Response:
    """A Razorpay collection of ``items`` (newest first) after ``from`` / ``to`` (unix
    seconds) and ``count`` / ``skip``."""
    count = parse_int(params, "count")
    count = DEFAULT_COLLECTION_COUNT if count is None else count
    if not 1 <= count <= MAX_COLLECTION_COUNT:
        raise invalid(f"The count must be between 1 and {MAX_COLLECTION_COUNT}.", "count")
    skip = parse_int(params, "skip") or 0
    if skip < 0:
        raise invalid("The skip must be at least 0.", "skip")
    since, until = parse_int(params, "from"), parse_int(params, "to")
    selected = [
        item
        for item in items
        if (since is None or item["created_at"] >= since)
        and (until is None or item["created_at"] <= until)
    ][skip : skip + count]
    return json_response(200, {"entity": "collection", "count": len(selected), "items": selected})


# -- lookups (lock held) ---------------------------------------------------------------


def find_order(state: State, order_id: str, field: str = "id") -> RazorpayOrderRecord:
    record = state.rz_orders.get(order_id)
    if record is None:
        raise not_found(field)
    return record


def find_payment(state: State, payment_id: str, field: str = "id") -> RazorpayPaymentRecord:
    record = state.rz_payments.get(payment_id)
    if record is None:
        raise not_found(field)
    return record


def find_refund(state: State, refund_id: str) -> RazorpayRefundRecord:
    record = state.rz_refunds.get(refund_id)
    if record is None:
        raise not_found()
    return record
