"""The webhook actor: one message per stored event row; the orchestrator decides the rest.

Processing failures are recorded on the event row and retried by the clock's sweep.
"""

from __future__ import annotations

import dramatiq
import structlog

from actors.options import actor_options
from orchestrator import runtime
from orchestrator.broker import PROCESS_ACTOR
from orchestrator.webhooks.process import process_event


@dramatiq.actor(actor_name=PROCESS_ACTOR, **actor_options())
def process_webhook_event(event_row_id: int) -> None:
    """Apply one stored webhook event to its job (a no-op if it is already done)."""
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(webhook_row_id=event_row_id)
    process_event(runtime.current(), event_row_id, providers=runtime.providers)
