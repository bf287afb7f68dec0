"""Stripe's webhooks: ``Stripe-Signature`` verification, event parsing, and what events mean.

Receiving (``POST /webhooks/stripe``, :func:`stripe_endpoint`): ``Stripe-Signature`` is
verified with the stripe SDK against every configured secret (rotation),
``SIGNATURE_TOLERANCE_S`` into the past, and the same into the future (the SDK does not
check future timestamps); the body must be shaped like a Stripe event.

Processing (:func:`meaning_of`): PaymentIntent events report the intent's state, for the
charge job named by ``metadata.orchestrator_job_id`` or holding the intent's id. Events that
order matters for (``processing``, ``payment_failed``) are answered by re-fetching the
PaymentIntent from Stripe, so a late ``processing`` never undoes a ``succeeded``. Refunds and
disputes are noted on the event row. ``orchestrator.webhooks`` applies what they mean.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import stripe
from starlette.requests import Request
from starlette.responses import Response

from orchestrator.config import Settings
from orchestrator.models import EventStatus, JobKind, WebhookEvent
from orchestrator.providers.stripe.objects import generation_of, outcome_of_intent
from orchestrator.validation import JOB_ID_METADATA_KEY
from orchestrator.webhooks.events import (
    IncomingEvent,
    Meaning,
    NoteReport,
    ObjectReport,
    Result,
    WebhookRejected,
    json_event,
)
from orchestrator.webhooks.ingest import Verify, endpoint

if TYPE_CHECKING:
    from orchestrator.api import Orchestrator

PROVIDER = "stripe"
# Stripe's own default: a captured delivery can be replayed for at most 5 minutes (and the
# unique event id makes a replay inside that window a no-op anyway).
SIGNATURE_TOLERANCE_S = 300
MAX_ID_CHARS = 255

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


# -- receiving ---------------------------------------------------------------------------------


def webhook_secrets(settings: Settings) -> tuple[str, ...]:
    """The signing secrets that verify now: the configured ones (several, comma-separated,
    during a rotation) and, for ORCHESTRATOR_SECRETS_OVERLAP_S after a rotation of a
    referenced secret is seen, the ones it replaced."""
    return settings.secret_values("stripe_webhook_secret")


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
    data = json_event(payload)
    event_id, event_type = data.get("id"), data.get("type")
    container = data.get("data")
    obj = container.get("object") if isinstance(container, dict) else None
    if not _short_text(event_id) or not _short_text(event_type) or not isinstance(obj, dict):
        raise WebhookRejected(400, "event needs an id, a type and data.object")
    object_id = obj.get("id")
    return IncomingEvent(
        str(event_id),
        str(event_type),
        str(object_id) if _short_text(object_id) else None,
        data,
        subject_job_id=_metadata_job_id(obj),
        reports_success=event_type == "payment_intent.succeeded",
    )


def _short_text(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_ID_CHARS


def verifier(settings: Settings) -> Verify:
    """The check of one ``POST /webhooks/stripe`` delivery. The signing secrets are read on
    every delivery, so a rotated secret (see ``orchestrator.secrets``) takes effect at once."""

    def verify(body: bytes, headers: Mapping[str, str], now_s: float) -> IncomingEvent:
        secrets = webhook_secrets(settings)
        verify_signature(body, headers.get("stripe-signature"), secrets, now_s=now_s)
        return parse_event(body)

    return verify


def stripe_endpoint(
    orch: Orchestrator, *, clock: Callable[[], float] = time.time
) -> Callable[[Request], Awaitable[Response]]:
    """The ``POST /webhooks/stripe`` route."""
    return endpoint(orch, PROVIDER, verifier(orch.settings), clock=clock)


# -- processing --------------------------------------------------------------------------------


def meaning_of(event: WebhookEvent) -> Meaning:
    """What a stored Stripe event says about our jobs."""
    payload = event.payload or {}
    obj: dict[str, Any] = payload.get("data", {}).get("object", {})
    if event.type in PAYMENT_INTENT_TYPES:
        return _payment_intent_report(event, obj)
    if event.type in NOTED_TYPES:
        return _note_report(event, obj)
    return Result(EventStatus.IGNORED, f"event type {event.type} is not handled")


def _payment_intent_report(event: WebhookEvent, obj: Mapping[str, Any]) -> ObjectReport:
    refetched = event.type in REFETCHED_TYPES
    return ObjectReport(
        label="PaymentIntent",
        ref=str(obj.get("id") or ""),
        job_kind=JobKind.CHARGE,
        job_id=_metadata_job_id(obj),
        amount=obj.get("amount"),
        currency=obj.get("currency"),
        read_outcome=None if refetched else functools.partial(outcome_of_intent, obj, None),
        generation=generation_of(obj),
    )


def _note_report(event: WebhookEvent, obj: Mapping[str, Any]) -> NoteReport:
    """Refunds and disputes are recorded on the event row; the charge job keeps its state."""
    pi_id = obj.get("payment_intent")
    amount, currency = obj.get("amount"), obj.get("currency")
    if event.type == "charge.refunded":
        note = f"charge refunded: {obj.get('amount_refunded')} of {amount} {currency}"
    else:
        note = f"dispute {obj.get('id')} opened ({obj.get('reason')}): {amount} {currency}"
    return NoteReport(
        job_id=_metadata_job_id(obj),
        ref=str(pi_id) if pi_id else None,
        subject=f"{obj.get('object')} {obj.get('id')}",
        note=note,
    )


def _metadata_job_id(obj: Mapping[str, Any]) -> str | None:
    metadata = obj.get("metadata")
    value = metadata.get(JOB_ID_METADATA_KEY) if isinstance(metadata, dict) else None
    try:
        return str(uuid.UUID(str(value))) if value else None
    except ValueError:
        return None
