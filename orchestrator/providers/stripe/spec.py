"""Stripe in the provider registry: charges, refunds, captures and voids; signed webhooks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchestrator.models import JobKind
from orchestrator.providers.registry import ProviderSpec, WebhookSupport
from orchestrator.providers.stripe import webhooks
from orchestrator.validation import charge_options

if TYPE_CHECKING:
    from orchestrator.config import Settings
    from orchestrator.providers.stripe.provider import StripeProvider


def build(settings: Settings) -> StripeProvider | None:
    """The Stripe provider, or None when ``STRIPE_API_KEY`` is not set."""
    from orchestrator.providers.stripe.provider import StripeProvider

    if settings.stripe_api_key is None:
        return None
    return StripeProvider(
        # Read per call: a key rotated in Secrets Manager or its file (orchestrator.secrets)
        # is used by the running worker.
        lambda: settings.require_secret("stripe_api_key"),
        api_base=settings.stripe_api_base,
        connect_timeout_s=settings.provider_connect_timeout_s,
        read_timeout_s=settings.provider_read_timeout_s,
    )


SPEC = ProviderSpec(
    name="stripe",
    kinds=frozenset({JobKind.CHARGE, JobKind.REFUND, JobKind.CAPTURE, JobKind.VOID}),
    build=build,
    charge_options=charge_options,
    webhooks=WebhookSupport(verifier=webhooks.verifier, meaning=webhooks.meaning_of),
    sdk_loggers=("stripe",),
)
