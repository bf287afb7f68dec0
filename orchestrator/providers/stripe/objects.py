"""Stripe's objects in and out: the parameters a job sends, and what a PaymentIntent or
Refund that comes back means for the job."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import stripe

from orchestrator.models import AttemptOutcome, Job
from orchestrator.providers.base import Outcome
from orchestrator.validation import JOB_ID_METADATA_KEY, KEY_GENERATION_METADATA_KEY

# PaymentIntent statuses, by what they mean for the job.
PI_SUCCEEDED = {"succeeded", "requires_capture"}


# requires_action: an on-session charge (return_url) waits for the customer to authenticate;
# off-session charges never get there (Stripe declines them with authentication_required).
_PI_PENDING = {"processing", "requires_action"}


# Refund statuses, by what they mean for the job (failed and canceled refunds moved no money).
_REFUND_SUCCEEDED = {"succeeded"}


_REFUND_PENDING = {"pending", "requires_action"}


REFUND_RANK = {"succeeded": 0, "pending": 1, "requires_action": 1}


# PaymentIntent fields a charge may carry as given (validated at enqueue, validation.py).
PASS_THROUGH_FIELDS = (
    "capture_method",
    "description",
    "statement_descriptor_suffix",
    "receipt_email",
    "on_behalf_of",
    "application_fee_amount",
    "transfer_data",
)


def charge_params(job: Job) -> dict[str, Any]:
    """The PaymentIntent parameters for a charge job: identical on every attempt of a key
    generation.

    A job runs with no customer present, so by default the charge is merchant-initiated:
    ``off_session=true`` with automatic payment methods that never redirect. A card that
    needs authentication then declines with ``authentication_required`` instead of waiting
    for a customer who is not there. With a ``return_url`` the caller confirms on-session:
    redirect-based methods are allowed and ``requires_action`` means the customer must act.
    Stripe refuses ``automatic_payment_methods`` together with ``payment_method_types``.
    """
    params: dict[str, Any] = {
        "amount": job.amount,
        "currency": job.currency,
        "payment_method": job.payment_method,
        "confirm": True,
        "metadata": {
            **job.metadata,
            JOB_ID_METADATA_KEY: job.id,
            KEY_GENERATION_METADATA_KEY: str(job.key_generation),
        },
    }
    if job.customer:
        params["customer"] = job.customer
    return_url = job.params.get("return_url")
    types = job.params.get("payment_method_types")
    if return_url:
        params["return_url"] = return_url
    else:
        params["off_session"] = True
    if types:
        params["payment_method_types"] = list(types)
    else:
        params["automatic_payment_methods"] = (
            {"enabled": True} if return_url else {"enabled": True, "allow_redirects": "never"}
        )
    for name in PASS_THROUGH_FIELDS:
        value = job.params.get(name)
        if value is not None and value != "":
            params[name] = value
    return params


def refund_params(job: Job) -> dict[str, Any]:
    """The Refund parameters for a refund job: identical on every attempt."""
    return {
        "payment_intent": job.params["payment_intent"],
        "amount": job.amount,
        "metadata": {**job.metadata, JOB_ID_METADATA_KEY: job.id},
    }


def _kind_of(status: str, succeeded: set[str], pending: set[str]) -> AttemptOutcome:
    """A provider object's status word, as what it means for the job."""
    if status in succeeded:
        return AttemptOutcome.SUCCEEDED
    if status in pending:
        return AttemptOutcome.PENDING
    return AttemptOutcome.PERMANENT


def outcome_of_refund(refund: Mapping[str, Any], request_id: str | None) -> Outcome:
    """What a Refund (its JSON fields) means for the job."""
    status = str(refund["status"])
    kind = _kind_of(status, _REFUND_SUCCEEDED, _REFUND_PENDING)
    failed = kind is AttemptOutcome.PERMANENT
    reason = refund.get("failure_reason") if failed else None
    return Outcome(
        kind,
        provider_ref=str(refund["id"]),
        provider_status=status,
        error_class="RefundStatus" if failed else None,
        error_code=(reason or f"refund_{status}") if failed else None,
        request_id=request_id,
    )


def outcome_of_intent(intent: Mapping[str, Any], request_id: str | None) -> Outcome:
    """What a PaymentIntent (its JSON fields) means for the job."""
    status = str(intent["status"])
    kind = _kind_of(status, PI_SUCCEEDED, _PI_PENDING)
    error_code = None if kind is not AttemptOutcome.PERMANENT else f"payment_intent_{status}"
    last_error = intent.get("last_payment_error")
    if kind is AttemptOutcome.PERMANENT and isinstance(last_error, Mapping):
        error_code = last_error.get("decline_code") or last_error.get("code") or error_code
    return Outcome(
        kind,
        provider_ref=str(intent["id"]),
        provider_status=status,
        error_class="PaymentIntentStatus" if kind is AttemptOutcome.PERMANENT else None,
        error_code=error_code,
        request_id=request_id,
        details=_customer_action(intent),
    )


def job_id_of(obj: Any) -> str | None:
    metadata: Any = getattr(obj, "metadata", None)  # a StripeObject: no .get()
    if metadata is None or JOB_ID_METADATA_KEY not in metadata:
        return None
    return str(metadata[JOB_ID_METADATA_KEY])


def json_object(response: stripe.StripeResponse) -> Mapping[str, Any]:
    data = response.data
    if not isinstance(data, Mapping) or "id" not in data or "status" not in data:
        raise stripe.APIError("unexpected response body", http_status=response.code)
    return data


def request_id(obj: Any) -> str | None:
    response = getattr(obj, "last_response", None)
    return getattr(response, "request_id", None) if response is not None else None


