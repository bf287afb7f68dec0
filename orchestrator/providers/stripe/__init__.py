"""Stripe: the provider (``provider.py``), the parameters it sends and what answers mean
(``objects.py``), its exceptions as outcomes (``errors.py``) and its HTTP transport
(``transport.py``)."""

from orchestrator.providers.stripe.errors import classify_error
from orchestrator.providers.stripe.objects import (
    charge_params,
    outcome_of_intent,
    outcome_of_refund,
    refund_params,
)
from orchestrator.providers.stripe.provider import StripeProvider
from orchestrator.providers.stripe.transport import Urllib3Client, http_client_for

__all__ = [
    "StripeProvider",
    "Urllib3Client",
    "charge_params",
    "classify_error",
    "http_client_for",
    "outcome_of_intent",
    "outcome_of_refund",
    "refund_params",
]
