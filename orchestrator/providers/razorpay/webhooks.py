"""Razorpay's webhooks: ``X-Razorpay-Signature`` verification, event parsing, what events mean.

Receiving (``POST /webhooks/razorpay``, :func:`verifier`): the signature is the hex
HMAC-SHA256 of the raw body keyed with the webhook secret, checked in constant time against
every configured secret (several during a rotation), read on every delivery. Razorpay signs
no timestamp, so a replayed delivery is recognised by its ``x-razorpay-event-id`` header
(unique per event, Razorpay's own deduplication key), which is required and stored as the
event id: a redelivery is a duplicate and changes nothing. A body that does not verify is
refused with 401 and stores nothing; a missing signature or event id, or a body that is not
a Razorpay event, with 400.

Processing (:func:`meaning_of`): ``payment.captured`` and ``order.paid`` report the payment's
success, ``payment.failed`` its failure (re-read from Razorpay first: a payment reported failed
can still be authorized late, and events come in any order), ``refund.processed`` a refund's
success; the job is the one named in the entity's ``notes.orchestrator_job_id``, and the key
generation in its notes keeps an older generation's failure from failing the job. Anything else
is ignored. ``orchestrator.webhooks`` applies what they mean, moving jobs forward only.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from orchestrator.models import EventStatus, JobKind, WebhookEvent
from orchestrator.providers.http import header
from orchestrator.providers.razorpay.objects import (
    generation_of,
    generation_of_receipt,
    job_id_of,
    notes_of,
    outcome_of_payment,
    outcome_of_refund,
)
from orchestrator.providers.razorpay.settings import RazorpaySettings, load_razorpay_settings
from orchestrator.validation import KEY_GENERATION_METADATA_KEY
from orchestrator.webhooks.events import (
    IncomingEvent,
    Meaning,
    ObjectReport,
    Result,
    WebhookRejected,
    json_event,
)

if TYPE_CHECKING:
    from orchestrator.config import Settings
    from orchestrator.webhooks.ingest import Verify

PROVIDER = "razorpay"
SIGNATURE_HEADER = "X-Razorpay-Signature"
EVENT_ID_HEADER = "x-razorpay-event-id"
MAX_ID_CHARS = 255

PAYMENT_TYPES = frozenset({"payment.captured", "payment.failed", "order.paid"})
REFUND_TYPES = frozenset({"refund.processed"})
# Events reporting that the job's object succeeded: a claim processes a stored one before
# letting a new attempt call out.
SUCCESS_TYPES = frozenset({"payment.captured", "order.paid", "refund.processed"})
# Events whose object's current state matters more than the event's: the payment is re-read.
REFETCHED_TYPES = frozenset({"payment.failed"})


# -- receiving ---------------------------------------------------------------------------------


def webhook_secrets(settings: RazorpaySettings) -> tuple[str, ...]:
    """The configured signing secrets, current first (several during a rotation)."""
    found: list[str] = []
    for value in settings.secret_values("razorpay_webhook_secret"):
        found.extend(s.strip() for s in value.split(",") if s.strip())
    return tuple(found)


def signature_of(payload: bytes, secret: str) -> str:
    """Razorpay's ``X-Razorpay-Signature`` of ``payload``: hex HMAC-SHA256 keyed by ``secret``."""
    return hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()


def verify_signature(payload: bytes, signature: str | None, secrets: Sequence[str]) -> None:
    """Accept a body signed with any of ``secrets``; WebhookRejected otherwise (503 when no
    secret is configured, so Razorpay retries once one is; 400 without a signature; 401 when
    it does not verify)."""
    if not secrets:
        raise WebhookRejected(503, "no webhook secret is configured")
    if not signature or not signature.strip():
        raise WebhookRejected(400, f"missing {SIGNATURE_HEADER} header")
    given = signature.strip().lower().encode("utf-8", "replace")
    verified = False
    for secret in secrets:  # every secret is tried: the time taken says nothing of which
        verified |= hmac.compare_digest(signature_of(payload, secret).encode(), given)
    if not verified:
        raise WebhookRejected(401, "signature does not verify (secret or body)")


