"""Razorpay payments: recurring charges on an order with a saved token, their lifecycle
(``created`` -> ``authorized`` -> ``captured`` / ``failed`` / ``refunded``), manual capture,
and the rule that binds an order to one successful payment.

Test tokens drive the outcome the way Stripe's test payment methods do (see
:data:`TEST_TOKENS` and the package docs). What Razorpay documents about orders, and this
module enforces: a payment on an order that is ``paid``, or that has an ``authorized``
payment, is refused with "Payment already done for this order."; a debit that was still
pending when another payment paid the order is refunded automatically when it goes through
(so an order never has two captured payments); and an authorized payment not captured within
5 days is refunded automatically.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from orchestrator.dev.simulator.common import Response, json_response
from orchestrator.dev.simulator.razorpay_common import (
    RAZORPAY_ID_CHARS,
    RazorpayError,
    RzCall,
    collection,
    find_order,
    find_payment,
    invalid,
    parse_amount,
    parse_currency,
    parse_int,
    parse_notes,
    reject_extra_fields,
    require,
)
from orchestrator.dev.simulator.razorpay_events import emit_event
from orchestrator.dev.simulator.razorpay_refunds import new_refund, process_due_refunds
from orchestrator.dev.simulator.state import (
    RazorpayOrderRecord,
    RazorpayPaymentRecord,
    RazorpayRefundRecord,
    State,
)

# Razorpay refunds a payment left authorized (not captured) for 5 days.
AUTHORIZED_AUTO_REFUND_S = 5 * 24 * 3600
RECURRING_FIELDS = (
    "email",
    "contact",
    "amount",
    "currency",
    "order_id",
    "customer_id",
    "token",
    "recurring",
    "notes",
    "description",
)
_REQUIRED_RECURRING_FIELDS = RECURRING_FIELDS[:8]
ORDER_ALREADY_PAID = "Payment already done for this order."


@dataclass(frozen=True)
class TokenOutcome:
    """What charging a test token does: ``captured`` (succeeds now), ``failed`` (fails now)
    or ``created`` (stays pending for the processing delay, then settles)."""

    status: str
    settle_fails: bool = False
    description: str = "Payment failed"
    source: str = "bank"
    reason: str = "payment_failed"


_FAILS_INSUFFICIENT_FUNDS = TokenOutcome(
    "failed",
    description="Payment processing failed due to insufficient balance",
    source="customer",
    reason="insufficient_funds",
)
# Matched by prefix, in this order; any other ``token_...`` id succeeds like a healthy mandate.
TEST_TOKENS: tuple[tuple[str, TokenOutcome], ...] = (
    ("token_pending_fail", TokenOutcome("created", settle_fails=True)),
    ("token_pending", TokenOutcome("created")),
    ("token_fail_insufficient_funds", _FAILS_INSUFFICIENT_FUNDS),
    ("token_fail", TokenOutcome("failed")),
    ("token_success", TokenOutcome("captured")),
)
_SUCCEEDS = TokenOutcome("captured")


def token_outcome(token: object) -> TokenOutcome:
    if not isinstance(token, str) or not token.startswith("token_"):
        raise invalid("The id provided does not exist", "token")
    return next((o for prefix, o in TEST_TOKENS if token.startswith(prefix)), _SUCCEEDS)


def payment_signature(order_id: str, payment_id: str, key_secret: str) -> str:
    """``razorpay_signature``: hex HMAC-SHA256 of ``"<order_id>|<payment_id>"`` keyed with
    the API key secret, as the SDK's ``verify_payment_signature`` checks it."""
    message = f"{order_id}|{payment_id}".encode()
    return hmac.new(key_secret.encode(), message, hashlib.sha256).hexdigest()


