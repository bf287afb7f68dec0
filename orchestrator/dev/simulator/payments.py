"""The PaymentIntent lifecycle shared by the Stripe API, the webhook thread and the control
plane: test payment methods, success, card errors and settling ``processing`` intents."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from orchestrator.dev.simulator.events import emit
from orchestrator.dev.simulator.state import PaymentIntentRecord, State


@dataclass(frozen=True)
class CardOutcome:
    """What confirming with a test payment method does."""

    status: str
    error_code: str | None = None
    decline_code: str | None = None
    message: str = ""
    settle_fails: bool = False


_SUCCEEDS = CardOutcome("succeeded")
_DECLINED_MESSAGE = "Your card was declined."
TEST_PAYMENT_METHODS: dict[str, CardOutcome] = {
    "pm_card_visa": _SUCCEEDS,
    "pm_card_mastercard": _SUCCEEDS,
    "pm_card_amex": _SUCCEEDS,
    "pm_card_chargeDeclined": CardOutcome(
        "requires_payment_method", "card_declined", "generic_decline", _DECLINED_MESSAGE
    ),
    "pm_card_chargeDeclinedInsufficientFunds": CardOutcome(
        "requires_payment_method",
        "card_declined",
        "insufficient_funds",
        "Your card has insufficient funds.",
    ),
    "pm_card_chargeDeclinedProcessingError": CardOutcome(
        "requires_payment_method",
        "processing_error",
        None,
        "An error occurred while processing your card. Try again in a little bit.",
    ),
    # 3D Secure required: on-session -> requires_action; off-session -> the decline below.
    "pm_card_authenticationRequired": CardOutcome("requires_action"),
    "pm_sim_processing": CardOutcome("processing"),
    "pm_sim_processing_fails": CardOutcome("processing", settle_fails=True),
}


# What Stripe answers when a card that needs authentication is charged with off_session=true.
OFF_SESSION_AUTHENTICATION_REQUIRED = CardOutcome(
    "requires_payment_method",
    "authentication_required",
    "authentication_required",
    "Your card was declined. This transaction requires authentication.",
)


# Stripe cancels an uncaptured PaymentIntent when its authorization expires: 7 days for
# online card payments ("Place a hold on a payment method"; the status becomes canceled).
AUTHORIZATION_WINDOW_S = 7 * 24 * 3600


def settle(state: State, record: PaymentIntentRecord, now_mono: float) -> None:
    """Lazily move a ``processing`` intent to its final status, and cancel an authorization
    past its window (lock held; simulated clock)."""
    _expire_authorization(state, record.obj)
    if record.settle_at_mono is None or now_mono < record.settle_at_mono:
        return
    record.settle_at_mono = None
    obj = record.obj
    state.settling.discard(obj["id"])
    if record.settle_fails:
        obj["status"] = "requires_payment_method"
        obj["last_payment_error"] = card_error_dict(
            TEST_PAYMENT_METHODS["pm_card_chargeDeclined"], obj["payment_method"]
        )
        obj["payment_method"] = None
        emit(state, "payment_intent.payment_failed", obj)
        return
    emit(state, mark_succeeded(state, obj), obj)


def _expire_authorization(state: State, obj: dict[str, Any]) -> None:
    """An intent still ``requires_capture`` when its authorization window has passed is
    canceled by Stripe itself (``cancellation_reason`` automatic); the hold is released."""
    if obj["status"] != "requires_capture":
        return
    expires_at = int(obj["created"]) + AUTHORIZATION_WINDOW_S
    if state.now() < expires_at:
        return
    obj["status"] = "canceled"
    obj["canceled_at"] = expires_at
    obj["cancellation_reason"] = "automatic"
    obj["amount_capturable"] = 0
    emit(state, "payment_intent.canceled", obj)


def mark_succeeded(state: State, obj: dict[str, Any]) -> str:
    """The card payment went through: captured, or only authorized with
    ``capture_method=manual`` (``requires_capture``). Returns the event type to emit."""
    obj["latest_charge"] = state.new_id("ch_")
    if obj.get("capture_method") == "manual":
        obj["status"] = "requires_capture"
        obj["amount_capturable"] = obj["amount"]
        return "payment_intent.amount_capturable_updated"
    obj["status"] = "succeeded"
    obj["amount_received"] = obj["amount"]
    return "payment_intent.succeeded"


def card_error_dict(outcome: CardOutcome, payment_method: str | None) -> dict[str, Any]:
    error: dict[str, Any] = {
        "type": "card_error",
        "code": outcome.error_code,
        "message": outcome.message,
        "doc_url": "https://stripe.com/docs/error-codes/"
        + (outcome.error_code or "").replace("_", "-"),
        "payment_method": {"id": payment_method, "object": "payment_method"},
    }
    if outcome.decline_code is not None:
        error["decline_code"] = outcome.decline_code
    return error


def snapshot_payment_intents(state: State) -> list[dict[str, Any]]:
    """Every intent as a deep copy, ``processing`` ones settled first when due."""
    with state.lock:
        now = state.mono()
        for record in state.payment_intents.values():
            settle(state, record, now)
        return copy.deepcopy([r.obj for r in state.payment_intents.values()])
