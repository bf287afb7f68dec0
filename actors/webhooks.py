"""The webhook actor: one message per stored event row; the orchestrator decides the rest."""

from __future__ import annotations

import dramatiq
import structlog

from orchestrator import runtime
from orchestrator.webhooks import PROCESS_ACTOR, process_event

_settings = runtime.current().settings

# Processing failures are recorded on the event row and retried by the clock's sweep; the
# actor's own retries only cover infrastructure blips (a database restart) around the claim.
INFRA_MAX_RETRIES = 5
INFRA_MIN_BACKOFF_MS = 500
INFRA_MAX_BACKOFF_MS = 30_000
# Well past one provider lookup (lease_s covers two calls): the provider timeouts end it first.
TIME_LIMIT_MS = int((_settings.lease_s + 30) * 1000)


@dramatiq.actor(
    actor_name=PROCESS_ACTOR,
    queue_name=_settings.queue_name,
    max_retries=INFRA_MAX_RETRIES,
    min_backoff=INFRA_MIN_BACKOFF_MS,
    max_backoff=INFRA_MAX_BACKOFF_MS,
    time_limit=TIME_LIMIT_MS,
)
def process_webhook_event(event_row_id: int) -> None:
    """Apply one stored webhook event to its job (a no-op if it is already done)."""
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(webhook_row_id=event_row_id)
    process_event(runtime.current(), event_row_id)
