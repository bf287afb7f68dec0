"""Wire-level helpers shared by the simulator's modules.

Responses and the Stripe / SendGrid error shapes, Stripe's form encoding and API-key
parsing from the ``Authorization`` header.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

RETRY_AFTER_S = 1
JSON_CONTENT_TYPE = "application/json"
_MASKED_KEY_PREFIXES = ("sk_test_", "sk_live_", "rk_test_", "rk_live_", "SG.")


@dataclass
class Response:
    """A response to send; ``saveable`` marks results Stripe keeps for a key."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    saveable: bool = False


def json_response(status: int, payload: object, *, saveable: bool = False) -> Response:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Response(status, body, {"Content-Type": JSON_CONTENT_TYPE}, saveable)


class StripeError(Exception):
    """A Stripe API error; ``saveable`` is False for validation errors."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        saveable: bool = False,
        extra: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.saveable = saveable
        self.error: dict[str, Any] = {"type": type_, "message": message}
        if code is not None:
            self.error["code"] = code
        if param is not None:
            self.error["param"] = param
        if extra:
            self.error.update(extra)

    def response(self) -> Response:
        return json_response(self.status, {"error": self.error}, saveable=self.saveable)


def refused(message: str, code: str, param: str | None = None) -> StripeError:
    """A 400 about the objects' state (not the request's shape): saved under the idempotency
    key like a success, as Stripe does."""
    return StripeError(400, message, code=code, param=param, saveable=True)


def stripe_error(status: int, type_: str, message: str, code: str | None = None) -> Response:
    return StripeError(status, message, type_=type_, code=code).response()


def sendgrid_error(status: int, message: str, field_name: str | None = None) -> Response:
    errors = [{"message": message, "field": field_name, "help": None}]
    return json_response(status, {"errors": errors})


def provider_error(provider: str, status: int, message: str) -> Response:
    """A provider-shaped error for the fault paths (500/503)."""
    if provider == "sendgrid":
        return sendgrid_error(status, message)
    return stripe_error(status, "api_error", message)


_GATEWAY_REASONS = {
    502: "Bad Gateway",
    503: "Service Temporarily Unavailable",
    504: "Gateway Time-out",
}


def html_gateway_error(status: int) -> Response:
    """An HTML error page as a load balancer in front of an API sends it: not JSON, so a
    client that parses every error body as JSON fails on it."""
    title = f"{status} {_GATEWAY_REASONS.get(status, 'Error')}"
    page = (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n"
        "</body>\r\n</html>\r\n"
    )
    return Response(status, page.encode(), {"Content-Type": "text/html"})


def rate_limited(provider: str) -> Response:
    if provider == "sendgrid":
        resp = sendgrid_error(429, "too many requests")
    else:
        resp = StripeError(
            429,
            "Request rate limit exceeded. Learn more about rate limits here "
            "https://stripe.com/docs/rate-limits.",
            code="rate_limit",
        ).response()
        resp.headers["Stripe-Should-Retry"] = "true"
    resp.headers["Retry-After"] = str(RETRY_AFTER_S)
    return resp


def parse_form(raw: str) -> dict[str, Any]:
    """Parse a Stripe form body/query (``a[b]=c``, ``a[]=x``, ``a[0]=x``) into nested data."""
    result: dict[str, Any] = {}
    for key, value in parse_qsl(raw, keep_blank_values=True):
        parts = key.replace("]", "").split("[")
        _assign_nested(result, parts, value)
    return result


def _assign_nested(target: dict[str, Any], parts: list[str], value: str) -> None:
    node: Any = target
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        if isinstance(node, list):
            if last:
                node.append(value)
                return
            node.append({})
            node = node[-1]
            continue
        if last:
            node[part] = value
            return
        next_is_list = parts[index + 1] == "" or parts[index + 1].isdigit()
        if part not in node or not isinstance(node[part], (dict, list)):
            node[part] = [] if next_is_list else {}
        node = node[part]


def mask_key(key: str) -> str:
    """Mask an API key like Stripe does; never reveals more than the last 4 chars."""
    prefix = next((p for p in _MASKED_KEY_PREFIXES if key.startswith(p)), "")
    if len(key) - len(prefix) < 8:
        return prefix + "****"
    return prefix + "****" + key[-4:]


def bearer_token(header: str | None) -> str | None:
    """Extract the API key from ``Bearer <key>`` or ``Basic base64(<key>:)``."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return value or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value).decode()
        except (ValueError, UnicodeDecodeError):
            return None
        return decoded.partition(":")[0] or None
    return None
