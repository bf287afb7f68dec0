"""Stored provider events, for operators (``orchestrator events list|show``)."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from orchestrator.errors import JobNotFound, ValidationError
from orchestrator.models import EventStatus, WebhookEvent
from orchestrator.providers.registry import with_webhooks

if TYPE_CHECKING:
    from orchestrator.api import Orchestrator


def list_events(
    orch: Orchestrator,
    *,
    status: EventStatus | str | None = None,
    event_type: str | None = None,
    job_id: str | None = None,
    limit: int = 50,
) -> list[WebhookEvent]:
    """Events newest first, without payloads."""
    if status is not None:
        status = _status(status)
    if job_id is not None:
        job_id = _uuid(job_id, "job id")
    if not 1 <= limit <= 1000:
        raise ValidationError("limit must be between 1 and 1000")
    args = {
        "status": None if status is None else str(status),
        "type": event_type,
        "job_id": job_id,
        "limit": limit,
    }
    return orch.store.list_webhook_events(args)


def get_event(orch: Orchestrator, ident: str, *, provider: str | None = None) -> WebhookEvent:
    """One event with its payload, by row id or by the provider's event id (``evt_...``,
    Razorpay's ``x-razorpay-event-id``): of ``provider``, or of any provider that sends
    webhooks (event ids are unique per provider; the first found is shown)."""
    event: WebhookEvent | None = None
    if ident.isdigit():
        event = orch.store.webhook_event(int(ident))
    else:
        names = [provider] if provider else [spec.name for spec in with_webhooks()]
        for name in names:
            event = orch.store.webhook_event_by_event_id(name, ident)
            if event is not None:
                break
    if event is None:
        raise JobNotFound(f"no webhook event {ident}")
    return event


def _status(value: str) -> EventStatus:
    try:
        return EventStatus(value)
    except ValueError:
        raise ValidationError(f"status must be one of {', '.join(EventStatus)}") from None


def _uuid(value: str, what: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ValidationError(f"{what} must be a UUID") from None
