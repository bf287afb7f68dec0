"""Razorpay webhook events: built in Razorpay's documented event shape and queued for the
shared webhook sender, which signs them with ``X-Razorpay-Signature``.

Each event gets an id sent as the ``x-razorpay-event-id`` header (Razorpay's event body has
no id of its own); retries and duplicate deliveries of one event keep that id, which is what
receivers deduplicate on.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from typing import Any

from orchestrator.dev.simulator.razorpay_common import RAZORPAY_ID_CHARS
from orchestrator.dev.simulator.state import State, WebhookDelivery

# The merchant account every simulated event names.
ACCOUNT_ID = "acc_SimulatorAcct1"


def emit_event(state: State, event_type: str, entities: Mapping[str, Mapping[str, Any]]) -> None:
    """Queue ``event_type`` carrying ``entities`` (``{"payment": {...}, "order": {...}}``)
    as snapshots taken now (lock held); a no-op without a Razorpay webhook target."""
    if state.razorpay_webhook_url is None:
        return
    config = state.faults["razorpay"]
    event = {
        "entity": "event",
        "account_id": ACCOUNT_ID,
        "event": event_type,
        "contains": list(entities),
        "payload": {name: {"entity": copy.deepcopy(dict(obj))} for name, obj in entities.items()},
        "created_at": int(state.now()),
    }
    event_id = state.new_id("evt_", RAZORPAY_ID_CHARS)
    due = time.monotonic() + config.webhook_delay_ms / 1000.0
    copies = 2 if state.fault_rng.random() < config.webhook_duplicate_rate else 1
    for _ in range(copies):
        state.webhook_queue.append(WebhookDelivery(event, due, "razorpay", event_id))
    state.webhook_wakeup.notify()