def create_recurring(state: State, call: RzCall) -> Response:
    """``POST /v1/payments/create/recurring``: charge a saved token against an order."""
    params = call.params
    reject_extra_fields(params, RECURRING_FIELDS)
    require(params, *_REQUIRED_RECURRING_FIELDS)
    if str(params["recurring"]).lower() not in ("1", "true"):
        raise invalid("The selected recurring is invalid.", "recurring")
    currency = parse_currency(params)
    amount = parse_amount(params, currency)
    order_record = find_order(state, str(params["order_id"]), "order_id")
    order = order_record.obj
    outcome = token_outcome(params["token"])
    if amount != order["amount"]:
        raise invalid("Payment amount provided does not match with the amount in order", "amount")
    if currency != order["currency"]:
        raise invalid(
            "Payment currency provided does not match with the currency in order", "currency"
        )
    if _order_taken(state, order["id"]):
        raise invalid(ORDER_ALREADY_PAID, "order_id", metadata={"order_id": order["id"]})
    record = _new_payment(state, params, order, amount, currency)
    payment = record.obj
    if outcome.status == "failed":
        _fail(state, record, outcome)
        raise RazorpayError(
            400,
            outcome.description,
            source=outcome.source,
            step="payment_authorization",
            reason=outcome.reason,
            metadata={"payment_id": payment["id"], "order_id": order["id"]},
        )
    if outcome.status == "created":
        delay_s = state.faults["razorpay"].processing_delay_s
        record.settle_at_mono = state.mono() + delay_s
        record.settle_fails = outcome.settle_fails
        state.rz_pending_payments.add(payment["id"])
    else:
        _succeed(state, record)
    return json_response(
        200,
        {
            "razorpay_payment_id": payment["id"],
            "razorpay_order_id": order["id"],
            "razorpay_signature": payment_signature(order["id"], payment["id"], call.key_secret),
        },
    )


def _order_taken(state: State, order_id: str) -> bool:
    """Paid, or holding an authorized payment: Razorpay takes no further payment."""
    if state.rz_orders[order_id].obj["status"] == "paid":
        return True
    return any(
        state.rz_payments[p].obj["status"] == "authorized"
        for p in state.rz_payments_by_order.get(order_id, [])
    )


def _new_payment(
    state: State, params: dict[str, Any], order: dict[str, Any], amount: int, currency: str
) -> RazorpayPaymentRecord:
    payment: dict[str, Any] = {
        "id": state.new_id("pay_", RAZORPAY_ID_CHARS),
        "entity": "payment",
        "amount": amount,
        "currency": currency,
        "status": "created",
        "order_id": order["id"],
        "invoice_id": None,
        "international": False,
        "method": "emandate",
        "amount_refunded": 0,
        "refund_status": None,
        "captured": False,
        "description": params.get("description"),
        "card_id": None,
        "bank": None,
        "wallet": None,
        "vpa": None,
        "email": params["email"],
        "contact": str(params["contact"]),
        "customer_id": params["customer_id"],
        "token_id": params["token"],
        "notes": parse_notes(params),
        "fee": None,
        "tax": None,
        "error_code": None,
        "error_description": None,
        "error_source": None,
        "error_step": None,
        "error_reason": None,
        "acquirer_data": {},
        "created_at": int(state.now()),
    }
    order["attempts"] += 1
    if order["status"] == "created":
        order["status"] = "attempted"
    record = RazorpayPaymentRecord(payment)
    state.rz_payments[payment["id"]] = record
    state.rz_payments_by_order.setdefault(order["id"], []).append(payment["id"])
    return record


def _succeed(state: State, record: RazorpayPaymentRecord) -> None:
    """The debit went through: capture it (auto-capture orders), leave it authorized, or,
    if the order was paid meanwhile by another payment, refund it automatically."""
    payment = record.obj
    order_record = state.rz_orders[payment["order_id"]]
    payment["status"] = "authorized"
    if _order_taken_by_other(state, payment):
        new_refund(state, record, int(payment["amount"]), processed=True)
        return
    if order_record.auto_capture:
        capture(state, record)
        return
    state.rz_authorized.add(payment["id"])
    emit_event(state, "payment.authorized", {"payment": payment})


def _order_taken_by_other(state: State, payment: dict[str, Any]) -> bool:
    order_id = payment["order_id"]
    if state.rz_orders[order_id].obj["status"] == "paid":
        return True
    return any(
        p != payment["id"] and state.rz_payments[p].obj["status"] == "authorized"
        for p in state.rz_payments_by_order.get(order_id, [])
    )


