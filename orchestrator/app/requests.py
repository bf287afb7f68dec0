"""Validated job rows for each public request, shared by :class:`~orchestrator.api.Orchestrator`,
the async and bulk entry points and the HTTP API: the same input gives the same row (and the
same fingerprint) whichever entry point accepted it."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from orchestrator import validation as v
from orchestrator.config import Settings
from orchestrator.errors import ConfigError, InvalidOperation, ValidationError
from orchestrator.models import Job, JobKind, JobState

MAX_DESCRIPTION_CHARS = 1000

# Email jobs carry no money fields.
_NO_MONEY: dict[str, Any] = {
    "amount": None,
    "currency": None,
    "customer": None,
    "payment_method": None,
    "parent_job_id": None,
}


def charge_row(
    amount: int,
    currency: str,
    customer: str | None,
    payment_method: str,
    idempotency_key: str,
    metadata: Mapping[str, str] | None = None,
    *,
    description: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """The job row of a charge (see ``Orchestrator.charge`` for the arguments); ``options`` are
    the Stripe pass-through fields, ``None`` meaning not given."""
    request = {
        "kind": "charge",
        "amount": v.amount(amount),
        "currency": v.currency(currency),
        "customer": v.token("customer", customer, required=False),
        "payment_method": v.token("payment_method", payment_method, required=True),
        "metadata": v.metadata(metadata),
        "description": v.text(
            "description", description, max_length=MAX_DESCRIPTION_CHARS, required=False
        ),
    }
    checked = v.charge_options(amount, options)
    request.update(checked)  # only the options given: old requests keep their fingerprint
    key = v.idempotency_key(idempotency_key)
    params: dict[str, Any] = {"metadata": request["metadata"], **checked}
    if request["description"]:
        params["description"] = request["description"]
    return {
        "kind": JobKind.CHARGE.value,
        "provider": "stripe",
        "idempotency_key": key,
        "fingerprint": v.fingerprint(request),
        "amount": request["amount"],
        "currency": request["currency"],
        "customer": request["customer"],
        "payment_method": request["payment_method"],
        "parent_job_id": None,
        "params": params,
    }


def email_row(
    settings: Settings,
    to: str | Sequence[str],
    subject: str | None,
    body: str | None = None,
    template: str | None = None,
    *,
    idempotency_key: str,
    from_email: str | None = None,
    template_data: Mapping[str, Any] | None = None,
    at_least_once: bool = False,
) -> dict[str, Any]:
    """The job row of an email (see ``Orchestrator.send_email``)."""
    key = v.idempotency_key(idempotency_key)
    request = _email_request(to, subject, body, template, template_data, at_least_once)
    request["from_email"] = None if from_email is None else v.email("from_email", from_email)
    sender = request["from_email"] or settings.email_from
    if sender is None:
        raise ConfigError("ORCHESTRATOR_EMAIL_FROM is not set and no from_email was given")
    params = {k: val for k, val in request.items() if k != "from_email" and val is not None}
    return {
        **_NO_MONEY,
        "kind": JobKind.EMAIL.value,
        "provider": "sendgrid",
        "idempotency_key": key,
        "fingerprint": v.fingerprint({"kind": "email", **request}),
        "params": {**params, "from": sender},
    }


def refund_request(
    charge_job_id: str, amount: int | None, metadata: Mapping[str, str] | None
) -> dict[str, Any]:
    """The validated refund request (its fingerprint source); the row needs the locked charge
    (:func:`refund_row`)."""
    return {
        "kind": "refund",
        "charge_job_id": job_id(charge_job_id),
        "amount": None if amount is None else v.amount(amount),
        "metadata": v.metadata(metadata),
    }


def refund_row(charge: Job, key: str, request: dict[str, Any]) -> dict[str, Any]:
    """The job row of a refund of ``charge`` (locked by the caller), or InvalidOperation."""
    amount = refundable(charge, request["amount"])
    params = {"metadata": request["metadata"]}
    return _on_charge(JobKind.REFUND, charge, key, request, amount, params)


def with_defaults(settings: Settings, row: dict[str, Any], actor: str = "api") -> dict[str, Any]:
    """``row`` with what every insert needs: attempt budget, retry horizon, who made it."""
    return {
        **row,
        "max_attempts": settings.max_attempts,
        "horizon_s": settings.retry_horizon_s,
        "changed_by": actor,
    }


def _email_request(
    to: object,
    subject: object,
    body: object,
    template: object,
    template_data: object,
    at_least_once: object,
) -> dict[str, Any]:
    """The validated email request: exactly one of body and template; subject required with a
    body (a template may define its own)."""
    if (body is None) == (template is None):
        raise ValidationError("give exactly one of body and template")
    if template is None and template_data is not None:
        raise ValidationError("template_data needs a template")
    if not isinstance(at_least_once, bool):
        raise ValidationError("at_least_once must be True or False")
    clean_subject = v.text(
        "subject", subject, max_length=v.MAX_SUBJECT_CHARS, required=template is None
    )
    if clean_subject is not None and ("\r" in clean_subject or "\n" in clean_subject):
        raise ValidationError("subject must be one line")
    return {
        "to": v.recipients(to),
        "subject": clean_subject,
        "body": v.text("body", body, max_length=v.MAX_BODY_CHARS, required=False),
        "template": None if template is None else v.template_id(template),
        "template_data": v.template_data(template_data),
        "at_least_once": at_least_once,
    }


def refundable(charge: Job, requested: int | None) -> int:
    """The amount to reserve for a refund of ``charge``, or InvalidOperation saying why not."""
    if charge.kind is not JobKind.CHARGE:
        raise InvalidOperation(f"job {charge.id} is a {charge.kind}, not a charge")
    if charge.state is not JobState.SUCCEEDED:
        raise InvalidOperation(
            f"charge {charge.id} is {charge.state}: only a succeeded charge can be refunded"
        )
    if charge.captured_amount == 0:
        raise InvalidOperation(
            f"charge {charge.id} is authorized but not captured: capture it first, or cancel it "
            "to release the hold"
        )
    # An authorization captured in part can be refunded up to what was captured.
    total = charge.captured_amount if charge.captured_amount is not None else charge.amount or 0
    remaining = total - charge.refunded_amount
    if remaining <= 0:
        raise InvalidOperation(
            f"charge {charge.id} is already fully refunded "
            f"({charge.refunded_amount} of {total} refunded or in flight)"
        )
    if requested is not None and requested > remaining:
        raise InvalidOperation(
            f"refund of {requested} exceeds what remains refundable on charge {charge.id} "
            f"({remaining} of {total})"
        )
    return remaining if requested is None else requested


# Why a job was cancelled (the reason_text domain).
MAX_REASON_CHARS = 500
# Why cancel() refuses a job in each state it cannot cancel.
_NOT_CANCELLABLE = {
    JobState.RUNNING: "a worker holds it and its provider call may be in flight; it is not "
    "cancelled under a running call (cancel again once it settles)",
    JobState.UNKNOWN: "its last attempt may have executed; it is resolved by a lookup first",
    JobState.PROCESSING: "the provider accepted it and reports a pending state",
    JobState.DEAD: "an operator replays or discards it (orchestrator dlq discard)",
    JobState.PENDING: "the provider may already hold the result of its last attempt (an "
    "ambiguous outcome, or a success event not processed yet); it is settled first",
    JobState.RETRYING: "the provider may already hold the result of its last attempt (an "
    "ambiguous outcome, or a success event not processed yet); it is settled first",
}


def not_cancellable(job: Job, settler: Job | None = None) -> str:
    """Why ``cancel()`` refuses ``job`` (``settler``: its charge's live capture)."""
    if settler is not None:
        return (
            f"charge {job.id} has a capture ({settler.id}, {settler.state}): an authorization "
            "being captured cannot be voided"
        )
    why = _NOT_CANCELLABLE.get(job.state)
    if why is None:
        if job.kind is JobKind.CHARGE and job.state is JobState.SUCCEEDED:
            why = "a final state: its money is captured, refund it instead"
        else:
            why = "a final state"
    return f"job {job.id} is {job.state}: {why}"


# Stripe's own cancellation reasons: a cancel() reason that is one of them is sent along.
STRIPE_CANCELLATION_REASONS = ("abandoned", "duplicate", "fraudulent", "requested_by_customer")


def capture_request(charge_job_id: str, amount: int | None) -> dict[str, Any]:
    """The validated capture request (its fingerprint source); the row needs the locked charge
    (:func:`capture_row`)."""
    return {
        "kind": "capture",
        "charge_job_id": job_id(charge_job_id),
        "amount": None if amount is None else v.amount(amount),
    }


def capture_row(charge: Job, key: str, request: dict[str, Any], now: datetime) -> dict[str, Any]:
    """The job row of a capture of ``charge`` (locked by the caller), or InvalidOperation."""
    amount = capturable(charge, request["amount"], now)
    params = {"amount_to_capture": amount}
    return _on_charge(JobKind.CAPTURE, charge, key, request, amount, params)


def capturable(charge: Job, requested: int | None, now: datetime) -> int:
    """The amount a capture of ``charge`` takes (all that was authorized by default), or
    InvalidOperation saying why it cannot be captured."""
    if charge.kind is not JobKind.CHARGE:
        raise InvalidOperation(f"job {charge.id} is a {charge.kind}, not a charge")
    if charge.state is not JobState.SUCCEEDED:
        raise InvalidOperation(
            f"charge {charge.id} is {charge.state}: only a succeeded authorization "
            "(charge(..., capture=False)) can be captured"
        )
    if charge.captured_amount is None:
        raise InvalidOperation(
            f"charge {charge.id} was captured when it succeeded: there is nothing to capture"
        )
    if charge.captured_amount > 0 or charge.capture_reserved > 0:
        raise InvalidOperation(
            f"charge {charge.id} already has a capture ({charge.capture_reserved} of "
            f"{charge.amount} captured or in flight): a charge is captured once"
        )
    if charge.capture_before is not None and now >= charge.capture_before:
        raise InvalidOperation(
            f"charge {charge.id}'s authorization expired at {charge.capture_before.isoformat()} "
            "(the provider voids an uncaptured payment after its capture window)"
        )
    total = charge.amount or 0
    if requested is not None and requested > total:
        raise InvalidOperation(
            f"capture of {requested} exceeds the authorized amount of charge {charge.id} ({total})"
        )
    return total if requested is None else requested


def void_row(charge: Job, reason: str, number: int) -> dict[str, Any]:
    """The job row of the void (provider-side cancel) of ``charge``, an uncaptured authorization
    locked by the caller; ``number`` counts its earlier voids (each ended failed), so the key of
    each void is its own."""
    request = {"kind": "void", "charge_job_id": charge.id, "number": number}
    params: dict[str, Any] = {"reason": reason}
    if reason in STRIPE_CANCELLATION_REASONS:
        params["cancellation_reason"] = reason
    key = f"orchestrator-void-{charge.id}-{number}"
    return _on_charge(JobKind.VOID, charge, key, request, charge.amount, params)


def _on_charge(
    kind: JobKind,
    charge: Job,
    key: str,
    request: dict[str, Any],
    amount: int | None,
    params: dict[str, Any],
) -> dict[str, Any]:
    """The row of a job acting on ``charge``'s PaymentIntent (refund, capture, void): on the
    charge's provider and, for a Connect charge, on the same account."""
    return {
        "kind": kind.value,
        "provider": charge.provider,
        "idempotency_key": key,
        "fingerprint": v.fingerprint(request),
        "amount": amount,
        "currency": charge.currency,
        "customer": charge.customer,
        "payment_method": None,
        "parent_job_id": charge.id,
        "params": {"payment_intent": charge.provider_ref, **params, **connect_account(charge)},
    }


def connect_account(charge: Job) -> dict[str, Any]:
    account = charge.params.get("stripe_account")
    return {"stripe_account": account} if account else {}


def job_id(value: object) -> str:
    """``value`` as a canonical UUID string, or ValidationError."""
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise ValidationError("job id must be a UUID") from None
