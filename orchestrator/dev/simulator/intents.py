"""PaymentIntent endpoints: create (and confirm), retrieve, list, search, capture, cancel.

Every function runs with the state lock held and sees only the objects of the caller's
Connect account (``Call.account``; None is the platform).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any, NoReturn

from orchestrator.dev.simulator.common import Response, StripeError, json_response, refused
from orchestrator.dev.simulator.events import emit
from orchestrator.dev.simulator.intent_params import ConfirmOptions, parse_intent_params
from orchestrator.dev.simulator.params import (
    Call,
    filtered_page,
    one_of,
    param_str,
    parse_amount,
    parse_currency,
    parse_limit,
    parse_metadata,
    parse_page,
    require,
)
from orchestrator.dev.simulator.payments import (
    OFF_SESSION_AUTHENTICATION_REQUIRED,
    TEST_PAYMENT_METHODS,
    CardOutcome,
    card_error_dict,
    mark_succeeded,
    settle,
)
from orchestrator.dev.simulator.state import PaymentIntentRecord, State

CANCELABLE_STATUSES = (
    "requires_payment_method",
    "requires_capture",
    "requires_confirmation",
    "requires_action",
)
CANCELLATION_REASONS = ("abandoned", "duplicate", "fraudulent", "requested_by_customer")
AUTHENTICATION_URL = "https://hooks.stripe.com/3d_secure_2/hosted"
_SEARCH_CLAUSE_RE = re.compile(
    r"""^\s*(?:metadata\[(?P<mq>['"])(?P<mkey>.+?)(?P=mq)\]|(?P<field>status|currency|customer))"""
    r"""\s*:\s*(?P<vq>['"])(?P<value>.*?)(?P=vq)\s*$"""
)


def create_intent(state: State, call: Call) -> Response:
    params = call.params
    amount = parse_amount(param_str(params, "amount"))
    require(amount, "amount")
    currency = parse_currency(param_str(params, "currency"))
    metadata = parse_metadata(params)
    payment_method = param_str(params, "payment_method")
    outcome = _lookup_payment_method(payment_method)
    parsed = parse_intent_params(call, amount or 0)
    if parsed.options.confirm and outcome is None:
        raise StripeError(
            400,
            "You cannot confirm this PaymentIntent because it's missing a payment "
            "method. You can either update the PaymentIntent with a payment method "
            "and then confirm it again, or confirm it again directly with a payment "
            "method.",
            code="payment_intent_unexpected_state",
            param="payment_method",
        )
    obj: dict[str, Any] = {
        "amount": amount,
        "currency": currency,
        "metadata": metadata,
        "payment_method": payment_method,
        **parsed.fields,
    }
    record = _new_payment_intent(state, call.account, obj)
    if parsed.options.confirm and outcome is not None:
        _confirm(state, record, outcome, parsed.options)
    return json_response(200, record.obj, saveable=True)


def _lookup_payment_method(payment_method: str | None) -> CardOutcome | None:
    if payment_method is None:
        return None
    outcome = TEST_PAYMENT_METHODS.get(payment_method)
    if outcome is None:
        raise StripeError(
            400,
            f"No such PaymentMethod: '{payment_method}'",
            code="resource_missing",
            param="payment_method",
        )
    return outcome


def _new_payment_intent(
    state: State, account: str | None, given: Mapping[str, Any]
) -> PaymentIntentRecord:
    pi_id = state.new_id("pi_")
    obj: dict[str, Any] = {
        "id": pi_id,
        "object": "payment_intent",
        "amount_capturable": 0,
        "amount_received": 0,
        "amount_refunded": 0,
        "canceled_at": None,
        "cancellation_reason": None,
        "client_secret": f"{pi_id}_secret_{state.new_id('')}",
        "confirmation_method": "automatic",
        "created": int(state.now()),
        "last_payment_error": None,
        "latest_charge": None,
        "livemode": False,
        "next_action": None,
        "status": "requires_confirmation" if given["payment_method"] else "requires_payment_method",
        **given,
    }
    record = PaymentIntentRecord(dict(sorted(obj.items())), state.mono(), account)
    state.payment_intents[pi_id] = record
    for item in obj["metadata"].items():
        state.metadata_index.setdefault(item, []).append(pi_id)
    return record


def _confirm(
    state: State, record: PaymentIntentRecord, outcome: CardOutcome, options: ConfirmOptions
) -> None:
    obj = record.obj
    if outcome.status == "succeeded":
        emit(state, mark_succeeded(state, obj), obj)
    elif outcome.status == "requires_action":
        if options.off_session:  # nobody is there to authenticate: Stripe declines
            _decline(state, obj, OFF_SESSION_AUTHENTICATION_REQUIRED)
        obj["status"] = "requires_action"
        obj["next_action"] = _next_action(record, options.return_url)
        emit(state, "payment_intent.requires_action", obj)
    elif outcome.status == "processing":
        obj["status"] = "processing"
        delay_s = state.faults["stripe"].processing_delay_s
        record.settle_at_mono = record.created_mono + delay_s
        record.settle_fails = outcome.settle_fails
        state.settling.add(obj["id"])
        emit(state, "payment_intent.processing", obj)
    else:
        _decline(state, obj, outcome)


def _next_action(record: PaymentIntentRecord, return_url: str | None) -> dict[str, Any]:
    """A redirect to the authentication page when there is a return_url, else Stripe.js."""
    if return_url is None:
        return {"type": "use_stripe_sdk", "use_stripe_sdk": {}}
    obj = record.obj
    url = (
        f"{AUTHENTICATION_URL}?merchant={record.account or 'acct_simulator'}"
        f"&payment_intent={obj['id']}&payment_intent_client_secret={obj['client_secret']}"
    )
    return {"type": "redirect_to_url", "redirect_to_url": {"url": url, "return_url": return_url}}


def _decline(state: State, obj: dict[str, Any], outcome: CardOutcome) -> NoReturn:
    error = card_error_dict(outcome, obj["payment_method"])
    obj["status"] = "requires_payment_method"
    obj["last_payment_error"] = error
    obj["payment_method"] = None
    emit(state, "payment_intent.payment_failed", obj)
    raise StripeError(
        402,
        outcome.message,
        type_="card_error",
        saveable=True,
        extra={**error, "payment_intent": copy.deepcopy(obj)},
    )


def find_intent(
    state: State, pi_id: str, account: str | None, *, param: str, status: int
) -> PaymentIntentRecord:
    """The intent in the caller's account (another account's answers like a missing one)."""
    record = state.payment_intents.get(pi_id)
    if record is None or record.account != account:
        raise StripeError(
            status, f"No such payment_intent: '{pi_id}'", code="resource_missing", param=param
        )
    settle(state, record, state.mono())
    return record


def retrieve_intent(state: State, call: Call) -> Response:
    return json_response(
        200, find_intent(state, call.parts[2], call.account, param="intent", status=404).obj
    )


def list_intents(state: State, call: Call) -> Response:
    """Strongly consistent (no search lag), newest first, ``customer`` / ``created`` filters."""
    now = state.mono()
    newest_first: list[dict[str, Any]] = []
    for record in reversed(state.payment_intents.values()):
        if record.account == call.account:
            settle(state, record, now)
            newest_first.append(record.obj)
    return filtered_page(newest_first, call.params, "/v1/payment_intents", "customer")


def search_intents(state: State, call: Call) -> Response:
    query = param_str(call.params, "query")
    require(query, "query")
    clauses = _parse_search_query(query or "")
    limit = parse_limit(call.params)
    offset = parse_page(param_str(call.params, "page"))
    matches = _search(state, call.account, clauses)
    page = matches[offset : offset + limit]
    has_more = len(matches) > offset + limit
    return json_response(
        200,
        {
            "object": "search_result",
            "url": "/v1/payment_intents/search",
            "has_more": has_more,
            "next_page": str(offset + limit) if has_more else None,
            "data": page,
        },
    )


def _search(
    state: State, account: str | None, clauses: list[tuple[str, str, str]]
) -> list[dict[str, Any]]:
    """Matches newest first, hiding intents younger than ``search_lag_s`` (simulated clock)."""
    lag_s = state.faults["stripe"].search_lag_s
    now = state.mono()
    metadata_clause = next((c for c in clauses if c[0] == "metadata"), None)
    if metadata_clause is not None:
        candidates = state.metadata_index.get((metadata_clause[1], metadata_clause[2]), [])
    else:
        candidates = list(state.payment_intents)
    results: list[dict[str, Any]] = []
    for pi_id in reversed(candidates):  # newest first, like Stripe
        record = state.payment_intents[pi_id]
        if record.account != account or now - record.created_mono < lag_s:
            continue
        settle(state, record, now)
        if all(_clause_matches(record.obj, clause) for clause in clauses):
            results.append(record.obj)
    return results


def _parse_search_query(query: str) -> list[tuple[str, str, str]]:
    """Parse ``metadata['k']:'v' AND status:'x'`` into (kind, key, value) clauses."""
    clauses: list[tuple[str, str, str]] = []
    for text in query.split(" AND "):
        match = _SEARCH_CLAUSE_RE.match(text)
        if match is None:
            raise StripeError(
                400, f"Unsupported or invalid search query clause: {text.strip()!r}", param="query"
            )
        if match.group("mkey") is not None:
            clauses.append(("metadata", match.group("mkey"), match.group("value")))
        else:
            clauses.append(("field", match.group("field"), match.group("value")))
    return clauses


def _clause_matches(obj: Mapping[str, Any], clause: tuple[str, str, str]) -> bool:
    kind, key, value = clause
    if kind == "metadata":
        return bool(obj["metadata"].get(key) == value)
    return bool(obj.get(key) == value)


# -- capture / cancel (state errors are business rules: saved against the key) ----------


def capture_intent(state: State, call: Call) -> Response:
    record = find_intent(state, call.parts[2], call.account, param="intent", status=404)
    obj = record.obj
    amount = parse_amount(param_str(call.params, "amount_to_capture"), "amount_to_capture")
    if obj["status"] != "requires_capture":
        reason = (
            "it has already been captured"
            if obj["status"] == "succeeded"
            else f"it has a status of {obj['status']}"
        )
        _unexpected_state(
            obj,
            f"This PaymentIntent could not be captured because {reason}. Only a PaymentIntent "
            "with one of the following statuses may be captured: requires_capture.",
        )
    capturable = int(obj["amount_capturable"])
    if amount is not None and amount > capturable:
        raise refused(
            f"The amount_to_capture ({amount}) must be less than or equal to the "
            f"PaymentIntent's amount_capturable ({capturable}).",
            "amount_too_large",
            "amount_to_capture",
        )
    obj["status"] = "succeeded"
    obj["amount_received"] = capturable if amount is None else amount
    obj["amount_capturable"] = 0
    emit(state, "payment_intent.succeeded", obj)
    return json_response(200, obj, saveable=True)


def cancel_intent(state: State, call: Call) -> Response:
    record = find_intent(state, call.parts[2], call.account, param="intent", status=404)
    obj = record.obj
    reason = one_of(
        param_str(call.params, "cancellation_reason"), "cancellation_reason", CANCELLATION_REASONS
    )
    if obj["status"] not in CANCELABLE_STATUSES:
        _unexpected_state(
            obj,
            f"You cannot cancel this PaymentIntent because it has a status of {obj['status']}. "
            "Only a PaymentIntent with one of the following statuses may be canceled: "
            f"{', '.join(CANCELABLE_STATUSES)}.",
        )
    obj["status"] = "canceled"
    obj["canceled_at"] = int(state.now())
    obj["cancellation_reason"] = reason
    obj["amount_capturable"] = 0
    obj["next_action"] = None
    emit(state, "payment_intent.canceled", obj)
    return json_response(200, obj, saveable=True)


def _unexpected_state(obj: dict[str, Any], message: str) -> NoReturn:
    raise StripeError(
        400,
        message,
        code="payment_intent_unexpected_state",
        saveable=True,
        extra={
            "doc_url": "https://stripe.com/docs/error-codes/payment-intent-unexpected-state",
            "payment_intent": copy.deepcopy(obj),
        },
    )
