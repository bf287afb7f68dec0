"""Razorpay's objects in and out: what a job sends (orders, recurring payments, refunds) and
what a payment or refund that comes back means for the job.

Every object a job makes carries ``notes.orchestrator_job_id`` and
``notes.orchestrator_key_generation`` (Razorpay's notes: at most 15 pairs of at most 256
characters, so the job's own metadata is copied only as far as it fits, the same way on every
attempt). An order is named by its ``receipt``, derived from the job id and the key
generation: the handle that finds it again, and that Razorpay keeps unique.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from orchestrator.models import AttemptOutcome, Job
from orchestrator.providers.base import Outcome
from orchestrator.providers.http import clip
from orchestrator.validation import JOB_ID_METADATA_KEY, KEY_GENERATION_METADATA_KEY

# Razorpay: a receipt has at most 40 characters; notes at most 15 pairs of 256 characters.
MAX_RECEIPT_CHARS = 40
MAX_NOTES = 15
MAX_NOTE_CHARS = 256
# X-Refund-Idempotency: at least 10 characters of letters, digits, '-' and '_'. No maximum is
# documented; this one (35) stays within the 36 of Razorpay's other idempotency keys.
REFUND_KEY_PREFIX = "rf-"
REFUND_KEY_HEX_CHARS = 32

# Payment statuses (Razorpay's payment entity: created, authorized, captured, refunded,
# failed), ranked for choosing a job's most telling payment: money taken first, then money
# on its way, then failures.
PAYMENT_RANK = {"captured": 0, "refunded": 0, "authorized": 1, "created": 2, "failed": 3}
# Refund statuses (pending, processed, failed), ranked the same way.
REFUND_RANK = {"processed": 0, "pending": 1, "failed": 2}


# -- names -----------------------------------------------------------------------------------


def receipt_for(job_id: str, generation: int) -> str:
    """The receipt of the order of ``job_id``'s key generation ``generation``: the job id's 32
    hex digits, ``-g`` and the generation (at most 40 characters for any generation below a
    million), unique per (job, generation)."""
    receipt = f"{uuid.UUID(job_id).hex}-g{generation}"
    if len(receipt) > MAX_RECEIPT_CHARS:
        raise ValueError(f"key generation {generation} does not fit a Razorpay receipt")
    return receipt


def generation_of_receipt(receipt: object) -> int | None:
    """The key generation a receipt made by :func:`receipt_for` names, or None."""
    if not isinstance(receipt, str):
        return None
    head, sep, gen = receipt.rpartition("-g")
    if not sep or len(head) != 32 or not gen.isdigit():
        return None
    return int(gen)


def refund_key(idempotency_key: str) -> str:
    """The ``X-Refund-Idempotency`` header for the provider key of a refund job (one per job
    and key generation): a digest of it, in the characters and length Razorpay accepts."""
    digest = hashlib.sha256(idempotency_key.encode()).hexdigest()
    return REFUND_KEY_PREFIX + digest[:REFUND_KEY_HEX_CHARS]


def notes_for(job: Job, generation: int | None = None) -> dict[str, str]:
    """The notes of an object the job makes: its id and key generation, then as much of its
    metadata as Razorpay's limits take (by key order, values that fit), identical on every
    attempt of a generation."""
    gen = job.key_generation if generation is None else generation
    notes = {JOB_ID_METADATA_KEY: job.id, KEY_GENERATION_METADATA_KEY: str(gen)}
    for key in sorted(job.metadata):
        value = job.metadata[key]
        if len(notes) >= MAX_NOTES:
            break
        if len(key) <= MAX_NOTE_CHARS and len(value) <= MAX_NOTE_CHARS:
            notes[key] = value
    return notes


# -- what a job sends ------------------------------------------------------------------------


def order_params(job: Job) -> dict[str, Any]:
    """The order of a charge job's current key generation: identical on every attempt of it.
    ``payment_capture`` on: Razorpay captures the payment once it is authorized."""
    assert job.amount is not None and job.currency is not None
    return {
        "amount": job.amount,
        "currency": job.currency.upper(),
        "receipt": receipt_for(job.id, job.key_generation),
        "payment_capture": True,
        "notes": notes_for(job),
    }


def payment_params(job: Job, order_id: str) -> dict[str, Any]:
    """The recurring payment charging the job's saved token on ``order_id`` (Razorpay's
    ``POST /v1/payments/create/recurring``: email, contact, amount equal to the order's,
    currency, order_id, customer_id, token, recurring)."""
    assert job.amount is not None and job.currency is not None
    params: dict[str, Any] = {
        "email": job.params.get("email"),
        "contact": job.params.get("contact"),
        "amount": job.amount,
        "currency": job.currency.upper(),
        "order_id": order_id,
        "customer_id": job.customer,
        "token": job.payment_method,
        "recurring": True,
        "notes": notes_for(job),
    }
    description = job.params.get("description")
    if description:
        params["description"] = description
    return params


def refund_params(job: Job) -> dict[str, Any]:
    """The refund of a refund job: the job's amount (reserved against the charge by the app
    layer, so never more than the payment), identical on every attempt of a key generation
    (Razorpay refuses another body under the same ``X-Refund-Idempotency`` key)."""
    return {"amount": job.amount, "notes": notes_for(job)}


# -- what comes back -------------------------------------------------------------------------


def outcome_of_payment(payment: Mapping[str, Any], request_id: str | None = None) -> Outcome:
    """What a payment means for its charge job.

    ``captured``: the money is taken (SUCCEEDED). ``refunded`` after a capture: it was taken,
    refunds are their own jobs (SUCCEEDED). ``authorized``: not taken yet even with
    ``payment_capture`` on, since Razorpay auto-captures only within the automatic capture
    window and auto-refunds a payment authorized after it (a late authorization), so the job
    waits (PENDING) for ``captured``. ``created``: a recurring debit the bank settles later,
    hours for file-based banks (PENDING). ``failed``: PERMANENT with Razorpay's error reason;
    ``refunded`` without a capture is an auto-refunded authorization, no money taken
    (PERMANENT). A status Razorpay may add is treated as pending, never as a failure.
    """
    status = str(payment.get("status") or "")
    ref = str(payment["id"])
    if status == "captured" or (status == "refunded" and payment.get("captured") is not False):
        return Outcome(
            AttemptOutcome.SUCCEEDED,
            provider_ref=ref,
            provider_status=status,
            request_id=request_id,
        )
    if status in ("failed", "refunded"):
        reason = payment.get("error_reason") or payment.get("error_code")
        code = str(reason) if reason else f"payment_{status}"
        if status == "refunded":
            code = "auto_refunded"
        description = payment.get("error_description")
        return Outcome(
            AttemptOutcome.PERMANENT,
            provider_ref=ref,
            provider_status=status,
            error_class="PaymentStatus",
            error_code=code,
            message=clip(str(description)) if description else None,
            request_id=request_id,
        )
    return Outcome(
        AttemptOutcome.PENDING, provider_ref=ref, provider_status=status, request_id=request_id
    )


def outcome_of_refund(refund: Mapping[str, Any], request_id: str | None = None) -> Outcome:
    """What a refund means for its refund job: ``processed`` SUCCEEDED, ``failed`` PERMANENT,
    ``pending`` (or a status Razorpay may add) PENDING."""
    status = str(refund.get("status") or "")
    ref = str(refund["id"])
    if status == "processed":
        kind = AttemptOutcome.SUCCEEDED
    elif status == "failed":
        kind = AttemptOutcome.PERMANENT
    else:
        kind = AttemptOutcome.PENDING
    failed = kind is AttemptOutcome.PERMANENT
    return Outcome(
        kind,
        provider_ref=ref,
        provider_status=status,
        error_class="RefundStatus" if failed else None,
        error_code="refund_failed" if failed else None,
        request_id=request_id,
    )


def best_payment(
    found: Iterable[tuple[Mapping[str, Any], int]], current_generation: int
) -> Mapping[str, Any] | None:
    """The job's most telling payment among ``(payment, key generation of its order)`` pairs.

    A captured, authorized or pending payment of any generation speaks for the job (its
    orders take one success each, and an old generation's payment may still settle). A
    failed one of an older generation says nothing about the current one: it is ignored, so a
    lookup never fails a job on a superseded attempt.
    """
    live = [
        (payment, gen)
        for payment, gen in found
        if PAYMENT_RANK.get(str(payment.get("status")), 2) < PAYMENT_RANK["failed"]
        or gen >= current_generation
    ]
    if not live:
        return None
    return min(
        live,
        key=lambda pair: (
            PAYMENT_RANK.get(str(pair[0].get("status")), 2),
            -int(pair[0].get("created_at") or 0),
        ),
    )[0]


def best_refund(job: Job, refunds: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The refund job's most telling refund among a payment's refunds: only those naming the
    job count; a failed one of an older key generation is ignored."""
    mine = [r for r in refunds if job_id_of(r) == job.id]
    live = [
        r
        for r in mine
        if str(r.get("status")) != "failed" or generation_of(r) >= job.key_generation
    ]
    if not live:
        return None
    return min(
        live,
        key=lambda r: (REFUND_RANK.get(str(r.get("status")), 1), -int(r.get("created_at") or 0)),
    )


def notes_of(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """An entity's notes (Razorpay answers ``[]`` for none)."""
    notes = obj.get("notes")
    return notes if isinstance(notes, Mapping) else {}


def job_id_of(obj: Mapping[str, Any]) -> str | None:
    """The job named in an entity's notes, as a canonical UUID, or None."""
    value = notes_of(obj).get(JOB_ID_METADATA_KEY)
    try:
        return str(uuid.UUID(str(value))) if value else None
    except ValueError:
        return None


def generation_of(obj: Mapping[str, Any]) -> int:
    """The key generation in an entity's notes (0 when absent or unreadable)."""
    value = notes_of(obj).get(KEY_GENERATION_METADATA_KEY)
    try:
        return int(value) if value is not None else 0
    except (TypeError, ValueError):
        return 0


def items_of(collection: Any) -> list[Mapping[str, Any]]:
    """The entities of a Razorpay collection (``{"entity": "collection", "items": [...]}``)."""
    items = collection.get("items") if isinstance(collection, Mapping) else None
    if not isinstance(items, list):
        return []
    return [item for item in items if isinstance(item, Mapping) and "id" in item]
