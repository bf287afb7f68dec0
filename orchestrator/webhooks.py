"""Stripe webhooks: verified, stored once, answered fast, processed in the background.

Receiving (``POST /webhooks/stripe`` in the ``web`` process, :func:`stripe_endpoint`):

1. read   the raw body as a stream, refusing more than ``MAX_BODY_BYTES`` (413), up front
          when ``Content-Length`` says so;
2. verify ``Stripe-Signature`` with the stripe SDK against every configured secret (rotation),
          ``SIGNATURE_TOLERANCE_S`` into the past, and the same into the future (the SDK does
          not check future timestamps);
3. store  ``INSERT ... ON CONFLICT DO NOTHING`` on (provider, event id): a redelivery answers
          2xx and changes nothing;
4. answer 2xx once the row is committed; the ``process_webhook_event`` message goes out after
          the commit (if it is lost, :func:`redispatch_stale_events` in the clock re-sends it).

Processing (the worker, :func:`process_event`): claim the row (compare-and-set on
``status = 'received'`` plus a lease), find the job by ``metadata.orchestrator_job_id`` or by
provider object id, move it forward with one UPDATE naming the states it may leave, and
record what happened on the row. Events that order matters for (``processing``,
``payment_failed``) re-fetch the PaymentIntent from Stripe and act on its current status, so
a late ``processing`` never undoes a ``succeeded``.

The payload is stored whole but never logged; log events carry ids, types and states only.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import dramatiq
import stripe
from psycopg.types.json import Jsonb
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from orchestrator.config import Settings
from orchestrator.errors import JobNotFound, ProviderUnavailable, ValidationError
from orchestrator.logs import get_logger
from orchestrator.models import AttemptOutcome, Job, JobKind, JobState
from orchestrator.providers.base import Outcome, Provider
from orchestrator.providers.stripe import outcome_of_intent
from orchestrator.store import Row, q
from orchestrator.validation import JOB_ID_METADATA_KEY

if TYPE_CHECKING:
    from orchestrator.api import Orchestrator

log = get_logger(__name__)

PROVIDER = "stripe"
PROCESS_ACTOR = "process_webhook_event"
# Stripe events are a few KB; 1 MiB bounds the memory one request can make us hold.
MAX_BODY_BYTES = 1024 * 1024
# Stripe's own default: a captured delivery can be replayed for at most 5 minutes (and the
# unique event id makes a replay inside that window a no-op anyway).
SIGNATURE_TOLERANCE_S = 300
# An event whose processing failed this many times is parked as `failed` for an operator.
MAX_PROCESS_ATTEMPTS = 10
# Rows one clock pass re-sends, so a backlog is worked through in bounded slices.
REDISPATCH_BATCH_LIMIT = 500
MAX_ID_CHARS = 255
MAX_NOTE_CHARS = 500
MAX_ERROR_CHARS = 2000

# Event types whose object's *current* state matters more than the event's: the PaymentIntent
# is re-fetched from Stripe. `succeeded` and `canceled` are final at Stripe, so the verified
# payload is the truth.
REFETCHED_TYPES = frozenset({"payment_intent.processing", "payment_intent.payment_failed"})
PAYMENT_INTENT_TYPES = frozenset(
    {
        "payment_intent.succeeded",
        "payment_intent.payment_failed",
        "payment_intent.processing",
        "payment_intent.canceled",
    }
)
NOTED_TYPES = frozenset({"charge.refunded", "charge.dispute.created"})

# Which states a provider event may move a charge job out of, by the state it proves.
# Never backwards: succeeded, failed and cancelled are final, dead waits for an operator.
# running -> processing/failed is left to the worker, which hears the same answer itself;
# a retrying job's last attempt provably did not execute, so only a success can concern it.
SETTLE_FROM: dict[JobState, tuple[JobState, ...]] = {
    JobState.SUCCEEDED: (
        JobState.RUNNING,
        JobState.RETRYING,
        JobState.UNKNOWN,
        JobState.PROCESSING,
    ),
    JobState.PROCESSING: (JobState.UNKNOWN,),
    JobState.FAILED: (JobState.UNKNOWN, JobState.PROCESSING),
}
_TARGET_OF: dict[AttemptOutcome, JobState] = {
    AttemptOutcome.SUCCEEDED: JobState.SUCCEEDED,
    AttemptOutcome.PENDING: JobState.PROCESSING,
    AttemptOutcome.PERMANENT: JobState.FAILED,
}
EVENT_STATUSES = ("received", "processed", "ignored", "failed")


class WebhookRejected(ValidationError):
    """A delivery refused before anything was stored; ``status`` is the HTTP answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


