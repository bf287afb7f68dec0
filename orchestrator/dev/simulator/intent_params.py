"""Validating ``POST /v1/payment_intents`` parameters the way Stripe documents them.

Every failure here is parameter validation: a 400 that is never saved against the
idempotency key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.dev.simulator.common import StripeError
from orchestrator.dev.simulator.params import (
    Call,
    one_of,
    param_bool,
    param_dict,
    param_int,
    param_str,
    require,
)

CAPTURE_METHODS = ("automatic", "automatic_async", "manual")
DEFAULT_CAPTURE_METHOD = "automatic_async"  # what current API versions default to
ALLOW_REDIRECTS = ("always", "never")
OFF_SESSION_VALUES = ("true", "false", "one_off", "recurring")
# The payment method types "enabled in the Dashboard" of every simulated account.
DASHBOARD_PAYMENT_METHOD_TYPES = ("card",)
# From this API version on, automatic_payment_methods is on when neither it nor
# payment_method_types is given.
AUTOMATIC_PAYMENT_METHODS_DEFAULT_SINCE = "2023-08-16"
MAX_STATEMENT_DESCRIPTOR_SUFFIX_CHARS = 22
RETURN_URL_REQUIRED = (
    "A `return_url` must be specified because this Payment Intent is configured to "
    "automatically accept the payment methods enabled in the Dashboard, some of which may "
    "require a full page redirect to succeed. If you do not want to accept redirect-based "
    "payment methods, set `automatic_payment_methods[enabled]` to `true` and "
    "`automatic_payment_methods[allow_redirects]` to `never` when creating Setup Intents "
    "and Payment Intents."
)
APPLICATION_FEE_NEEDS_CONNECT = (
    "Can only apply an application_fee_amount when the PaymentIntent is attempting a direct "
    "payment (using an OAuth key or Stripe-Account header) or destination payment (using "
    "`transfer_data[destination]` or `on_behalf_of`)."
)
_PAYMENT_METHOD_TYPE_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://\S+$")
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_ACCOUNT_RE = re.compile(r"^acct_[A-Za-z0-9]+$")


@dataclass(frozen=True)
class ConfirmOptions:
    """How a create with ``confirm=true`` confirms."""

    confirm: bool = False
    return_url: str | None = None
    off_session: bool = False  # true, one_off or recurring


@dataclass(frozen=True)
class IntentParams:
    """Validated create parameters beyond amount, currency, metadata and payment_method."""

    options: ConfirmOptions
    fields: dict[str, Any] = field(default_factory=dict)  # stored on the intent as given


def parse_intent_params(call: Call, amount: int) -> IntentParams:
    params = call.params
    confirm = bool(param_bool(params, "confirm"))
    return_url = param_str(params, "return_url")
    if return_url is not None and not _URL_RE.match(return_url):
        raise StripeError(400, "Not a valid URL", param="return_url")
    off_session_raw = one_of(param_str(params, "off_session"), "off_session", OFF_SESSION_VALUES)
    for name, value in (("return_url", return_url), ("off_session", off_session_raw)):
        if value is not None and not confirm:
            raise StripeError(400, f"{name} can only be used when confirm=true.", param=name)
    automatic, types = _payment_method_config(call)
    if (
        confirm
        and automatic is not None
        and automatic["enabled"]
        and automatic["allow_redirects"] != "never"
        and return_url is None
    ):
        raise StripeError(400, RETURN_URL_REQUIRED, param="return_url")
    capture_method = one_of(param_str(params, "capture_method"), "capture_method", CAPTURE_METHODS)
    fields: dict[str, Any] = {
        "automatic_payment_methods": automatic,
        "capture_method": capture_method or DEFAULT_CAPTURE_METHOD,
        "customer": param_str(params, "customer"),
        "description": param_str(params, "description"),
        "off_session": _off_session_value(off_session_raw),
        "payment_method_types": types,
        "receipt_email": _receipt_email(params),
        "statement_descriptor_suffix": _statement_descriptor_suffix(params),
        **_connect_fields(call, amount),
    }
    off_session = off_session_raw in ("true", "one_off", "recurring")
    return IntentParams(ConfirmOptions(confirm, return_url, off_session), fields)


def _payment_method_config(call: Call) -> tuple[dict[str, Any] | None, list[str]]:
    """``automatic_payment_methods`` (None when off) and the ``payment_method_types``."""
    params = call.params
    automatic_raw = param_dict(params, "automatic_payment_methods")
    types_raw = params.get("payment_method_types")
    if automatic_raw is not None and types_raw is not None:
        raise StripeError(
            400,
            "You may only specify one of these parameters: automatic_payment_methods, "
            "payment_method_types.",
        )
    if types_raw is not None:
        return None, _payment_method_types(types_raw)
    if automatic_raw is None:
        if call.api_version and call.api_version < AUTOMATIC_PAYMENT_METHODS_DEFAULT_SINCE:
            return None, list(DASHBOARD_PAYMENT_METHOD_TYPES)
        return {"enabled": True, "allow_redirects": "always"}, list(DASHBOARD_PAYMENT_METHOD_TYPES)
    enabled = param_bool(automatic_raw, "enabled", "automatic_payment_methods[enabled]")
    require(enabled, "automatic_payment_methods[enabled]")
    label = "automatic_payment_methods[allow_redirects]"
    redirects = one_of(param_str(automatic_raw, "allow_redirects", label), label, ALLOW_REDIRECTS)
    automatic = {"enabled": bool(enabled), "allow_redirects": redirects or "always"}
    return automatic, list(DASHBOARD_PAYMENT_METHOD_TYPES)


def _payment_method_types(raw: object) -> list[str]:
    if not isinstance(raw, list) or not raw:
        raise StripeError(400, "Invalid array", param="payment_method_types")
    types: list[str] = []
    for index, value in enumerate(raw):
        if not isinstance(value, str) or not _PAYMENT_METHOD_TYPE_RE.match(value):
            raise StripeError(
                400,
                f"The payment method type {value!r} is invalid.",
                param=f"payment_method_types[{index}]",
            )
        types.append(value)
    return types


def _off_session_value(raw: str | None) -> bool | str | None:
    if raw in (None, "true", "false"):
        return None if raw is None else raw == "true"
    return raw


def _receipt_email(params: Mapping[str, Any]) -> str | None:
    email = param_str(params, "receipt_email")
    if email is not None and not _EMAIL_RE.match(email):
        raise StripeError(400, f"Invalid email address: {email}", param="receipt_email")
    return email


def _statement_descriptor_suffix(params: Mapping[str, Any]) -> str | None:
    suffix = param_str(params, "statement_descriptor_suffix")
    if suffix is not None and len(suffix) > MAX_STATEMENT_DESCRIPTOR_SUFFIX_CHARS:
        raise StripeError(
            400,
            "Invalid statement_descriptor_suffix: must be at most "
            f"{MAX_STATEMENT_DESCRIPTOR_SUFFIX_CHARS} characters",
            param="statement_descriptor_suffix",
        )
    return suffix


def _connect_fields(call: Call, amount: int) -> dict[str, Any]:
    """``on_behalf_of``, ``transfer_data`` and ``application_fee_amount``."""
    params = call.params
    on_behalf_of = _account_id(param_str(params, "on_behalf_of"), "on_behalf_of")
    transfer_raw = param_dict(params, "transfer_data")
    transfer_data: dict[str, Any] | None = None
    if transfer_raw is not None:
        label = "transfer_data[destination]"
        destination = param_str(transfer_raw, "destination", label)
        require(destination, label)
        transfer_data = {"destination": _account_id(destination, label)}
    fee = param_int(param_str(params, "application_fee_amount"), "application_fee_amount")
    if fee is not None:
        if call.account is None and transfer_data is None and on_behalf_of is None:
            raise StripeError(400, APPLICATION_FEE_NEEDS_CONNECT, param="application_fee_amount")
        if fee > amount:
            raise StripeError(
                400,
                f"The application_fee_amount ({fee}) must be less than or equal to the "
                f"amount ({amount}).",
                param="application_fee_amount",
            )
    return {
        "application_fee_amount": fee,
        "on_behalf_of": on_behalf_of,
        "transfer_data": transfer_data,
    }


def _account_id(raw: str | None, name: str) -> str | None:
    if raw is not None and not _ACCOUNT_RE.match(raw):
        raise StripeError(400, f"No such account: '{raw}'", code="resource_missing", param=name)
    return raw