def parse_event(payload: bytes, event_id: str | None) -> IncomingEvent:
    """The event's id (from the ``x-razorpay-event-id`` header), type and entity; anything not
    shaped like a Razorpay event is refused."""
    if not _short_text(event_id):
        raise WebhookRejected(400, f"missing {EVENT_ID_HEADER} header")
    assert event_id is not None
    data = json_event(payload)
    event_type, contents = data.get("event"), data.get("payload")
    if not _short_text(event_type) or not isinstance(contents, dict):
        raise WebhookRejected(400, "event needs an event type and a payload")
    subject = _subject(str(event_type), contents)
    object_id = subject.get("id") if subject is not None else None
    job_id = job_id_of(subject) if subject is not None else None
    order = _entity(contents, "order")
    if job_id is None and order is not None:
        job_id = job_id_of(order)
    return IncomingEvent(
        event_id.strip(),
        str(event_type),
        str(object_id) if _short_text(object_id) else None,
        data,
        subject_job_id=job_id,
        reports_success=event_type in SUCCESS_TYPES,
    )


def _short_text(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value.strip()) <= MAX_ID_CHARS


def _entity(contents: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    """``payload.<name>.entity`` of an event, or None."""
    wrapper = contents.get(name)
    entity = wrapper.get("entity") if isinstance(wrapper, Mapping) else None
    return entity if isinstance(entity, Mapping) and entity.get("id") else None


def _subject(event_type: str, contents: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The entity an event is about: the refund of a refund event, else the payment, else
    the entity its type names (``order`` for ``order.*``)."""
    if event_type in REFUND_TYPES or event_type.startswith("refund."):
        return _entity(contents, "refund")
    return _entity(contents, "payment") or _entity(contents, event_type.partition(".")[0])


def verifier(settings: Settings) -> Verify:
    """The check of one ``POST /webhooks/razorpay`` delivery. Razorpay's settings are read
    once; the signing secrets are asked of them on every delivery, so a rotated secret is
    honoured without a restart."""
    razorpay_settings = load_razorpay_settings()

    def verify(body: bytes, headers: Mapping[str, str], now_s: float) -> IncomingEvent:
        verify_signature(
            body, header(headers, SIGNATURE_HEADER), webhook_secrets(razorpay_settings)
        )
        return parse_event(body, header(headers, EVENT_ID_HEADER))

    return verify


# -- processing --------------------------------------------------------------------------------


def meaning_of(event: WebhookEvent) -> Meaning:
    """What a stored Razorpay event says about our jobs."""
    contents = (event.payload or {}).get("payload")
    if not isinstance(contents, Mapping):
        return Result(EventStatus.IGNORED, "event has no payload")
    if event.type in PAYMENT_TYPES:
        payment = _entity(contents, "payment")
        if payment is None:
            return Result(EventStatus.IGNORED, f"{event.type} carries no payment")
        return _payment_report(event, payment, _entity(contents, "order"))
    if event.type in REFUND_TYPES:
        refund = _entity(contents, "refund")
        if refund is None:
            return Result(EventStatus.IGNORED, f"{event.type} carries no refund")
        return ObjectReport(
            label="refund",
            ref=str(refund["id"]),
            job_kind=JobKind.REFUND,
            job_id=job_id_of(refund),
            amount=refund.get("amount"),
            currency=_currency(refund),
            read_outcome=functools.partial(outcome_of_refund, refund, None),
            generation=generation_of(refund),
        )
    return Result(EventStatus.IGNORED, f"event type {event.type} is not handled")


def _payment_report(
    event: WebhookEvent, payment: Mapping[str, Any], order: Mapping[str, Any] | None
) -> ObjectReport:
    refetched = event.type in REFETCHED_TYPES
    job_id = job_id_of(payment) or (job_id_of(order) if order is not None else None)
    return ObjectReport(
        label="payment",
        ref=str(payment["id"]),
        job_kind=JobKind.CHARGE,
        job_id=job_id,
        amount=payment.get("amount"),
        currency=_currency(payment),
        read_outcome=None if refetched else functools.partial(outcome_of_payment, payment, None),
        generation=_payment_generation(payment, order),
    )


def _payment_generation(payment: Mapping[str, Any], order: Mapping[str, Any] | None) -> int | None:
    """The key generation that made the payment: from its notes, else its order's notes or
    receipt; None when nothing says (then no generation check applies)."""
    for entity in (payment, order):
        if entity is not None and KEY_GENERATION_METADATA_KEY in notes_of(entity):
            return generation_of(entity)
    return generation_of_receipt(order.get("receipt")) if order is not None else None


def _currency(entity: Mapping[str, Any]) -> object:
    """The entity's currency as jobs hold it (lower case); Razorpay writes ``INR``."""
    currency = entity.get("currency")
    return currency.lower() if isinstance(currency, str) else currency
