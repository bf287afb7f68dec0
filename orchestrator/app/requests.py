"""Validated job rows for each public request, shared by :class:`~orchestrator.api.Orchestrator`,
the async and bulk entry points and the HTTP API: the same input gives the same row (and the
same fingerprint) whichever entry point accepted it."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
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
    return {
        "kind": JobKind.REFUND.value,
        "provider": charge.provider,
        "idempotency_key": key,
        "fingerprint": v.fingerprint(request),
        "amount": amount,
        "currency": charge.currency,
        "customer": charge.customer,
        "payment_method": None,
        "parent_job_id": charge.id,
        "params": {
            "payment_intent": charge.provider_ref,
            "metadata": request["metadata"],
            # A Connect charge's refund is made on the same account.
            **connect_account(charge),
        },
    }


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
    total = charge.amount or 0
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


def connect_account(charge: Job) -> dict[str, Any]:
    account = charge.params.get("stripe_account")
    return {"stripe_account": account} if account else {}


def job_id(value: object) -> str:
    """``value`` as a canonical UUID string, or ValidationError."""
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise ValidationError("job id must be a UUID") from None
