"""Stripe events: built from an object and queued for the webhook sender."""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from typing import Any

from orchestrator.dev.simulator.state import State, WebhookDelivery

STRIPE_API_VERSION = "2024-06-20"


def emit(state: State, event_type: str, obj: Mapping[str, Any]) -> None:
    """Queue a Stripe event for ``obj`` (lock held); a no-op without a webhook target."""
    if state.webhook_url is None:
        return
    config = state.faults["stripe"]
    event = {
        "id": state.new_id("evt_"),
        "object": "event",
        "api_version": STRIPE_API_VERSION,
        "created": int(state.now()),
        "livemode": False,
        "pending_webhooks": 1,
        "type": event_type,
        "data": {"object": copy.deepcopy(dict(obj))},
    }
    due = time.monotonic() + config.webhook_delay_ms / 1000.0
    copies = 2 if state.fault_rng.random() < config.webhook_duplicate_rate else 1
    for _ in range(copies):
        state.webhook_queue.append(WebhookDelivery(event, due))
    state.webhook_wakeup.notify()


def charge_of(pi: Mapping[str, Any]) -> dict[str, Any]:
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
