"""In-process Stripe- and SendGrid-compatible HTTP API for tests, demos and benchmarks.

What is simulated
-----------------
* **Stripe** (``/v1/...``, form-encoded bodies exactly as the official ``stripe`` SDK
  sends them): PaymentIntents (create / retrieve / search) and Refunds (create /
  retrieve / list), Bearer API-key authentication, the ``Request-Id`` header and
  Stripe's idempotency semantics: the first *executed* response for an
  ``Idempotency-Key`` (2xx, 402 card errors, 5xx and business-rule 400s) is saved
  per API key and replayed with ``Idempotent-Replayed: true``; the same key with other
  parameters answers 400 ``idempotency_error``; a key still executing answers 409
  ``idempotency_key_in_use``. Auth failures, 429s, 409s, outages and parameter
  validation failures are never saved. Idempotency applies to POST requests only.
  Test payment methods (``pm_card_visa``, ``pm_card_chargeDeclined``, ...) drive the
  outcome; ``pm_sim_processing`` / ``pm_sim_processing_fails`` stay ``processing``
  for ``processing_delay_s`` and then settle (evaluated lazily on read).
* **SendGrid** (``POST /v3/mail/send``, v3 JSON body): validation errors in SendGrid's
  ``{"errors": [...]}`` shape, 202 with ``X-Message-Id`` on success. SendGrid has no
  idempotency: a re-sent request is delivered again.
* **Control plane** (``/_sim/...``, JSON, no auth) so tests in another process can
  inject faults, reset state and inspect what happened (see :class:`SimulatorControl`).
* **Webhooks**: with a target set (constructor ``webhook_url``/``webhook_secret``,
  :meth:`Simulator.set_webhook` or ``POST /_sim/webhooks``), PaymentIntent status changes
  (``payment_intent.succeeded``, ``.processing``, ``.payment_failed``,
  ``.requires_action``) and refunds (``charge.refunded``) are POSTed as Stripe events, signed
  like Stripe (``Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">``), from a
  background thread so API answers are never delayed; ``processing`` intents settle on a
  timer so their final event is sent without anyone reading them. A delivery answered
  non-2xx (or not at all) is retried a few times. ``GET /_sim/webhooks`` lists deliveries.

Fault model
-----------
Each provider (``stripe``, ``sendgrid``) has its own :class:`FaultConfig`, replaced
wholesale by :meth:`Simulator.set_faults` / ``POST /_sim/faults``. For every provider
request:

1. ``outage`` -> 503 immediately, before authentication (not executed, not saved).
   Then authentication (401, never saved).
2. Idempotency check (Stripe POST with a key): 409 / 400 mismatch / replay decision;
   a fresh key is marked *in flight* so concurrent duplicates see 409.
3. ``latency_ms`` sleep.
4. Probabilistic faults, each drawn independently from a seeded ``random.Random``
   (skipped entirely when ``first_try_only`` is set and the key was seen before),
   applied in this order: ``rate_429`` (429, nothing executed or saved),
   ``rate_cut_before_execute`` (TCP reset, nothing executed or saved), ``rate_500``
   (500 saved against the key, nothing executed), then the request executes, then
   ``rate_500_after_execute`` (500 saved instead of the real response),
   ``rate_cut_after_execute`` (real response saved, connection reset) and
   ``rate_timeout`` (real response saved, answer delayed by ``timeout_sleep_s``).
   On an idempotent replay the "before" faults still apply and the "after" faults act
   on the replayed response, but nothing new is saved.

``search_lag_s`` hides objects younger than that from search, and
``processing_delay_s`` is how long ``pm_sim_processing*`` intents stay ``processing``.
Webhook faults (Stripe's config): ``webhook_duplicate_rate`` delivers an event twice with
that probability; ``webhook_delay_ms`` holds each event that long before delivery; with
``webhook_reorder`` set, once the oldest held event is due every queued event goes out
newest first (so with a delay, ``succeeded`` can arrive before ``processing``).

Every provider request is appended to the requests log with ``fault`` set to
the name of the fault field that fired (``"outage"``, ``"rate_429"``,
``"rate_cut_before_execute"``, ``"rate_500"``, ``"rate_500_after_execute"``,
``"rate_cut_after_execute"``, ``"rate_timeout"``) or None, and
``status`` None when the connection was cut. :meth:`Simulator.reset` clears objects,
logs, faults *and* saved idempotency keys, and re-seeds the fault RNG.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import dataclasses
import hashlib
import hmac
import json
import random
import re
import signal
import socket
import string
import struct
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

if TYPE_CHECKING:
    import requests

__all__ = ["FaultConfig", "Simulator", "SimulatorControl", "serve", "sign_webhook"]

PROVIDERS: tuple[str, ...] = ("stripe", "sendgrid")
MIN_AMOUNT_MINOR_UNITS = 1
MAX_AMOUNT_MINOR_UNITS = 99_999_999
MAX_METADATA_KEYS = 50
MAX_METADATA_KEY_CHARS = 40
MAX_METADATA_VALUE_CHARS = 500
DEFAULT_LIST_LIMIT = 10
MAX_LIST_LIMIT = 100
RETRY_AFTER_S = 1
SERVE_POLL_INTERVAL_S = 0.05
IDLE_CONNECTION_TIMEOUT_S = 120.0
LISTEN_BACKLOG = 256
STRIPE_ID_CHARS = 24
REQUEST_ID_CHARS = 14
JSON_CONTENT_TYPE = "application/json"
# Webhook delivery: Stripe retries for days; a few quick tries is enough for tests and demos.
WEBHOOK_MAX_ATTEMPTS = 3
WEBHOOK_RETRY_BASE_S = 0.2
WEBHOOK_TIMEOUT_S = 5.0
# How often the webhook thread wakes to settle processing intents and send due events.
WEBHOOK_TICK_S = 0.02
STRIPE_API_VERSION = "2024-06-20"
_ALNUM = string.ascii_letters + string.digits
_BYTE_TO_ALNUM = "".join(_ALNUM[i % len(_ALNUM)] for i in range(256)).encode("ascii")
_REFUND_REASONS = frozenset({"duplicate", "fraudulent", "requested_by_customer"})
_MASKED_KEY_PREFIXES = ("sk_test_", "sk_live_", "rk_test_", "rk_live_", "SG.")
_CURRENCY_RE = re.compile(r"^[a-z]{3}$")
_INTEGER_RE = re.compile(r"^-?\d+$")
_SEARCH_CLAUSE_RE = re.compile(
    r"""^\s*(?:metadata\[(?P<mq>['"])(?P<mkey>.+?)(?P=mq)\]|(?P<field>status|currency|customer))"""
    r"""\s*:\s*(?P<vq>['"])(?P<value>.*?)(?P=vq)\s*$"""
)
_SENDGRID_UNAUTHORIZED = "The provided authorization grant is invalid, expired, or revoked"
_HTTP_REASONS = {
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


# --------------------------------------------------------------------------- faults


@dataclass(frozen=True)
class FaultConfig:
    """Fault injection settings for one provider (all off by default)."""

    latency_ms: float = 0.0
    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_500_after_execute: float = 0.0
    rate_cut_before_execute: float = 0.0
    rate_cut_after_execute: float = 0.0
    rate_timeout: float = 0.0
    timeout_sleep_s: float = 10.0
    outage: bool = False
    search_lag_s: float = 0.0
    first_try_only: bool = False
    processing_delay_s: float = 2.0
    webhook_duplicate_rate: float = 0.0
    webhook_delay_ms: float = 0.0
    webhook_reorder: bool = False

    @classmethod
    def from_fields(cls, fields: Mapping[str, object]) -> FaultConfig:
        """Build a config from user input, rejecting unknown fields and bad values."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for name, raw in fields.items():
            if name not in known:
                raise ValueError(f"unknown fault field: {name!r}")
            values[name] = _coerce_fault_value(name, raw, known[name].default)
        return cls(**values)

    def rates(self) -> tuple[float, ...]:
        """The probabilistic fault rates, in draw order."""
        return (
            self.rate_429,
            self.rate_cut_before_execute,
            self.rate_500,
            self.rate_500_after_execute,
            self.rate_cut_after_execute,
            self.rate_timeout,
        )


def _coerce_fault_value(name: str, raw: object, default: object) -> float | bool:
    if isinstance(default, bool):
        if not isinstance(raw, bool):
            raise ValueError(f"fault field {name!r} must be a boolean")
        return raw
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise ValueError(f"fault field {name!r} must be a number")
    value = float(raw)
    if value < 0 or ((name.startswith("rate_") or name.endswith("_rate")) and value > 1):
        raise ValueError(f"fault field {name!r} out of range: {value}")
    return value


@dataclass(frozen=True)
class _Draw:
    """The probabilistic faults that fired for one request."""

    rate_429: bool = False
    cut_before_execute: bool = False
    rate_500: bool = False
    rate_500_after_execute: bool = False
    cut_after_execute: bool = False
    timeout: bool = False


_NO_FAULTS = _Draw()


# --------------------------------------------------------------------------- responses


@dataclass
class _Response:
    """A response to send; ``saveable`` marks results Stripe keeps for a key."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    saveable: bool = False


def _json_response(status: int, payload: object, *, saveable: bool = False) -> _Response:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return _Response(status, body, {"Content-Type": JSON_CONTENT_TYPE}, saveable)


class _StripeError(Exception):
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

    def response(self) -> _Response:
        return _json_response(self.status, {"error": self.error}, saveable=self.saveable)


def _stripe_error(status: int, type_: str, message: str, code: str | None = None) -> _Response:
    return _StripeError(status, message, type_=type_, code=code).response()


def _sendgrid_error(status: int, message: str, field_name: str | None = None) -> _Response:
    errors = [{"message": message, "field": field_name, "help": None}]
    return _json_response(status, {"errors": errors})


def _provider_error(provider: str, status: int, message: str) -> _Response:
    """A provider-shaped error for the fault paths (500/503)."""
    if provider == "sendgrid":
        return _sendgrid_error(status, message)
    return _stripe_error(status, "api_error", message)


def _rate_limited(provider: str) -> _Response:
    if provider == "sendgrid":
        resp = _sendgrid_error(429, "too many requests")
    else:
        resp = _StripeError(
            429,
            "Request rate limit exceeded. Learn more about rate limits here "
            "https://stripe.com/docs/rate-limits.",
            code="rate_limit",
        ).response()
        resp.headers["Stripe-Should-Retry"] = "true"
    resp.headers["Retry-After"] = str(RETRY_AFTER_S)
    return resp


# --------------------------------------------------------------------------- parsing


def _parse_form(raw: str) -> dict[str, Any]:
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


def _mask_key(key: str) -> str:
    """Mask an API key like Stripe does; never reveals more than the last 4 chars."""
    prefix = next((p for p in _MASKED_KEY_PREFIXES if key.startswith(p)), "")
    if len(key) - len(prefix) < 8:
        return prefix + "****"
    return prefix + "****" + key[-4:]


def _bearer_token(header: str | None) -> str | None:
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


# --------------------------------------------------------------------------- state


@dataclass
class _PaymentIntentRecord:
    obj: dict[str, Any]
    created_mono: float
    settle_at_mono: float | None = None
    settle_fails: bool = False


@dataclass
class _Saved:
    response: _Response
    request_id: str


@dataclass
class _IdempotencyEntry:
    fingerprint: tuple[object, ...]
    in_flight: bool = True
    saved: _Saved | None = None


@dataclass(frozen=True)
class _CardOutcome:
    """What confirming with a test payment method does."""

    status: str
    error_code: str | None = None
    decline_code: str | None = None
    message: str = ""
    settle_fails: bool = False


_SUCCEEDS = _CardOutcome("succeeded")
_DECLINED_MESSAGE = "Your card was declined."
_TEST_PAYMENT_METHODS: dict[str, _CardOutcome] = {
    "pm_card_visa": _SUCCEEDS,
    "pm_card_mastercard": _SUCCEEDS,
    "pm_card_amex": _SUCCEEDS,
    "pm_card_chargeDeclined": _CardOutcome(
        "requires_payment_method", "card_declined", "generic_decline", _DECLINED_MESSAGE
    ),
    "pm_card_chargeDeclinedInsufficientFunds": _CardOutcome(
        "requires_payment_method",
        "card_declined",
        "insufficient_funds",
        "Your card has insufficient funds.",
    ),
    "pm_card_chargeDeclinedProcessingError": _CardOutcome(
        "requires_payment_method",
        "processing_error",
        None,
        "An error occurred while processing your card. Try again in a little bit.",
    ),
    "pm_card_authenticationRequired": _CardOutcome("requires_action"),
    "pm_sim_processing": _CardOutcome("processing"),
    "pm_sim_processing_fails": _CardOutcome("processing", settle_fails=True),
}


class _State:
    """All simulator state, guarded by one lock."""

    def __init__(
        self, stripe_api_key: str | None, sendgrid_api_key: str | None, seed: int | None
    ) -> None:
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.stripe_api_key = stripe_api_key
        self.sendgrid_api_key = sendgrid_api_key
        self.seed = seed
        self.id_rng = random.Random()
        self.webhook_url: str | None = None
        self.webhook_secret: str | None = None
        self.webhook_wakeup = threading.Condition(self.lock)
        self._init_data()

    def _init_data(self) -> None:
        self.fault_rng = random.Random(self.seed)
        self.faults: dict[str, FaultConfig] = {p: FaultConfig() for p in PROVIDERS}
        self.payment_intents: dict[str, _PaymentIntentRecord] = {}
        self.metadata_index: dict[tuple[str, str], list[str]] = {}
        self.refunds: dict[str, dict[str, Any]] = {}
        self.refunds_by_pi: dict[str, list[str]] = {}
        self.mail: list[dict[str, Any]] = []
        self.log: list[dict[str, Any]] = []
        self.idempotency: dict[tuple[str, str], _IdempotencyEntry] = {}
        self.seen_keys: set[tuple[str, str, str]] = set()
        self.settling: set[str] = set()  # processing intents waiting for their timer
        self.webhook_queue: list[_WebhookDelivery] = []
        self.webhook_log: list[dict[str, Any]] = []

    def reset(self) -> None:
        with self.lock:
            self._init_data()

    def new_id(self, prefix: str, length: int = STRIPE_ID_CHARS) -> str:
        return prefix + self.id_rng.randbytes(length).translate(_BYTE_TO_ALNUM).decode()

    def set_faults(self, provider: str, fields: Mapping[str, object]) -> None:
        if provider not in (*PROVIDERS, "all"):
            raise ValueError(f"unknown provider: {provider!r}")
        config = FaultConfig.from_fields(fields)
        with self.lock:
            for name in PROVIDERS if provider == "all" else (provider,):
                self.faults[name] = config

    def faults_for(self, provider: str) -> FaultConfig:
        with self.lock:
            return self.faults[provider]

    def draw(self, config: FaultConfig) -> _Draw:
        rates = config.rates()
        if not any(rates):
            return _NO_FAULTS
        with self.lock:
            fired = [self.fault_rng.random() < rate for rate in rates]
        return _Draw(*fired)

    def mark_seen(self, provider: str, api_key: str, idem_key: str | None) -> bool:
        """Record a key; True if it was seen before (keyless requests are never seen)."""
        if idem_key is None:
            return False
        entry = (provider, api_key, idem_key)
        with self.lock:
            seen = entry in self.seen_keys
            self.seen_keys.add(entry)
        return seen

    def record(self, entry: dict[str, Any]) -> None:
        with self.lock:
            self.log.append(entry)

    def record_webhook(self, entry: dict[str, Any]) -> None:
        with self.lock:
            self.webhook_log.append(entry)

    def set_webhook(self, url: str | None, secret: str | None) -> None:
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError("webhook url must be an http(s):// URL")
        with self.lock:
            self.webhook_url = url
            self.webhook_secret = secret

    # -- snapshots (lock held by caller-facing wrappers) --------------------------

    def snapshot_payment_intents(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        with self.lock:
            for record in self.payment_intents.values():
                _settle(self, record, now)
            return copy.deepcopy([r.obj for r in self.payment_intents.values()])

    def snapshot(self, name: str) -> list[dict[str, Any]]:
        with self.lock:
            source: list[dict[str, Any]]
            if name == "refunds":
                source = list(self.refunds.values())
            elif name == "mail":
                source = self.mail
            elif name == "webhooks":
                source = self.webhook_log
            else:
                source = self.log
            return copy.deepcopy(source)


# --------------------------------------------------------------------------- idempotency


@dataclass(frozen=True)
class _Reservation:
    """Outcome of the idempotency check for one request."""

    key: tuple[str, str] | None
    reserved: bool = False
    replay: _Saved | None = None
    rejection: _Response | None = None


_NO_KEY = _Reservation(None)


def _reserve(state: _State, key: tuple[str, str], fingerprint: tuple[object, ...]) -> _Reservation:
    """Claim an idempotency key, or decide on replay / 409 / 400 for it."""
    with state.lock:
        entry = state.idempotency.get(key)
        if entry is None or (entry.saved is None and not entry.in_flight):
            state.idempotency[key] = _IdempotencyEntry(fingerprint)
            return _Reservation(key, reserved=True)
        if entry.in_flight:
            return _Reservation(key, rejection=_key_in_use(key[1]))
        if entry.fingerprint != fingerprint:
            return _Reservation(key, rejection=_key_mismatch(key[1]))
        return _Reservation(key, replay=entry.saved)


def _release(state: _State, reservation: _Reservation, saved: _Saved | None) -> None:
    """Finish a claimed key, saving the response if there is one."""
    if not reservation.reserved or reservation.key is None:
        return
    with state.lock:
        entry = state.idempotency.get(reservation.key)
        if entry is None:  # reset() while in flight
            return
        entry.in_flight = False
        if saved is not None:
            entry.saved = saved


def _key_in_use(key: str) -> _Response:
    resp = _StripeError(
        409,
        "There is currently another in-progress request using this idempotent key "
        "(that probably means you submitted twice, and the other request is still "
        f"going through): {key}. Please try again later.",
        code="idempotency_key_in_use",
    ).response()
    resp.headers["Stripe-Should-Retry"] = "true"
    return resp


def _key_mismatch(key: str) -> _Response:
    return _stripe_error(
        400,
        "idempotency_error",
        "Keys for idempotent requests can only be used with the same parameters they "
        f"were first used with. Try using a key other than '{key}' if you meant to "
        "execute a different request.",
    )


# --------------------------------------------------------------------------- stripe API


def _settle(state: _State, record: _PaymentIntentRecord, now_mono: float) -> None:
    """Lazily move a ``processing`` intent to its final status (lock held)."""
    if record.settle_at_mono is None or now_mono < record.settle_at_mono:
        return
    record.settle_at_mono = None
    obj = record.obj
    state.settling.discard(obj["id"])
    if record.settle_fails:
        obj["status"] = "requires_payment_method"
        obj["last_payment_error"] = _card_error_dict(
            _TEST_PAYMENT_METHODS["pm_card_chargeDeclined"], obj["payment_method"]
        )
        obj["payment_method"] = None
        _emit(state, "payment_intent.payment_failed", obj)
        return
    _mark_succeeded(state, obj)
    _emit(state, "payment_intent.succeeded", obj)


def _mark_succeeded(state: _State, obj: dict[str, Any]) -> None:
    obj["status"] = "succeeded"
    obj["amount_received"] = obj["amount"]
    obj["latest_charge"] = state.new_id("ch_")


def _card_error_dict(outcome: _CardOutcome, payment_method: str | None) -> dict[str, Any]:
    error: dict[str, Any] = {
        "type": "card_error",
        "code": outcome.error_code,
        "message": outcome.message,
        "doc_url": "https://stripe.com/docs/error-codes/"
        + (outcome.error_code or "").replace("_", "-"),
        "payment_method": {"id": payment_method, "object": "payment_method"},
    }
    if outcome.decline_code is not None:
        error["decline_code"] = outcome.decline_code
    return error


def _param_str(params: Mapping[str, Any], name: str) -> str | None:
    value = params.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _StripeError(400, f"Invalid string: {name}", param=name)
    return value


def _parse_amount(raw: str | None, name: str = "amount") -> int | None:
    if raw is None:
        return None
    if not _INTEGER_RE.match(raw):
        raise _StripeError(400, f"Invalid integer: {raw}", param=name)
    amount = int(raw)
    if amount < MIN_AMOUNT_MINOR_UNITS:
        raise _StripeError(400, "This value must be greater than or equal to 1.", param=name)
    if amount > MAX_AMOUNT_MINOR_UNITS:
        raise _StripeError(
            400, "Amount must be no more than 99999999.", code="amount_too_large", param=name
        )
    return amount


def _require(value: object, name: str) -> None:
    if value is None or value == "":
        raise _StripeError(
            400, f"Missing required param: {name}.", code="parameter_missing", param=name
        )


def _parse_metadata(params: Mapping[str, Any]) -> dict[str, str]:
    raw = params.get("metadata", {})
    if raw == "":
        return {}
    if not isinstance(raw, dict):
        raise _StripeError(400, "Invalid object", param="metadata")
    metadata: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(value, str):
            raise _StripeError(400, "Invalid metadata value", param=f"metadata[{key}]")
        if len(key) > MAX_METADATA_KEY_CHARS or len(value) > MAX_METADATA_VALUE_CHARS:
            raise _StripeError(400, "Metadata key or value too long", param=f"metadata[{key}]")
        if value != "":
            metadata[key] = value
    if len(metadata) > MAX_METADATA_KEYS:
        raise _StripeError(400, "Too many metadata keys", param="metadata")
    return metadata


def _parse_currency(raw: str | None) -> str:
    _require(raw, "currency")
    currency = (raw or "").lower()
    if not _CURRENCY_RE.match(currency):
        raise _StripeError(
            400, f"Invalid currency: {raw}.", code="invalid_currency", param="currency"
        )
    return currency


def _lookup_payment_method(payment_method: str | None) -> _CardOutcome | None:
    if payment_method is None:
        return None
    outcome = _TEST_PAYMENT_METHODS.get(payment_method)
    if outcome is None:
        raise _StripeError(
            400,
            f"No such PaymentMethod: '{payment_method}'",
            code="resource_missing",
            param="payment_method",
        )
    return outcome


class _StripeAPI:
    """Stripe endpoint implementations; every method runs with the state lock held."""

    def __init__(self, state: _State) -> None:
        self.state = state

    def route(self, method: str, path: str, params: dict[str, Any]) -> _Response:
        parts = path.strip("/").split("/")
        handler = self._resolve(method, parts)
        if handler is None:
            return _stripe_error(
                404,
                "invalid_request_error",
                f"Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs "
                "or we can help at https://support.stripe.com/.",
            )
        try:
            with self.state.lock:
                return handler(parts, params)
        except _StripeError as exc:
            return exc.response()

    def _resolve(
        self, method: str, parts: list[str]
    ) -> Callable[[list[str], dict[str, Any]], _Response] | None:
        if len(parts) < 2 or parts[0] != "v1":
            return None
        table: dict[tuple[str, str, int], Callable[[list[str], dict[str, Any]], _Response]] = {
            ("POST", "payment_intents", 2): self._create_payment_intent,
            ("GET", "payment_intents", 3): self._get_payment_intent,
            ("POST", "refunds", 2): self._create_refund,
            ("GET", "refunds", 2): self._list_refunds,
            ("GET", "refunds", 3): self._get_refund,
        }
        if method == "GET" and parts[1:] == ["payment_intents", "search"]:
            return self._search_payment_intents
        return table.get((method, parts[1], len(parts)))

    # -- payment intents ---------------------------------------------------------

    def _create_payment_intent(self, _parts: list[str], params: dict[str, Any]) -> _Response:
        amount = _parse_amount(_param_str(params, "amount"))
        _require(amount, "amount")
        currency = _parse_currency(_param_str(params, "currency"))
        metadata = _parse_metadata(params)
        payment_method = _param_str(params, "payment_method")
        outcome = _lookup_payment_method(payment_method)
        confirm = _param_str(params, "confirm") == "true"
        if confirm and outcome is None:
            raise _StripeError(
                400,
                "You cannot confirm this PaymentIntent because it's missing a payment "
                "method. You can either update the PaymentIntent with a payment method "
                "and then confirm it again, or confirm it again directly with a payment "
                "method.",
                code="payment_intent_unexpected_state",
                param="payment_method",
            )
        record = self._new_payment_intent(params, amount or 0, currency, metadata, payment_method)
        if confirm and outcome is not None:
            self._confirm(record, outcome)
        return _json_response(200, record.obj, saveable=True)

    def _new_payment_intent(
        self,
        params: Mapping[str, Any],
        amount: int,
        currency: str,
        metadata: dict[str, str],
        payment_method: str | None,
    ) -> _PaymentIntentRecord:
        state = self.state
        pi_id = state.new_id("pi_")
        obj: dict[str, Any] = {
            "id": pi_id,
            "object": "payment_intent",
            "amount": amount,
            "amount_capturable": 0,
            "amount_received": 0,
            "amount_refunded": 0,
            "capture_method": "automatic",
            "client_secret": f"{pi_id}_secret_{state.new_id('')}",
            "confirmation_method": "automatic",
            "created": int(time.time()),
            "currency": currency,
            "customer": _param_str(params, "customer"),
            "description": _param_str(params, "description"),
            "last_payment_error": None,
            "latest_charge": None,
            "livemode": False,
            "metadata": metadata,
            "next_action": None,
            "payment_method": payment_method,
            "status": "requires_confirmation" if payment_method else "requires_payment_method",
        }
        record = _PaymentIntentRecord(obj, time.monotonic())
        state.payment_intents[pi_id] = record
        for item in metadata.items():
            state.metadata_index.setdefault(item, []).append(pi_id)
        return record

    def _confirm(self, record: _PaymentIntentRecord, outcome: _CardOutcome) -> None:
        obj = record.obj
        if outcome.status == "succeeded":
            _mark_succeeded(self.state, obj)
            _emit(self.state, "payment_intent.succeeded", obj)
        elif outcome.status == "requires_action":
            obj["status"] = "requires_action"
            obj["next_action"] = {"type": "use_stripe_sdk", "use_stripe_sdk": {}}
            _emit(self.state, "payment_intent.requires_action", obj)
        elif outcome.status == "processing":
            obj["status"] = "processing"
            delay_s = self.state.faults["stripe"].processing_delay_s
            record.settle_at_mono = record.created_mono + delay_s
            record.settle_fails = outcome.settle_fails
            self.state.settling.add(obj["id"])
            _emit(self.state, "payment_intent.processing", obj)
        else:
            self._decline(obj, outcome)

    def _decline(self, obj: dict[str, Any], outcome: _CardOutcome) -> None:
        error = _card_error_dict(outcome, obj["payment_method"])
        obj["status"] = "requires_payment_method"
        obj["last_payment_error"] = error
        obj["payment_method"] = None
        _emit(self.state, "payment_intent.payment_failed", obj)
        raise _StripeError(
            402,
            outcome.message,
            type_="card_error",
            saveable=True,
            extra={**error, "payment_intent": copy.deepcopy(obj)},
        )

    def _get_payment_intent(self, parts: list[str], _params: dict[str, Any]) -> _Response:
        record = self._find_payment_intent(parts[2], param="intent", status=404)
        return _json_response(200, record.obj)

    def _find_payment_intent(self, pi_id: str, *, param: str, status: int) -> _PaymentIntentRecord:
        record = self.state.payment_intents.get(pi_id)
        if record is None:
            raise _StripeError(
                status, f"No such payment_intent: '{pi_id}'", code="resource_missing", param=param
            )
        _settle(self.state, record, time.monotonic())
        return record

    def _search_payment_intents(self, _parts: list[str], params: dict[str, Any]) -> _Response:
        query = _param_str(params, "query")
        _require(query, "query")
        clauses = _parse_search_query(query or "")
        limit = _parse_limit(params)
        offset = _parse_page(_param_str(params, "page"))
        matches = self._search(clauses)
        page = matches[offset : offset + limit]
        has_more = len(matches) > offset + limit
        return _json_response(
            200,
            {
                "object": "search_result",
                "url": "/v1/payment_intents/search",
                "has_more": has_more,
                "next_page": str(offset + limit) if has_more else None,
                "data": page,
            },
        )

    def _search(self, clauses: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
        state = self.state
        lag_s = state.faults["stripe"].search_lag_s
        now = time.monotonic()
        metadata_clause = next((c for c in clauses if c[0] == "metadata"), None)
        if metadata_clause is not None:
            candidates = state.metadata_index.get((metadata_clause[1], metadata_clause[2]), [])
        else:
            candidates = list(state.payment_intents)
        results: list[dict[str, Any]] = []
        for pi_id in reversed(candidates):  # newest first, like Stripe
            record = state.payment_intents[pi_id]
            if now - record.created_mono < lag_s:
                continue
            _settle(state, record, now)
            if all(_clause_matches(record.obj, clause) for clause in clauses):
                results.append(record.obj)
        return results

    # -- refunds -----------------------------------------------------------------

    def _create_refund(self, _parts: list[str], params: dict[str, Any]) -> _Response:
        pi_id = _param_str(params, "payment_intent")
        _require(pi_id, "payment_intent")
        amount = _parse_amount(_param_str(params, "amount"))
        reason = _param_str(params, "reason")
        if reason is not None and reason not in _REFUND_REASONS:
            raise _StripeError(400, f"Invalid reason: {reason}", param="reason")
        metadata = _parse_metadata(params)
        record = self._find_payment_intent(pi_id or "", param="payment_intent", status=400)
        pi = record.obj
        refund_amount = _refundable_amount(pi, amount)
        refund = self._new_refund(pi, refund_amount, reason, metadata)
        return _json_response(200, refund, saveable=True)

    def _new_refund(
        self, pi: dict[str, Any], amount: int, reason: str | None, metadata: dict[str, str]
    ) -> dict[str, Any]:
        state = self.state
        refund: dict[str, Any] = {
            "id": state.new_id("re_"),
            "object": "refund",
            "amount": amount,
            "charge": pi["latest_charge"],
            "created": int(time.time()),
            "currency": pi["currency"],
            "metadata": metadata,
            "payment_intent": pi["id"],
            "reason": reason,
            "status": "succeeded",
        }
        pi["amount_refunded"] += amount
        state.refunds[refund["id"]] = refund
        state.refunds_by_pi.setdefault(pi["id"], []).append(refund["id"])
        _emit(state, "charge.refunded", _charge_of(pi))
        return refund

    def _get_refund(self, parts: list[str], _params: dict[str, Any]) -> _Response:
        refund = self.state.refunds.get(parts[2])
        if refund is None:
            raise _StripeError(
                404, f"No such refund: '{parts[2]}'", code="resource_missing", param="id"
            )
        return _json_response(200, refund)

    def _list_refunds(self, _parts: list[str], params: dict[str, Any]) -> _Response:
        pi_id = _param_str(params, "payment_intent")
        ids = self.state.refunds_by_pi.get(pi_id, []) if pi_id else list(self.state.refunds)
        newest_first = [self.state.refunds[r] for r in reversed(ids)]
        start = _position_after(newest_first, _param_str(params, "starting_after"))
        limit = _parse_limit(params)
        page = newest_first[start : start + limit]
        return _json_response(
            200,
            {
                "object": "list",
                "data": page,
                "has_more": len(newest_first) > start + limit,
                "url": "/v1/refunds",
            },
        )


def _refundable_amount(pi: Mapping[str, Any], requested: int | None) -> int:
    """Validate a refund against what remains on a succeeded intent."""
    if pi["status"] != "succeeded":
        raise _StripeError(
            400,
            f"This PaymentIntent ({pi['id']}) does not have a successful charge to refund.",
            code="charge_not_refundable",
            param="payment_intent",
            saveable=True,
        )
    remaining = int(pi["amount_received"]) - int(pi["amount_refunded"])
    if remaining <= 0:
        raise _StripeError(
            400,
            f"Charge {pi['latest_charge']} has already been refunded.",
            code="charge_already_refunded",
            saveable=True,
        )
    if requested is not None and requested > remaining:
        raise _StripeError(
            400,
            f"Refund amount ({requested}) is greater than unrefunded amount on charge "
            f"({remaining})",
            code="amount_too_large",
            param="amount",
            saveable=True,
        )
    return remaining if requested is None else requested


def _parse_search_query(query: str) -> list[tuple[str, str, str]]:
    """Parse ``metadata['k']:'v' AND status:'x'`` into (kind, key, value) clauses."""
    clauses: list[tuple[str, str, str]] = []
    for text in query.split(" AND "):
        match = _SEARCH_CLAUSE_RE.match(text)
        if match is None:
            raise _StripeError(
                400, f"Unsupported or invalid search query clause: {text.strip()!r}", param="query"
            )
        if match.group("mkey") is not None:
            clauses.append(("metadata", match.group("mkey"), match.group("value")))
        else:
            clauses.append(("field", match.group("field"), match.group("value")))
    return clauses


def _clause_matches(obj: Mapping[str, Any], clause: tuple[str, str, str]) -> bool:
    kind, key, value = clause
    if kind == "metadata":
        return bool(obj["metadata"].get(key) == value)
    return bool(obj.get(key) == value)


def _parse_limit(params: Mapping[str, Any]) -> int:
    raw = _param_str(params, "limit")
    if raw is None:
        return DEFAULT_LIST_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIST_LIMIT:
        raise _StripeError(400, "Invalid limit: must be between 1 and 100.", param="limit")
    return int(raw)


def _parse_page(raw: str | None) -> int:
    if raw is None or raw == "":
        return 0
    if not raw.isdigit():
        raise _StripeError(400, f"Invalid page: {raw}", param="page")
    return int(raw)


def _position_after(items: list[dict[str, Any]], starting_after: str | None) -> int:
    if starting_after is None:
        return 0
    for index, item in enumerate(items):
        if item["id"] == starting_after:
            return index + 1
    raise _StripeError(
        400, f"No such object: '{starting_after}'", code="resource_missing", param="starting_after"
    )


# --------------------------------------------------------------------------- sendgrid API


def _validate_mail(body: object) -> list[tuple[str, str | None]]:
    """Return SendGrid-style (message, field) errors for a v3 mail/send body."""
    if not isinstance(body, dict):
        return [("Bad Request", None)]
    errors = _validate_personalizations(body.get("personalizations"))
    sender = body.get("from")
    if not isinstance(sender, dict):
        errors.append(
            (
                "The from object must be provided for every email send. It is an object that "
                "requires an email parameter, but may also contain a name parameter.",
                "from",
            )
        )
    elif not _is_email(sender.get("email")):
        errors.append(("The from email does not contain a valid address.", "from.email"))
    errors.extend(_validate_content(body))
    return errors


def _validate_personalizations(raw: object) -> list[tuple[str, str | None]]:
    if not isinstance(raw, list) or not raw:
        return [
            (
                "The personalizations field is required and must have at least one "
                "personalization.",
                "personalizations",
            )
        ]
    errors: list[tuple[str, str | None]] = []
    for index, item in enumerate(raw):
        to = item.get("to") if isinstance(item, dict) else None
        if (
            not isinstance(to, list)
            or not to
            or not all(isinstance(r, dict) and _is_email(r.get("email")) for r in to)
        ):
            errors.append(
                (
                    "The to array is required for all personalization objects, and must have "
                    "at least one email object with a valid email address.",
                    f"personalizations.{index}.to",
                )
            )
    return errors


def _validate_content(body: Mapping[str, Any]) -> list[tuple[str, str | None]]:
    if body.get("template_id"):
        return []
    errors: list[tuple[str, str | None]] = []
    personalizations = body.get("personalizations")
    every_has_subject = isinstance(personalizations, list) and all(
        isinstance(p, dict) and p.get("subject") for p in personalizations
    )
    if not body.get("subject") and not every_has_subject:
        errors.append(
            (
                "The subject is required. You can get around this requirement if you use a "
                "template with a subject defined or if every personalization has a subject "
                "defined.",
                "subject",
            )
        )
    content = body.get("content")
    if not isinstance(content, list) or not content:
        errors.append(
            (
                "Unless a valid template_id is provided, the content parameter is required. "
                "There must be at least one defined content block. We typically suggest both "
                "text/plain and text/html blocks are included, but only one block is required.",
                "content",
            )
        )
    return errors


def _is_email(value: object) -> bool:
    return isinstance(value, str) and "@" in value and not value.startswith("@")


def _send_mail(state: _State, body: bytes) -> _Response:
    try:
        payload: object = json.loads(body or b"null")
    except ValueError:
        return _sendgrid_error(400, "Bad Request")
    errors = _validate_mail(payload)
    if errors:
        return _json_response(
            400, {"errors": [{"message": m, "field": f, "help": None} for m, f in errors]}
        )
    assert isinstance(payload, dict)
    message_id = state.new_id("", 22)
    with state.lock:
        state.mail.append({**payload, "message_id": message_id})
    return _Response(202, b"", {"X-Message-Id": message_id}, saveable=True)


# --------------------------------------------------------------------------- request pipeline


@dataclass
class _Request:
    """A parsed provider request."""

    provider: str
    method: str
    path: str
    query: str
    body: bytes
    headers: Mapping[str, str]  # lower-cased names

    @property
    def idempotency_key(self) -> str | None:
        return self.headers.get("idempotency-key") or None


class _Pipeline:
    """Auth, faults and idempotency around the provider endpoints."""

    def __init__(self, state: _State) -> None:
        self.state = state
        self.stripe = _StripeAPI(state)

    def handle(self, req: _Request) -> _Response | None:
        """Answer a provider request; None means "cut the connection"."""
        log: dict[str, Any] = {
            "provider": req.provider,
            "method": req.method,
            "path": req.path,
            "idempotency_key": req.idempotency_key,
            "status": None,
            "fault": None,
            "replayed": False,
        }
        resp = self._handle(req, log)
        if resp is not None and req.provider == "stripe":
            resp.headers.setdefault("Request-Id", self.state.new_id("req_", REQUEST_ID_CHARS))
            version = req.headers.get("stripe-version")
            if version:
                resp.headers["Stripe-Version"] = version
        return resp

    def _handle(self, req: _Request, log: dict[str, Any]) -> _Response | None:
        config = self.state.faults_for(req.provider)
        if config.outage:
            log["fault"] = "outage"
            return self._finish(
                log, _provider_error(req.provider, 503, "The service is temporarily unavailable.")
            )
        api_key = _bearer_token(req.headers.get("authorization"))
        if not self._authorized(req.provider, api_key):
            return self._finish(log, self._unauthorized(req.provider, api_key))
        assert api_key is not None
        params = self._params(req)
        reservation = self._reserve(req, api_key, params)
        seen = self.state.mark_seen(req.provider, api_key, req.idempotency_key)
        self._sleep(config.latency_ms / 1000.0)
        if reservation.rejection is not None:
            _release(self.state, reservation, None)
            return self._finish(log, reservation.rejection)
        draw = _NO_FAULTS if (config.first_try_only and seen) else self.state.draw(config)
        try:
            return self._with_faults(req, params, reservation, draw, config, log)
        finally:
            _release(self.state, reservation, None)

    def _with_faults(
        self,
        req: _Request,
        params: dict[str, Any],
        reservation: _Reservation,
        draw: _Draw,
        config: FaultConfig,
        log: dict[str, Any],
    ) -> _Response | None:
        if draw.rate_429:
            log["fault"] = "rate_429"
            return self._finish(log, _rate_limited(req.provider))
        if draw.cut_before_execute:
            log["fault"] = "rate_cut_before_execute"
            return self._finish(log, None)
        if draw.rate_500:
            log["fault"] = "rate_500"
            return self._finish(log, self._save(reservation, self._server_error(req.provider)))
        resp = self._execute_or_replay(req, params, reservation, log)
        if draw.rate_500_after_execute:
            log["fault"] = "rate_500_after_execute"
            return self._finish(log, self._save(reservation, self._server_error(req.provider)))
        self._save(reservation, resp)
        if draw.cut_after_execute:
            log["fault"] = "rate_cut_after_execute"
            return self._finish(log, None)
        if draw.timeout:
            log["fault"] = "rate_timeout"
            self._finish(log, resp)
            self._sleep(config.timeout_sleep_s)
            return resp
        return self._finish(log, resp)

    def _execute_or_replay(
        self, req: _Request, params: dict[str, Any], reservation: _Reservation, log: dict[str, Any]
    ) -> _Response:
        if reservation.replay is not None:
            log["replayed"] = True
            saved = reservation.replay
            headers = {k: v for k, v in saved.response.headers.items() if k != "Request-Id"}
            headers["Idempotent-Replayed"] = "true"
            headers["Original-Request"] = saved.request_id
            return dataclasses.replace(saved.response, headers=headers)
        if req.provider == "sendgrid":
            return _send_mail(self.state, req.body)
        return self.stripe.route(req.method, req.path, params)

    def _save(self, reservation: _Reservation, resp: _Response) -> _Response:
        """Save an executed response against the claimed key (if any); returns it."""
        if reservation.reserved and resp.saveable:
            resp.headers.setdefault("Request-Id", self.state.new_id("req_", REQUEST_ID_CHARS))
            saved = dataclasses.replace(resp, headers=dict(resp.headers))  # caller mutates resp
            _release(self.state, reservation, _Saved(saved, resp.headers["Request-Id"]))
        return resp

    def _finish(self, log: dict[str, Any], resp: _Response | None) -> _Response | None:
        log["status"] = None if resp is None else resp.status
        self.state.record(log)
        return resp

    def _reserve(self, req: _Request, api_key: str, params: dict[str, Any]) -> _Reservation:
        key = req.idempotency_key
        if req.provider != "stripe" or req.method != "POST" or key is None:
            return _NO_KEY
        fingerprint = (req.method, req.path, _freeze(params))
        return _reserve(self.state, (api_key, key), fingerprint)

    def _params(self, req: _Request) -> dict[str, Any]:
        if req.provider != "stripe":
            return {}
        raw = req.query if req.method in ("GET", "DELETE") else req.body.decode("utf-8", "replace")
        return _parse_form(raw)

    def _authorized(self, provider: str, api_key: str | None) -> bool:
        if api_key is None:
            return False
        state = self.state
        expected = state.stripe_api_key if provider == "stripe" else state.sendgrid_api_key
        if expected is not None:
            return api_key == expected
        return api_key.startswith("sk_test_" if provider == "stripe" else "SG.")

    def _unauthorized(self, provider: str, api_key: str | None) -> _Response:
        if provider == "sendgrid":
            return _sendgrid_error(401, _SENDGRID_UNAUTHORIZED)
        if api_key is None:
            message = (
                "You did not provide an API key. You need to provide your API key in the "
                "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                "YOUR_SECRET_KEY')."
            )
        else:
            message = f"Invalid API Key provided: {_mask_key(api_key)}"
        return _stripe_error(401, "invalid_request_error", message)

    @staticmethod
    def _server_error(provider: str) -> _Response:
        resp = _provider_error(provider, 500, "An unknown error occurred (simulated).")
        resp.saveable = True
        return resp

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.state.stop_event.wait(seconds)


def _freeze(value: object) -> object:
    """A hashable, order-independent form of parsed params for fingerprinting."""
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


# --------------------------------------------------------------------------- webhooks


@dataclass
class _WebhookDelivery:
    """One event waiting for delivery (a duplicate is a second delivery of the same event)."""

    event: dict[str, Any]
    due_mono: float


def _emit(state: _State, event_type: str, obj: Mapping[str, Any]) -> None:
    """Queue a Stripe event for ``obj`` (lock held); a no-op without a webhook target."""
    if state.webhook_url is None:
        return
    config = state.faults["stripe"]
    event = {
        "id": state.new_id("evt_"),
        "object": "event",
        "api_version": STRIPE_API_VERSION,
        "created": int(time.time()),
        "livemode": False,
        "pending_webhooks": 1,
        "type": event_type,
        "data": {"object": copy.deepcopy(dict(obj))},
    }
    due = time.monotonic() + config.webhook_delay_ms / 1000.0
    copies = 2 if state.fault_rng.random() < config.webhook_duplicate_rate else 1
    for _ in range(copies):
        state.webhook_queue.append(_WebhookDelivery(event, due))
    state.webhook_wakeup.notify()


def _charge_of(pi: Mapping[str, Any]) -> dict[str, Any]:
    """The Charge behind a succeeded intent, as ``charge.*`` events carry it."""
    return {
        "id": pi["latest_charge"],
        "object": "charge",
        "amount": pi["amount"],
        "amount_captured": pi["amount_received"],
        "amount_refunded": pi["amount_refunded"],
        "currency": pi["currency"],
        "customer": pi["customer"],
        "metadata": dict(pi["metadata"]),
        "paid": True,
        "payment_intent": pi["id"],
        "refunded": pi["amount_refunded"] >= pi["amount_received"],
        "status": "succeeded",
    }


def sign_webhook(payload: bytes, secret: str, timestamp: int) -> str:
    """A ``Stripe-Signature`` header value for ``payload``, as Stripe computes it."""
    signed = f"{timestamp}.".encode() + payload
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


class _WebhookSender:
    """Background thread: settles processing intents on time and delivers queued events."""

    def __init__(self, state: _State) -> None:
        self.state = state
        self.thread = threading.Thread(
            target=self._loop, name="orchestrator-simulator-webhooks", daemon=True
        )

    def start(self) -> None:
        self.thread.start()

    def join(self) -> None:
        with self.state.webhook_wakeup:
            self.state.webhook_wakeup.notify()
        self.thread.join()

    def _loop(self) -> None:
        state = self.state
        while not state.stop_event.is_set():
            with state.webhook_wakeup:
                state.webhook_wakeup.wait(WEBHOOK_TICK_S)
                batch = self._take_due()
                target = (state.webhook_url, state.webhook_secret)
            for delivery in batch:
                if state.stop_event.is_set():
                    return
                self._deliver(delivery.event, *target)

    def _take_due(self) -> list[_WebhookDelivery]:
        """Settle due intents, then pop the deliveries to send now (lock held)."""
        state = self.state
        now = time.monotonic()
        for pi_id in list(state.settling):
            record = state.payment_intents.get(pi_id)
            if record is None:
                state.settling.discard(pi_id)
            else:
                _settle(state, record, now)
        queue = state.webhook_queue
        if not queue or queue[0].due_mono > now:
            return []
        if state.faults["stripe"].webhook_reorder:
            batch = list(reversed(queue))
            queue.clear()
            return batch
        batch = [d for d in queue if d.due_mono <= now]
        state.webhook_queue = [d for d in queue if d.due_mono > now]
        return batch

    def _deliver(self, event: dict[str, Any], url: str | None, secret: str | None) -> None:
        if url is None:
            return
        body = json.dumps(event, separators=(",", ":")).encode()
        status: int | None = None
        attempt = 0
        for attempt in range(1, WEBHOOK_MAX_ATTEMPTS + 1):
            status = self._post(url, body, secret)
            if status is not None and 200 <= status < 300:
                break
            if self.state.stop_event.wait(WEBHOOK_RETRY_BASE_S * 2 ** (attempt - 1)):
                break
        entry = {"event_id": event["id"], "type": event["type"], "status": status}
        self.state.record_webhook({**entry, "attempts": attempt})

    def _post(self, url: str, body: bytes, secret: str | None) -> int | None:
        headers = {"Content-Type": JSON_CONTENT_TYPE, "User-Agent": "Stripe/1.0 (simulator)"}
        if secret:
            headers["Stripe-Signature"] = sign_webhook(body, secret, int(time.time()))
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_S) as resp:  # noqa: S310
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (OSError, ValueError):
            return None


# --------------------------------------------------------------------------- control plane


def _control(state: _State, method: str, path: str, body: bytes) -> _Response:
    name = path[len("/_sim/") :].strip("/")
    if method == "GET":
        return _control_get(state, name)
    if method == "POST" and name == "reset":
        state.reset()
        return _json_response(200, {"ok": True})
    if method == "POST" and name == "faults":
        return _control_set_faults(state, body)
    if method == "POST" and name == "webhooks":
        return _control_set_webhook(state, body)
    return _json_response(404, {"error": f"unknown control endpoint: {method} {path}"})


def _control_get(state: _State, name: str) -> _Response:
    if name == "health":
        return _json_response(200, {"ok": True})
    if name == "payment_intents":
        return _json_response(200, state.snapshot_payment_intents())
    if name in ("refunds", "mail", "requests", "webhooks"):
        return _json_response(200, state.snapshot(name))
    if name == "faults":
        with state.lock:
            faults = {p: dataclasses.asdict(c) for p, c in state.faults.items()}
        return _json_response(200, faults)
    return _json_response(404, {"error": f"unknown control endpoint: GET /_sim/{name}"})


def _control_set_faults(state: _State, body: bytes) -> _Response:
    try:
        payload = json.loads(body or b"{}")
        if not isinstance(payload, dict):
            raise ValueError("body must be a JSON object")
        provider = payload.pop("provider", "all")
        state.set_faults(str(provider), payload)
    except ValueError as exc:
        return _json_response(400, {"error": str(exc)})
    return _json_response(200, {"ok": True})


def _control_set_webhook(state: _State, body: bytes) -> _Response:
    try:
        payload = json.loads(body or b"{}")
        if not isinstance(payload, dict):
            raise ValueError("body must be a JSON object")
        url, secret = payload.get("url"), payload.get("secret")
        if not isinstance(url, (str, type(None))) or not isinstance(secret, (str, type(None))):
            raise ValueError("url and secret must be strings or null")
        state.set_webhook(url, secret)
    except ValueError as exc:
        return _json_response(400, {"error": str(exc)})
    return _json_response(200, {"ok": True})


# --------------------------------------------------------------------------- HTTP server


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, address: tuple[str, int], state: _State) -> None:
        self.state = state
        self.pipeline = _Pipeline(state)
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        """Silence client disconnects; print real bugs."""
        if not isinstance(sys.exc_info()[1], OSError):
            traceback.print_exc()

    def close_all_connections(self) -> None:
        with self.connections_lock:
            connections = list(self.connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    timeout = IDLE_CONNECTION_TIMEOUT_S

    @property
    def _sim(self) -> _Server:
        assert isinstance(self.server, _Server)
        return self.server

    def setup(self) -> None:
        super().setup()
        with self._sim.connections_lock:
            self._sim.connections.add(self.connection)

    def finish(self) -> None:
        with self._sim.connections_lock:
            self._sim.connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """No per-request logging: the simulator is on benchmark hot paths."""

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        body = self._read_body()
        split = urlsplit(self.path)
        try:
            resp = self._answer(split.path, split.query, body)
        except Exception:  # a simulator bug: answer 500 rather than hang the client
            traceback.print_exc()
            resp = _stripe_error(500, "api_error", "simulator internal error")
        if resp is None:
            self._cut()
            return
        self._write(resp)

    def _answer(self, path: str, query: str, body: bytes) -> _Response | None:
        if path.startswith("/_sim/"):
            return _control(self._sim.state, self.command, path, body)
        provider = "sendgrid" if path.startswith("/v3/") else "stripe"
        if provider == "sendgrid" and not (self.command == "POST" and path == "/v3/mail/send"):
            return _sendgrid_error(404, f"{self.command} {path} is not supported by the simulator")
        headers = {name.lower(): value for name, value in self.headers.items()}
        req = _Request(provider, self.command, path, query, body, headers)
        return self._sim.pipeline.handle(req)

    def _read_body(self) -> bytes:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        return self.rfile.read(length) if length > 0 else b""

    def _write(self, resp: _Response) -> None:
        headers = dict(resp.headers)
        headers["Content-Length"] = str(len(resp.body))
        if self.close_connection:
            headers["Connection"] = "close"
        reason = _HTTP_REASONS.get(resp.status, "")
        lines = [f"HTTP/1.1 {resp.status} {reason}"]
        lines.extend(f"{name}: {value}" for name, value in headers.items())
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.wfile.write(head + resp.body)

    def _cut(self) -> None:
        """Reset the TCP connection without answering (RST via SO_LINGER 0)."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()


# --------------------------------------------------------------------------- public API


class Simulator:
    """A Stripe + SendGrid simulator serving HTTP from a daemon thread."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        stripe_api_key: str | None = None,
        sendgrid_api_key: str | None = None,
        seed: int | None = None,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self._state = _State(stripe_api_key, sendgrid_api_key, seed)
        self._state.set_webhook(webhook_url, webhook_secret)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._sender: _WebhookSender | None = None

    def start(self) -> Simulator:
        """Bind, start serving in a daemon thread and return once listening."""
        if self._server is not None:
            raise RuntimeError("simulator already started")
        self._state.stop_event.clear()
        server = _Server((self._host, self._port), self._state)
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": SERVE_POLL_INTERVAL_S},
            name="orchestrator-simulator",
            daemon=True,
        )
        thread.start()
        sender = _WebhookSender(self._state)
        sender.start()
        self._server, self._thread, self._sender = server, thread, sender
        return self

    def stop(self) -> None:
        """Stop serving, drop open keep-alive connections and release the port."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._state.stop_event.set()
        server.shutdown()
        server.server_close()
        server.close_all_connections()
        thread.join()
        if self._sender is not None:
            self._sender.join()
        self._server = self._thread = self._sender = None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("simulator not started")
        host, port = self._server.server_address[:2]
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else str(host)  # noqa: S104
        return f"http://{shown}:{port}"

    def set_faults(self, provider: str = "all", **faults: float | bool) -> None:
        """Replace a provider's fault config ("stripe", "sendgrid" or "all")."""
        self._state.set_faults(provider, faults)

    def reset(self) -> None:
        """Clear objects, logs, idempotency keys and faults; re-seed the fault RNG."""
        self._state.reset()

    def payment_intents(self) -> list[dict[str, Any]]:
        return self._state.snapshot_payment_intents()

    def refunds(self) -> list[dict[str, Any]]:
        return self._state.snapshot("refunds")

    def mail(self) -> list[dict[str, Any]]:
        return self._state.snapshot("mail")

    def requests_log(self) -> list[dict[str, Any]]:
        return self._state.snapshot("requests")

    def set_webhook(self, url: str | None, secret: str | None = None) -> None:
        """Send events to ``url`` signed with ``secret`` (None stops sending); kept by reset."""
        self._state.set_webhook(url, secret)

    def webhook_deliveries(self) -> list[dict[str, Any]]:
        """Finished deliveries: event id, type, last HTTP status (None: no answer), attempts."""
        return self._state.snapshot("webhooks")


def serve(
    host: str, port: int, *, stripe_api_key: str | None, sendgrid_api_key: str | None
) -> None:
    """Run a simulator in the foreground until Ctrl-C (or SIGTERM)."""
    sim = Simulator(host, port, stripe_api_key=stripe_api_key, sendgrid_api_key=sendgrid_api_key)
    sim.start()
    _install_sigterm_handler()
    print(f"simulator listening on {sim.url}", flush=True)
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()


def _install_sigterm_handler() -> None:
    if threading.current_thread() is not threading.main_thread():
        return

    def _raise_interrupt(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _raise_interrupt)


class SimulatorControl:
    """Drive a simulator running in another process through its /_sim endpoints."""

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        import requests as requests_lib

        self._url = url.rstrip("/")
        self._timeout_s = timeout_s
        self._session: requests.Session = requests_lib.Session()

    def health(self) -> bool:
        try:
            resp = self._session.get(f"{self._url}/_sim/health", timeout=self._timeout_s)
        except OSError:
            return False
        return resp.status_code == 200

    def set_faults(self, provider: str = "all", **faults: float | bool) -> None:
        self._post("faults", {"provider": provider, **faults})

    def reset(self) -> None:
        self._post("reset", {})

    def payment_intents(self) -> list[dict[str, Any]]:
        return self._get("payment_intents")

    def refunds(self) -> list[dict[str, Any]]:
        return self._get("refunds")

    def mail(self) -> list[dict[str, Any]]:
        return self._get("mail")

    def requests_log(self) -> list[dict[str, Any]]:
        return self._get("requests")

    def set_webhook(self, url: str | None, secret: str | None = None) -> None:
        self._post("webhooks", {"url": url, "secret": secret})

    def webhook_deliveries(self) -> list[dict[str, Any]]:
        return self._get("webhooks")

    def close(self) -> None:
        self._session.close()

    def _post(self, name: str, payload: Mapping[str, object]) -> None:
        resp = self._session.post(f"{self._url}/_sim/{name}", json=payload, timeout=self._timeout_s)
        if resp.status_code == 400:
            raise ValueError(resp.json().get("error", resp.text))
        resp.raise_for_status()

    def _get(self, name: str) -> list[dict[str, Any]]:
        resp = self._session.get(f"{self._url}/_sim/{name}", timeout=self._timeout_s)
        resp.raise_for_status()
        data: list[dict[str, Any]] = resp.json()
        return data