def capture(state: State, record: RazorpayPaymentRecord) -> None:
    """Capture an authorized payment and mark its order paid (lock held)."""
    payment = record.obj
    order = state.rz_orders[payment["order_id"]].obj
    payment.update(status="captured", captured=True, fee=0, tax=0)
    state.rz_authorized.discard(payment["id"])
    order.update(amount_paid=order["amount"], amount_due=0, status="paid")
    emit_event(state, "payment.captured", {"payment": payment})
    emit_event(state, "order.paid", {"payment": payment, "order": order})


def _fail(state: State, record: RazorpayPaymentRecord, outcome: TokenOutcome) -> None:
    payment = record.obj
    payment.update(
        status="failed",
        error_code="BAD_REQUEST_ERROR",
        error_description=outcome.description,
        error_source=outcome.source,
        error_step="payment_authorization",
        error_reason=outcome.reason,
    )
    emit_event(state, "payment.failed", {"payment": payment})


def capture_payment(state: State, call: RzCall) -> Response:
    """``POST /v1/payments/:id/capture`` for orders created with ``payment_capture`` off."""
    params = call.params
    reject_extra_fields(params, ("amount", "currency"))
    record = find_payment(state, call.parts[2])
    payment = record.obj
    if payment["captured"]:
        raise invalid("This payment has already been captured", "payment_id")
    if payment["status"] != "authorized":
        raise invalid(
            "Only payments which have been authorized and not yet captured can be captured",
            "payment_id",
        )
    amount = parse_int(params, "amount")
    if amount is None:
        raise invalid("The amount field is required.", "amount")
    if amount != payment["amount"]:
        raise invalid("Capture amount must be equal to the amount authorized", "amount")
    currency = params.get("currency")
    if currency is not None and currency != payment["currency"]:
        raise invalid("Capture request currency must be same as payment currency", "currency")
    capture(state, record)
    return json_response(200, payment)


def settle_due(state: State) -> None:
    """Settle pending debits, refund stale authorizations and process due refunds (lock
    held; simulated clock). Called before every Razorpay request, snapshot and webhook tick,
    so timers fire whether or not anyone reads the objects."""
    now_mono = state.mono()
    for payment_id in list(state.rz_pending_payments):
        record = state.rz_payments.get(payment_id)
        if record is None or record.settle_at_mono is None:
            state.rz_pending_payments.discard(payment_id)
        elif now_mono >= record.settle_at_mono:
            state.rz_pending_payments.discard(payment_id)
            record.settle_at_mono = None
            if record.settle_fails:
                _fail(state, record, TokenOutcome("failed"))
            else:
                _succeed(state, record)
    now = state.now()
    for payment_id in list(state.rz_authorized):
        record = state.rz_payments.get(payment_id)
        if record is None or record.obj["status"] != "authorized":
            state.rz_authorized.discard(payment_id)
        elif now >= record.obj["created_at"] + AUTHORIZED_AUTO_REFUND_S:
            state.rz_authorized.discard(payment_id)
            new_refund(state, record, int(record.obj["amount"]), processed=True)
    process_due_refunds(state, now_mono)


def get_payment(state: State, call: RzCall) -> Response:
    return json_response(200, find_payment(state, call.parts[2]).obj)


def list_payments(state: State, call: RzCall) -> Response:
    newest_first = [state.rz_payments[p].obj for p in reversed(state.rz_payments)]
    return collection(newest_first, call.params)


def order_payments(state: State, call: RzCall) -> Response:
    """``GET /v1/orders/:id/payments``: every attempt on the order, newest first."""
    order_id = find_order(state, call.parts[2]).obj["id"]
    ids = state.rz_payments_by_order.get(order_id, [])
    return collection([state.rz_payments[p].obj for p in reversed(ids)], call.params)


def snapshot(state: State, kind: str) -> list[dict[str, Any]]:
    """Deep copies of every Razorpay ``orders``, ``payments`` or ``refunds`` object (oldest
    first), timers settled first."""
    with state.lock:
        settle_due(state)
        records: list[RazorpayOrderRecord | RazorpayPaymentRecord | RazorpayRefundRecord]
        if kind == "orders":
            records = list(state.rz_orders.values())
        elif kind == "payments":
            records = list(state.rz_payments.values())
        else:
            records = list(state.rz_refunds.values())
        return copy.deepcopy([record.obj for record in records])
