"""The Stripe endpoints: routing, PaymentIntents (see :mod:`.intents`) and Refunds.

Objects live in the Connect account of the request that created them (the
``Stripe-Account`` header; none is the platform) and are invisible from any other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from orchestrator.dev.simulator.common import (
    Response,
    StripeError,
    json_response,
    refused,
    stripe_error,
)
from orchestrator.dev.simulator.events import charge_of, emit
from orchestrator.dev.simulator.intents import (
    cancel_intent,
    capture_intent,
    create_intent,
    find_intent,
    list_intents,
    retrieve_intent,
    search_intents,
)
from orchestrator.dev.simulator.params import (
    Call,
    filtered_page,
    one_of,
    param_str,
    parse_amount,
    parse_metadata,
    require,
)
from orchestrator.dev.simulator.state import State

REFUND_REASONS = ("duplicate", "fraudulent", "requested_by_customer")

Handler = Callable[[State, Call], Response]


class StripeAPI:
    """Stripe endpoint dispatch; every handler runs with the state lock held."""

    def __init__(self, state: State) -> None:
        self.state = state

    def route(
        self,
        method: str,
        path: str,
        params: dict[str, Any],
        account: str | None = None,
        api_version: str | None = None,
    ) -> Response:
        parts = path.strip("/").split("/")
        handler = _resolve(method, parts)
        if handler is None:
            return stripe_error(
                404,
                "invalid_request_error",
                f"Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs "
                "or we can help at https://support.stripe.com/.",
            )
        call = Call(parts, params, account, api_version)
        try:
            with self.state.lock:
                return handler(self.state, call)
        except StripeError as exc:
            return exc.response()


# -- refunds ---------------------------------------------------------------------


def create_refund(state: State, call: Call) -> Response:
    params = call.params
    pi_id = param_str(params, "payment_intent")
    require(pi_id, "payment_intent")
    amount = parse_amount(param_str(params, "amount"))
    reason = one_of(param_str(params, "reason"), "reason", REFUND_REASONS)
    metadata = parse_metadata(params)
    record = find_intent(state, pi_id or "", call.account, param="payment_intent", status=400)
    pi = record.obj
    refund_amount = _refundable_amount(pi, amount)
    refund = _new_refund(state, call.account, pi, refund_amount, reason, metadata)
    return json_response(200, refund, saveable=True)


def _new_refund(
    state: State,
    account: str | None,
    pi: dict[str, Any],
    amount: int,
    reason: str | None,
    metadata: dict[str, str],
) -> dict[str, Any]:
    refund: dict[str, Any] = {
        "id": state.new_id("re_"),
        "object": "refund",
        "amount": amount,
        "charge": pi["latest_charge"],
        "created": int(state.now()),
        "currency": pi["currency"],
        "metadata": metadata,
        "payment_intent": pi["id"],
        "reason": reason,
        "status": "succeeded",
    }
    pi["amount_refunded"] += amount
    state.refunds[refund["id"]] = refund
    state.refund_accounts[refund["id"]] = account
    state.refunds_by_pi.setdefault(pi["id"], []).append(refund["id"])
    emit(state, "charge.refunded", charge_of(pi))
    return refund


def get_refund(state: State, call: Call) -> Response:
    refund_id = call.parts[2]
    refund = state.refunds.get(refund_id)
    if refund is None or state.refund_accounts.get(refund_id) != call.account:
        raise StripeError(
            404, f"No such refund: '{refund_id}'", code="resource_missing", param="id"
        )
    return json_response(200, refund)


def list_refunds(state: State, call: Call) -> Response:
    """Newest first; ``payment_intent`` and ``created[...]`` filters; the caller's account."""
    newest_first = [
        state.refunds[refund_id]
        for refund_id in reversed(state.refunds)
        if state.refund_accounts.get(refund_id) == call.account
    ]
    return filtered_page(newest_first, call.params, "/v1/refunds", "payment_intent")


def _refundable_amount(pi: Mapping[str, Any], requested: int | None) -> int:
    """Validate a refund against what remains on a succeeded intent."""
    if pi["status"] != "succeeded":
        raise refused(
            f"This PaymentIntent ({pi['id']}) does not have a successful charge to refund.",
            "charge_not_refundable",
            "payment_intent",
        )
    remaining = int(pi["amount_received"]) - int(pi["amount_refunded"])
    if remaining <= 0:
        raise refused(
            f"Charge {pi['latest_charge']} has already been refunded.", "charge_already_refunded"
        )
    if requested is not None and requested > remaining:
        raise refused(
            f"Refund amount ({requested}) is greater than unrefunded amount on charge "
            f"({remaining})",
            "amount_too_large",
            "amount",
        )
    return remaining if requested is None else requested


# -- routing ---------------------------------------------------------------------

_ROUTES: dict[tuple[str, str, int], Handler] = {
    ("POST", "payment_intents", 2): create_intent,
    ("GET", "payment_intents", 2): list_intents,
    ("GET", "payment_intents", 3): retrieve_intent,
    ("POST", "refunds", 2): create_refund,
    ("GET", "refunds", 2): list_refunds,
    ("GET", "refunds", 3): get_refund,
}
_INTENT_ACTIONS: dict[str, Handler] = {"capture": capture_intent, "cancel": cancel_intent}


def _resolve(method: str, parts: list[str]) -> Handler | None:
    if len(parts) < 2 or parts[0] != "v1":
        return None
    if method == "GET" and parts[1:] == ["payment_intents", "search"]:
        return search_intents
    if method == "POST" and len(parts) == 4 and parts[1] == "payment_intents":
        return _INTENT_ACTIONS.get(parts[3])
    return _ROUTES.get((method, parts[1], len(parts)))
