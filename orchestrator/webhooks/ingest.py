"""Receiving provider webhooks: read, verify, store once, answer fast, send for processing.

One endpoint per provider (``POST /webhooks/<provider>`` in the ``web`` process), made by
:func:`endpoint` with the provider's own ``verify`` (signature and parsing):

1. read   the raw body as a stream, refusing more than ``MAX_BODY_BYTES`` (413), up front
          when ``Content-Length`` says so;
2. verify with the provider's ``verify``, which refuses with :class:`WebhookRejected`;
3. store  ``INSERT ... ON CONFLICT DO NOTHING`` on (provider, event id): a redelivery answers
          2xx and changes nothing;
4. answer 2xx once the row is committed; the ``process_webhook_event`` message goes out after
          the commit (if it is lost, the clock's sweep re-sends it).

The payload is stored whole but never logged; log events carry ids and types only.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from orchestrator.broker import PROCESS_ACTOR
from orchestrator.logs import get_logger
from orchestrator.webhooks.events import IncomingEvent, Stored, WebhookRejected

if TYPE_CHECKING:
    from orchestrator.api import Orchestrator
    from orchestrator.broker import Dispatcher

log = get_logger(__name__)

# Provider events are a few KB; 1 MiB bounds the memory one request can make us hold.
MAX_BODY_BYTES = 1024 * 1024

# A provider's check of one delivery: (raw body, headers, now in s) -> the event, or raises
# WebhookRejected.
Verify = Callable[[bytes, Mapping[str, str], float], IncomingEvent]


def check_content_length(value: str | None, limit: int = MAX_BODY_BYTES) -> None:
    if value is None:
        return
    try:
        declared = int(value)
    except ValueError:
        raise WebhookRejected(400, "invalid Content-Length") from None
    if declared > limit:
        raise WebhookRejected(413, f"body over {limit} bytes")


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The raw body, refused (413) as soon as it passes ``limit`` bytes."""
    check_content_length(request.headers.get("content-length"), limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise WebhookRejected(413, f"body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def ingest(orch: Orchestrator, provider: str, event: IncomingEvent) -> Stored:
    """Store the event once; after commit, send its processing message (new events only)."""
    args = {
        "provider": provider,
        "event_id": event.event_id,
        "type": event.type,
        "object_id": event.object_id,
        "payload": event.payload,
        "subject_job_id": event.subject_job_id,
        "reports_success": event.reports_success,
    }
    row_id = orch.store.insert_webhook_event(args)
    if row_id is None:
        log.info("webhook.duplicate_received", event_id=event.event_id, type=event.type)
        return Stored(None, duplicate=True)
    log.info("webhook.received", event_id=event.event_id, type=event.type, row_id=row_id)
    try:
        send_process_message(orch.dispatcher, row_id)
    except Exception as exc:  # committed: the clock re-sends it after the grace
        log.warning("webhook.dispatch_deferred", row_id=row_id, error=type(exc).__name__)
    return Stored(row_id, duplicate=False)


def send_process_message(dispatcher: Dispatcher, row_id: int) -> None:
    """Hand the event to the worker's ``process_webhook_event`` actor, by name."""
    dispatcher.send_to(PROCESS_ACTOR, row_id)


def endpoint(
    orch: Orchestrator,
    provider: str,
    verify: Verify,
    *,
    clock: Callable[[], float] = time.time,
) -> Callable[[Request], Awaitable[Response]]:
    """The ``POST`` route receiving ``provider``'s webhooks, checked by ``verify``."""

    async def receive(request: Request) -> Response:
        try:
            body = await read_body(request)
            event = verify(body, request.headers, clock())
        except WebhookRejected as exc:
            log.warning("webhook.rejected", reason=exc.reason, status=exc.status)
            return JSONResponse({"error": exc.reason}, status_code=exc.status)
        # The insert and the broker send block: keep them off the event loop.
        stored = await run_in_threadpool(ingest, orch, provider, event)
        return JSONResponse({"received": True, "duplicate": stored.duplicate})

    return receive


def webhook_routes(orch: Orchestrator) -> list[Route]:
    """``POST /webhooks/<name>`` for every registered provider that sends webhooks."""
    from orchestrator.providers.registry import with_webhooks

    return [
        Route(
            f"/webhooks/{spec.name}",
            endpoint(orch, spec.name, spec.webhooks.verifier(orch.settings)),
            methods=["POST"],
        )
        for spec in with_webhooks()
        if spec.webhooks is not None
    ]