# -- rows ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """A row of ``webhook_events`` (``payload`` only when read one at a time)."""

    id: int
    provider: str
    event_id: str
    type: str
    object_id: str | None
    job_id: str | None
    status: str
    attempts: int
    note: str | None
    last_error: str | None
    received_at: datetime
    processed_at: datetime | None
    payload: dict[str, Any] | None = None

    @classmethod
    def from_row(cls, row: Row) -> WebhookEvent:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in row.items() if k in names}
        values["status"] = str(values["status"])
        if values.get("job_id") is not None:
            values["job_id"] = str(values["job_id"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.isoformat() if isinstance(value, datetime) else value
        return out


@dataclass(frozen=True, slots=True)
class IncomingEvent:
    """A verified delivery, parsed just enough to store it."""

    event_id: str
    type: str
    object_id: str | None
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Stored:
    row_id: int | None
    duplicate: bool


@dataclass(frozen=True, slots=True)
class Result:
    """What processing decided for one event."""

    status: str  # processed | ignored | failed
    note: str
    job_id: str | None = None


# -- receiving ---------------------------------------------------------------------------------


def webhook_secrets(settings: Settings) -> tuple[str, ...]:
    """The configured signing secrets (several, comma-separated, during a rotation)."""
    raw = settings.stripe_webhook_secret
    if raw is None:
        return ()
    return tuple(s.strip() for s in raw.get_secret_value().split(",") if s.strip())


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


def signed_at(header: str) -> int:
    """The ``t=`` timestamp of a ``Stripe-Signature`` header."""
    for item in header.split(","):
        name, sep, value = item.strip().partition("=")
        if sep and name == "t":
            try:
                return int(value)
            except ValueError:
                break
    raise WebhookRejected(400, "signature header has no valid timestamp")


def verify_signature(
    payload: bytes,
    header: str | None,
    secrets: Sequence[str],
    *,
    now_s: float,
    tolerance_s: int = SIGNATURE_TOLERANCE_S,
) -> None:
    """Accept a body signed with any of ``secrets`` within ``tolerance_s`` of ``now_s``.

    The one place ``stripe.SignatureVerificationError`` is translated (its message and the
    header stay out of our errors and logs).
    """
    if not secrets:
        raise WebhookRejected(503, "no webhook secret is configured")
    if not header:
        raise WebhookRejected(400, "missing Stripe-Signature header")
    if signed_at(header) > now_s + tolerance_s:
        raise WebhookRejected(400, "signature timestamp is in the future")
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(payload, header, secret, tolerance=tolerance_s)
        except stripe.SignatureVerificationError:
            continue
        except UnicodeDecodeError:
            raise WebhookRejected(400, "body is not UTF-8") from None
        return
    raise WebhookRejected(400, "signature does not verify (secret, body or timestamp)")


def parse_event(payload: bytes) -> IncomingEvent:
    """The event's id, type and object id; anything not shaped like a Stripe event is refused."""
    try:
        data = json.loads(payload)
    except ValueError:
        raise WebhookRejected(400, "body is not JSON") from None
    if not isinstance(data, dict):
        raise WebhookRejected(400, "body is not an event object")
    event_id, event_type = data.get("id"), data.get("type")
    container = data.get("data")
    obj = container.get("object") if isinstance(container, dict) else None
    if not _short_text(event_id) or not _short_text(event_type) or not isinstance(obj, dict):
        raise WebhookRejected(400, "event needs an id, a type and data.object")
    object_id = obj.get("id")
    return IncomingEvent(
        str(event_id), str(event_type), str(object_id) if _short_text(object_id) else None, data
    )


def _short_text(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_ID_CHARS


def ingest(orch: Orchestrator, event: IncomingEvent) -> Stored:
    """Store the event once; after commit, send its processing message (new events only)."""
    args = {
        "provider": PROVIDER,
        "event_id": event.event_id,
        "type": event.type,
        "object_id": event.object_id,
        "payload": Jsonb(event.payload),
    }
    with orch.store.connection() as conn:
        row = conn.execute(q("insert_webhook_event"), args).fetchone()
    if row is None:
        log.info("webhook.duplicate_received", event_id=event.event_id, type=event.type)
        return Stored(None, duplicate=True)
    row_id = int(row["id"])
    log.info("webhook.received", event_id=event.event_id, type=event.type, row_id=row_id)
    try:
        send_process_message(orch, row_id)
    except Exception as exc:  # committed: the clock re-sends it after the grace
        log.warning("webhook.dispatch_deferred", row_id=row_id, error=type(exc).__name__)
    return Stored(row_id, duplicate=False)


def send_process_message(orch: Orchestrator, row_id: int) -> None:
    """Hand the event to the worker's ``process_webhook_event`` actor, by name."""
    message: dramatiq.Message[Any] = dramatiq.Message(
        queue_name=orch.settings.queue_name,
        actor_name=PROCESS_ACTOR,
        args=(row_id,),
        kwargs={},
        options={},
    )
    orch.broker.enqueue(message)


def stripe_endpoint(
    orch: Orchestrator, *, clock: Callable[[], float] = time.time
) -> Callable[[Request], Awaitable[Response]]:
    """The ``POST /webhooks/stripe`` route; the secrets are read once, here."""
    secrets = webhook_secrets(orch.settings)

    async def receive(request: Request) -> Response:
        try:
            body = await read_body(request)
            verify_signature(body, request.headers.get("stripe-signature"), secrets, now_s=clock())
            event = parse_event(body)
        except WebhookRejected as exc:
            log.warning("webhook.rejected", reason=exc.reason, status=exc.status)
            return JSONResponse({"error": exc.reason}, status_code=exc.status)
        # The insert and the broker send block: keep them off the event loop.
        stored = await run_in_threadpool(ingest, orch, event)
        return JSONResponse({"received": True, "duplicate": stored.duplicate})

    return receive


# -- processing --------------------------------------------------------------------------------


def process_event(
    orch: Orchestrator, row_id: int, *, provider: Provider | None = None
) -> WebhookEvent | None:
    """Apply one stored event to its job; None when another processor holds it or it is done."""
    row = _one(orch, "claim_webhook_event", {"id": row_id, "lease_s": orch.settings.lease_s})
    if row is None:
        log.debug("webhook.claim_lost", row_id=row_id)
        return None
    event = WebhookEvent.from_row(row)
    try:
        result = apply_event(orch, provider or orch.executor().providers[PROVIDER], event)
    except Exception as exc:  # a lookup failed, or a bug: try again later, then park it
        error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
        released = _one(
            orch,
            "release_webhook_event",
            {"id": row_id, "error": error, "max_attempts": MAX_PROCESS_ATTEMPTS},
        )
        level = log.warning if isinstance(exc, ProviderUnavailable) else log.error
        level(
            "webhook.processing_failed",
            event_id=event.event_id,
            type=event.type,
            attempts=event.attempts,
            error=type(exc).__name__,
        )
        return WebhookEvent.from_row(released) if released else None
    done = _one(
        orch,
        "finish_webhook_event",
        {"id": row_id, "status": result.status, "job_id": result.job_id, "note": result.note},
    )
    log.info(
        "webhook.processed",
        event_id=event.event_id,
        type=event.type,
        status=result.status,
        job_id=result.job_id,
        note=result.note,
    )
    return WebhookEvent.from_row(done) if done else None


def apply_event(orch: Orchestrator, provider: Provider, event: WebhookEvent) -> Result:
    """Decide and apply what one event means for its job."""
    payload = event.payload or {}
    obj: dict[str, Any] = payload.get("data", {}).get("object", {})
    if event.type in PAYMENT_INTENT_TYPES:
        return _apply_payment_intent(orch, provider, event, obj)
    if event.type in NOTED_TYPES:
        return _apply_note(orch, event, obj)
    return Result("ignored", f"event type {event.type} is not handled")


def _apply_payment_intent(
    orch: Orchestrator, provider: Provider, event: WebhookEvent, obj: Mapping[str, Any]
) -> Result:
    pi_id = str(obj.get("id") or "")
    job = find_job(orch, _metadata_job_id(obj), pi_id)
    if job is None or job.kind is not JobKind.CHARGE or job.provider != PROVIDER:
        return Result("ignored", f"no charge job of ours for PaymentIntent {pi_id}")
    if obj.get("amount") != job.amount or obj.get("currency") != job.currency:
        log.error("webhook.amount_mismatch", event_id=event.event_id, job_id=job.id)
        return Result("failed", "amount or currency differ from the job's: not applied", job.id)
    if event.type in REFETCHED_TYPES:
        # Order matters here: act on the intent as it is now, not as it was when sent.
        found = provider.lookup(dataclasses.replace(job, provider_ref=pi_id))
        if found is None:
            raise ProviderUnavailable(f"PaymentIntent {pi_id} not found at the provider")
        outcome = found
    else:
        outcome = outcome_of_intent(obj, None)
    return _settle(orch, event, job, outcome, pi_id)


def _settle(
    orch: Orchestrator, event: WebhookEvent, job: Job, outcome: Outcome, pi_id: str
) -> Result:
    target = _TARGET_OF.get(outcome.kind)
    if target is None:
        return Result("ignored", f"PaymentIntent status {outcome.provider_status} says nothing")
    if job.provider_ref not in (None, pi_id):
        if target is JobState.SUCCEEDED:  # a second successful intent for one job
            log.error("webhook.second_charge_detected", job_id=job.id, event_id=event.event_id)
        return Result("processed", f"job refers to {job.provider_ref}, not {pi_id}", job.id)
    delay_s = orch.settings.processing_poll_s if target is JobState.PROCESSING else 0.0
    args = {
        "id": job.id,
        "to_state": str(target),
        "from_states": [str(s) for s in SETTLE_FROM[target]],
        "provider_ref": pi_id,
        "provider_status": outcome.provider_status,
        "error_code": outcome.error_code,
        "delay_s": delay_s,
        "changed_by": f"webhook:{event.event_id}"[:200],
        "reason": f"{event.type}: PaymentIntent {pi_id} is {outcome.provider_status}"[:500],
    }
    settled = _one(orch, "settle_job_from_webhook", args)
    if settled is None:
        current = orch.store.job(job.id)
        state = current.state if current else job.state
        return Result("processed", f"job is {state}: no change ({outcome.provider_status})", job.id)
    if target is JobState.PROCESSING:
        orch.dispatcher.send(job.id, delay_s)  # polled until final, like any processing job
    log.info("job.settled_by_webhook", job_id=job.id, state=str(target), event_id=event.event_id)
    return Result("processed", f"job {job.state} -> {target}", job.id)


def _apply_note(orch: Orchestrator, event: WebhookEvent, obj: Mapping[str, Any]) -> Result:
    """Refunds and disputes are recorded on the event row; the charge job keeps its state."""
    pi_id = obj.get("payment_intent")
    job = find_job(orch, _metadata_job_id(obj), str(pi_id) if pi_id else None)
    if job is None:
        return Result("ignored", f"no job of ours for {obj.get('object')} {obj.get('id')}")
    amount, currency = obj.get("amount"), obj.get("currency")
    if event.type == "charge.refunded":
        note = f"charge refunded: {obj.get('amount_refunded')} of {amount} {currency}"
    else:
        note = f"dispute {obj.get('id')} opened ({obj.get('reason')}): {amount} {currency}"
    return Result("processed", note[:MAX_NOTE_CHARS], job.id)


def find_job(orch: Orchestrator, job_id: str | None, provider_ref: str | None) -> Job | None:
    """The job named in the object's metadata, else the job holding that provider id."""
    if job_id is not None:
        job = orch.store.job(job_id)
        if job is not None:
            return job
    if not provider_ref:
        return None
    row = _one(orch, "job_by_provider_ref", {"provider": PROVIDER, "provider_ref": provider_ref})
    return Job.from_row(row) if row else None


def _metadata_job_id(obj: Mapping[str, Any]) -> str | None:
    metadata = obj.get("metadata")
    value = metadata.get(JOB_ID_METADATA_KEY) if isinstance(metadata, dict) else None
    try:
        return str(uuid.UUID(str(value))) if value else None
    except ValueError:
        return None


# -- the clock ---------------------------------------------------------------------------------


def redispatch_stale_events(orch: Orchestrator) -> int:
    """Re-send the message of every event received but left unprocessed past the grace."""
    args = {"grace_s": orch.settings.dispatch_grace_s, "limit": REDISPATCH_BATCH_LIMIT}
    with orch.store.connection() as conn:
        ids = [int(r["id"]) for r in conn.execute(q("stale_webhook_events"), args).fetchall()]
    for row_id in ids:
        send_process_message(orch, row_id)
    if ids:
        log.info("clock.webhook_events_redispatched", count=len(ids))
    return len(ids)


def count_stale_events(orch: Orchestrator) -> int:
    """How many events :func:`redispatch_stale_events` would re-send now (dry runs)."""
    row = _one(orch, "count_stale_webhook_events", {"grace_s": orch.settings.dispatch_grace_s})
    return int(row["n"]) if row else 0


# -- operators ---------------------------------------------------------------------------------


def list_events(
    orch: Orchestrator,
    *,
    status: str | None = None,
    event_type: str | None = None,
    job_id: str | None = None,
    limit: int = 50,
) -> list[WebhookEvent]:
    """Events newest first, without payloads."""
    if status is not None and status not in EVENT_STATUSES:
        raise ValidationError(f"status must be one of {', '.join(EVENT_STATUSES)}")
    if job_id is not None:
        job_id = _uuid(job_id, "job id")
    if not 1 <= limit <= 1000:
        raise ValidationError("limit must be between 1 and 1000")
    args = {"status": status, "type": event_type, "job_id": job_id, "limit": limit}
    with orch.store.connection() as conn:
        rows = conn.execute(q("list_webhook_events"), args).fetchall()
    return [WebhookEvent.from_row(r) for r in rows]


def get_event(orch: Orchestrator, ident: str) -> WebhookEvent:
    """One event with its payload, by row id or by provider event id (``evt_...``)."""
    if ident.isdigit():
        row = _one(orch, "webhook_event_by_id", {"id": int(ident)})
    else:
        row = _one(orch, "webhook_event_by_event_id", {"provider": PROVIDER, "event_id": ident})
    if row is None:
        raise JobNotFound(f"no webhook event {ident}")
    return WebhookEvent.from_row(row)


def _uuid(value: str, what: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ValidationError(f"{what} must be a UUID") from None


def _one(orch: Orchestrator, name: str, args: dict[str, Any]) -> Row | None:
    with orch.store.connection() as conn:
        row: Row | None = conn.execute(q(name), args).fetchone()
    return row
