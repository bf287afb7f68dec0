"""Provider webhooks: verified, stored once, answered fast, processed in the background.

* :mod:`orchestrator.webhooks.ingest`: reading the body, storing the event once, sending its
  processing message; the HTTP endpoint, given a provider's ``verify``;
* :mod:`orchestrator.webhooks.process`: claiming a stored event, applying what it means to
  its job, finishing or releasing the row;
* :mod:`orchestrator.webhooks.listing`: stored events, for operators;
* :mod:`orchestrator.webhooks.events`: what they pass around;
* :mod:`orchestrator.providers.stripe.webhooks`: Stripe's signatures, event shapes and
  what its events mean.

The clock's sweep of events whose message was lost is :mod:`orchestrator.maintenance.webhooks`.

The names below are re-exported lazily (PEP 562): a provider's module imports the neutral
submodules, which runs this file first, so this file must not import the provider's module
at import time.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.models import WebhookEvent
    from orchestrator.providers.stripe.webhooks import (
        parse_event,
        signed_at,
        stripe_endpoint,
        verify_signature,
    )
    from orchestrator.webhooks.events import WebhookRejected
    from orchestrator.webhooks.ingest import PROCESS_ACTOR
    from orchestrator.webhooks.listing import get_event, list_events
    from orchestrator.webhooks.process import process_event

__all__ = [
    "PROCESS_ACTOR",
    "WebhookEvent",
    "WebhookRejected",
    "get_event",
    "list_events",
    "parse_event",
    "process_event",
    "signed_at",
    "stripe_endpoint",
    "verify_signature",
]

_SOURCE: dict[str, str] = {
    "PROCESS_ACTOR": "orchestrator.webhooks.ingest",
    "WebhookEvent": "orchestrator.models",
    "WebhookRejected": "orchestrator.webhooks.events",
    "get_event": "orchestrator.webhooks.listing",
    "list_events": "orchestrator.webhooks.listing",
    "parse_event": "orchestrator.providers.stripe.webhooks",
    "process_event": "orchestrator.webhooks.process",
    "signed_at": "orchestrator.providers.stripe.webhooks",
    "stripe_endpoint": "orchestrator.providers.stripe.webhooks",
    "verify_signature": "orchestrator.providers.stripe.webhooks",
}


def __getattr__(name: str) -> Any:
    source = _SOURCE.get(name)
    if source is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(source), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