# How a job's PaymentIntents rank when several exist (key generations): money taken first,
# then money held or on its way, then the rest.
_INTENT_RANK = {"succeeded": 0, "requires_capture": 1, "processing": 2}


def best_intent(job: Job, intents: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The job's most telling PaymentIntent among ``intents`` (any listed or searched).

    Only intents carrying this job's id count. A success or a pending intent of any key
    generation speaks for the job (one job makes at most one successful intent). A failed
    intent of an older generation says nothing about the current one, which may still
    succeed: it is ignored, so a lookup never fails a job on a superseded attempt.
    """
    mine = [pi for pi in intents if (pi.get("metadata") or {}).get(JOB_ID_METADATA_KEY) == job.id]
    live = [
        pi
        for pi in mine
        if pi.get("status") in _INTENT_RANK or generation_of(pi) >= job.key_generation
    ]
    if not live:
        return None
    return min(live, key=lambda pi: (_INTENT_RANK.get(str(pi.get("status")), 3), pi["created"]))


def generation_of(obj: Mapping[str, Any]) -> int:
    """The key generation recorded in an object's metadata (objects made before it was
    recorded count as generation 0)."""
    value = (obj.get("metadata") or {}).get(KEY_GENERATION_METADATA_KEY)
    try:
        return int(value) if value is not None else 0
    except (TypeError, ValueError):
        return 0


def _customer_action(intent: Mapping[str, Any]) -> dict[str, Any] | None:
    """What the app needs to bring the customer back to a PaymentIntent that requires_action,
    or to capture one that requires_capture before its authorization expires."""
    if intent.get("status") == "requires_capture":
        return {
            "capture_before": capture_before(intent),
            "amount_capturable": intent.get("amount_capturable"),
        }
    if intent.get("status") != "requires_action":
        return None
    return {"next_action": intent.get("next_action"), "client_secret": intent.get("client_secret")}


# Stripe voids an uncaptured card payment when its authorization expires: 7 days for online
# card payments (Stripe, "Place a hold on a payment method"), Visa merchant-initiated ones
# 4 days 18 hours. The charge's payment_method_details.card.capture_before says exactly.
AUTHORIZATION_WINDOW_S = 7 * 24 * 3600


def capture_before(intent: Mapping[str, Any]) -> int:
    """When an uncaptured PaymentIntent's authorization expires (unix seconds): the charge's
    ``capture_before`` when the response carries the charge (``expand[]=latest_charge``), else
    the standard window from the intent's creation."""
    charge = intent.get("latest_charge")
    if isinstance(charge, Mapping):
        card = (charge.get("payment_method_details") or {}).get("card") or {}
        if isinstance(card.get("capture_before"), int):
            return int(card["capture_before"])
    return int(intent.get("created") or 0) + AUTHORIZATION_WINDOW_S


def capture_params(job: Job) -> dict[str, Any]:
    """The capture parameters of a capture job: identical on every attempt. No metadata: on a
    capture Stripe would merge it into the PaymentIntent's."""
    return {"amount_to_capture": job.params["amount_to_capture"]}


def void_params(job: Job) -> dict[str, Any]:
    """The cancel parameters of a void job (Stripe's cancellation_reason, when given)."""
    reason = job.params.get("cancellation_reason")
    return {"cancellation_reason": reason} if reason else {}


def outcome_of_capture(
    intent: Mapping[str, Any], job: Job, request_id: str | None, *, lookup: bool = False
) -> Outcome | None:
    """What a PaymentIntent (answered by the capture, or retrieved) means for a capture job:
    ``succeeded`` with our amount received is the capture done; still ``requires_capture`` on a
    lookup is no capture made (None); anything else (canceled: the authorization was voided or
    expired; captured with another amount) is a failure."""
    status = str(intent["status"])
    ref = str(intent["id"])
    if status == "succeeded" and intent.get("amount_received") == job.amount:
        return Outcome(
            AttemptOutcome.SUCCEEDED,
            provider_ref=ref,
            provider_status=status,
            request_id=request_id,
        )
    if status == "processing":
        return Outcome(
            AttemptOutcome.PENDING, provider_ref=ref, provider_status=status, request_id=request_id
        )
    if status == "requires_capture" and lookup:
        return None
    code = "captured_elsewhere" if status == "succeeded" else f"payment_intent_{status}"
    return Outcome(
        AttemptOutcome.PERMANENT,
        provider_ref=ref,
        provider_status=status,
        error_class="PaymentIntentStatus",
        error_code=code,
        message=f"the PaymentIntent is {status} (amount_received {intent.get('amount_received')})",
        request_id=request_id,
    )


def outcome_of_void(
    intent: Mapping[str, Any], request_id: str | None, *, lookup: bool = False
) -> Outcome | None:
    """What a PaymentIntent means for a void job: ``canceled`` is the hold released (by us, or
    by Stripe when the authorization expired); still ``requires_capture`` on a lookup is no
    cancel made (None); captured (``succeeded``) or anything else cannot be voided: a failure."""
    status = str(intent["status"])
    ref = str(intent["id"])
    if status == "canceled":
        return Outcome(
            AttemptOutcome.SUCCEEDED,
            provider_ref=ref,
            provider_status=status,
            request_id=request_id,
        )
    if status == "requires_capture" and lookup:
        return None
    return Outcome(
        AttemptOutcome.PERMANENT,
        provider_ref=ref,
        provider_status=status,
        error_class="PaymentIntentStatus",
        error_code=f"payment_intent_{status}",
        message=f"the PaymentIntent is {status}: only an uncaptured one can be voided",
        request_id=request_id,
    )
