"""Validated job rows for each public request, shared by :class:`~orchestrator.api.Orchestrator`,
the async and bulk entry points and the HTTP API: the same input gives the same row (and the
same fingerprint) whichever entry point accepted it."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from orchestrator import validation as v
from orchestrator.config import Settings
from orchestrator.errors import ConfigError, InvalidOperation, ValidationError
from orchestrator.models import Job, JobKind, JobState
from orchestrator.providers.registry import ProviderSpec, provider_for

MAX_DESCRIPTION_CHARS = 1000
# A charge's provider when neither the call nor ORCHESTRATOR_ROUTES names one; a charge to it
# keeps the fingerprint charges always had.
DEFAULT_CHARGE_PROVIDER = "stripe"

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
    provider: str | None = None,
    failover: Mapping[str, Any] | None = None,
    provider_options: Mapping[str, Any] | None = None,
    route: Callable[[str], str] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """The job row of a charge (see ``Orchestrator.charge`` for the arguments); ``options`` are
    the provider's pass-through fields, ``None`` meaning not given. Without ``provider``,
    ``route`` (``Settings.charge_provider``: ORCHESTRATOR_ROUTES) picks it by currency."""
    name = _charge_provider(provider, currency, route)
    spec = provider_for(name, JobKind.CHARGE)
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
    checked = _provider_options(spec, amount, _merged(options, provider_options))
    if spec.needs_customer and request["customer"] is None:
        raise ValidationError(f"a {name} charge needs a customer")
    request.update(checked)  # only the options given: old requests keep their fingerprint
    if name != DEFAULT_CHARGE_PROVIDER:
        request["provider"] = name
    if failover is not None:
        request["failover"] = _failover(name, failover)
    key = v.idempotency_key(idempotency_key)
    params: dict[str, Any] = {"metadata": request["metadata"], **checked}
    if request["description"]:
        params["description"] = request["description"]
    if failover is not None:
        params["failover"] = request["failover"]
    return {
        "kind": JobKind.CHARGE.value,
        "provider": name,
        "idempotency_key": key,
        "fingerprint": v.fingerprint(request),
        "amount": request["amount"],
        "currency": request["currency"],
        "customer": request["customer"],
        "payment_method": request["payment_method"],
        "parent_job_id": None,
        "params": params,
    }


def _charge_provider(
    provider: str | None, currency: object, route: Callable[[str], str] | None
) -> str:
    if provider is not None:
        if not isinstance(provider, str):
            raise ValidationError("provider must be a provider name")
        return provider
    if route is None:
        return DEFAULT_CHARGE_PROVIDER
    return route(v.currency(currency))


def _merged(options: Mapping[str, Any], extra: Mapping[str, Any] | None) -> dict[str, Any]:
    """The named pass-through options plus ``provider_options`` (fields a provider takes that
    ``charge()`` does not name); one given both ways is refused."""
    if extra is None:
        return dict(options)
    if not isinstance(extra, Mapping) or not all(isinstance(k, str) for k in extra):
        raise ValidationError("provider_options must be a mapping of option names to values")
    both = sorted(k for k in extra if options.get(k) is not None)
    if both:
        raise ValidationError(f"{both[0]} is given both as an argument and in provider_options")
    return {**options, **extra}


def _provider_options(
    spec: ProviderSpec, amount: int, options: Mapping[str, Any]
) -> dict[str, Any]:
    """The pass-through options the provider takes, checked by it; any other is refused."""
    given = {k: val for k, val in options.items() if val is not None}
    if spec.charge_options is None:
        if given:
            raise ValidationError(f"provider {spec.name!r} does not take {sorted(given)[0]}")
        return {}
    return spec.charge_options(v.amount(amount), options)


def _failover(provider: str, failover: Mapping[str, Any]) -> dict[str, str]:
    """Where a charge may go when ``provider`` provably never executed it: another charge
    provider, with that provider's own customer and payment method tokens."""
    if not isinstance(failover, Mapping):
        raise ValidationError("failover must be a mapping of provider, customer, payment_method")
    unknown = sorted(set(failover) - {"provider", "customer", "payment_method"})
    if unknown:
        raise ValidationError(f"failover takes no {unknown[0]}")
    name = failover.get("provider")
    if not isinstance(name, str):
        raise ValidationError("failover needs a provider")
    target = provider_for(name, JobKind.CHARGE)
    if name == provider:
        raise ValidationError("failover must name another provider than the charge's")
    method = v.token("failover payment_method", failover.get("payment_method"), required=True)
    assert method is not None  # required
    out = {"provider": name, "payment_method": method}
    customer = v.token("failover customer", failover.get("customer"), required=False)
    if target.needs_customer and customer is None:
        raise ValidationError(f"failover to {name} needs a customer")
    if customer is not None:
        out["customer"] = customer
    return out


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
    provider: str | None = None,
) -> dict[str, Any]:
    """The job row of an email (see ``Orchestrator.send_email``); ``provider`` defaults to
    ORCHESTRATOR_EMAIL_PROVIDER."""
    name = settings.email_provider if provider is None else provider
    if not isinstance(name, str):
        raise ValidationError("provider must be a provider name")
    spec = provider_for(name, JobKind.EMAIL)
    key = v.idempotency_key(idempotency_key)
    request = _email_request(to, subject, body, template, template_data, at_least_once)
    if spec.email_checks is not None:
        spec.email_checks(request)
    request["from_email"] = None if from_email is None else v.email("from_email", from_email)
    sender = request["from_email"] or settings.email_from
    if sender is None:
        raise ConfigError("ORCHESTRATOR_EMAIL_FROM is not set and no from_email was given")
    params = {k: val for k, val in request.items() if k != "from_email" and val is not None}
    return {
        **_NO_MONEY,
        "kind": JobKind.EMAIL.value,
        "provider": name,
        "idempotency_key": key,
        "fingerprint": v.fingerprint(
            {"kind": "email", **request, **({} if name == "sendgrid" else {"provider": name})}
        ),
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
    try:
        provider_for(charge.provider, kind)
    except ValidationError as exc:
        raise InvalidOperation(str(exc)) from None
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
