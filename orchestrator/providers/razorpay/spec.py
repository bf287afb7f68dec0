"""Razorpay in the provider registry: charges (recurring payments on a customer's saved
token) and refunds; signed webhooks.

A charge names the customer (``cust_...``) and the token (``token_...``) as ``customer`` and
``payment_method``, and gives Razorpay's mandatory ``email`` and ``contact`` of a recurring
payment as ``provider_options``::

    orch.charge(50000, "INR", "cust_...", "token_...", idempotency_key="order-42",
                provider="razorpay",
                provider_options={"email": "ana@example.com", "contact": "+919876543210"})
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from orchestrator.errors import ValidationError
from orchestrator.models import JobKind
from orchestrator.providers.razorpay import webhooks
from orchestrator.providers.registry import ProviderSpec, WebhookSupport
from orchestrator.validation import email

if TYPE_CHECKING:
    from orchestrator.config import Settings
    from orchestrator.providers.razorpay.provider import RazorpayProvider

# The options a Razorpay charge takes: what a recurring payment needs beyond the job's fields.
OPTIONS = ("email", "contact")
# A phone number as Razorpay takes it: digits, an optional leading +, 8 to 15 digits (E.164).
_CONTACT_RE = re.compile(r"^\+?[0-9]{8,15}$")


def charge_options(amount: int, options: Mapping[str, Any]) -> dict[str, Any]:
    """The options of a Razorpay charge, checked: ``email`` and ``contact``, both required (a
    recurring payment must carry them). Any other option given, Stripe's included, is refused
    with a ValidationError naming it."""
    given = {name: value for name, value in options.items() if value is not None}
    for name in sorted(given):
        if name not in OPTIONS:
            raise ValidationError(f"provider 'razorpay' does not take {name}")
    for name in OPTIONS:
        if name not in given:
            raise ValidationError(
                f"a razorpay charge needs {name} (provider_options={{'{name}': ...}})"
            )
    contact = given["contact"]
    if not isinstance(contact, str) or not _CONTACT_RE.match(contact):
        raise ValidationError("contact must be a phone number of 8-15 digits, optionally +")
    return {"email": email("email", given["email"]), "contact": contact}


def build(settings: Settings) -> RazorpayProvider | None:
    """The Razorpay provider, or None when ``RAZORPAY_KEY_ID`` / ``RAZORPAY_KEY_SECRET`` are
    not set (its own settings, read from the environment; the core settings give the
    timeouts)."""
    from orchestrator.providers.razorpay.provider import RazorpayProvider
    from orchestrator.providers.razorpay.settings import load_razorpay_settings

    razorpay_settings = load_razorpay_settings()
    if not razorpay_settings.configured:
        return None
    return RazorpayProvider(
        razorpay_settings,
        connect_timeout_s=settings.provider_connect_timeout_s,
        read_timeout_s=settings.provider_read_timeout_s,
    )


SPEC = ProviderSpec(
    name="razorpay",
    kinds=frozenset({JobKind.CHARGE, JobKind.REFUND}),
    build=build,
    charge_options=charge_options,
    webhooks=WebhookSupport(verifier=webhooks.verifier, meaning=webhooks.meaning_of),
    needs_customer=True,
    # The SDK has no logger (it prints on network errors, which its session never lets it
    # see); urllib3 below it logs every request line at DEBUG.
    sdk_loggers=("urllib3",),
)
