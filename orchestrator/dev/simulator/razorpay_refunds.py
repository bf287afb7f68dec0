"""Razorpay refunds: create (``POST /v1/payments/:id/refund``), fetch and list, and the
``pending`` -> ``processed`` lifecycle.

A normal-speed refund stays ``pending`` for the Razorpay ``processing_delay_s`` (simulated
clock) and then becomes ``processed`` with a ``refund.processed`` event; an ``optimum``
(instant) refund is processed at once. The payment counts a refund in ``amount_refunded``
from its creation, so the sum of refunds can never exceed what was captured.
``X-Refund-Idempotency`` is handled by the pipeline around these handlers.
"""

from __future__ import annotations

from typing import Any

from orchestrator.dev.simulator.common import Response, json_response
from orchestrator.dev.simulator.razorpay_common import (
    RAZORPAY_ID_CHARS,
    RzCall,
    collection,
    find_payment,
    find_refund,
    invalid,
    parse_int,
    parse_notes,
    reject_extra_fields,
)
from orchestrator.dev.simulator.razorpay_events import emit_event
from orchestrator.dev.simulator.state import RazorpayPaymentRecord, RazorpayRefundRecord, State

REFUND_SPEEDS = ("normal", "optimum")
_REFUND_FIELDS = ("amount", "speed", "notes", "receipt")
_ARN_DIGITS = 14


def create_refund(state: State, call: RzCall) -> Response:
    """Refund a captured payment, fully (no ``amount``) or partly."""
    params = call.params
    reject_extra_fields(params, _REFUND_FIELDS)
    record = find_payment(state, call.parts[2])
    payment = record.obj
    amount = parse_int(params, "amount")
    speed = params.get("speed") or "normal"
    if speed not in REFUND_SPEEDS:
        raise invalid("The selected speed is invalid.", "speed")
    notes = parse_notes(params)
    receipt = params.get("receipt")
    if receipt is not None and not isinstance(receipt, str):
        raise invalid("The receipt must be a string.", "receipt")
    if payment["status"] not in ("captured", "refunded"):
        raise invalid("The payment status should be captured for action to be taken", "payment_id")
    captured, refunded = int(payment["amount"]), int(payment["amount_refunded"])
    if refunded >= captured:
        raise invalid("The payment has been fully refunded already", "payment_id")
    amount = captured - refunded if amount is None else amount
    if amount < 100:
        raise invalid(f"The amount must be at least {payment['currency']} 1.00", "amount")
    if amount > captured:
        raise invalid("The refund amount provided is greater than amount captured", "amount")
    if amount > captured - refunded:
        raise invalid("The refund amount provided is greater than the unrefunded amount", "amount")
    refund = new_refund(state, record, amount, speed=speed, notes=notes, receipt=receipt)
    return json_response(200, refund, saveable=True)


def new_refund(
    state: State,
    record: RazorpayPaymentRecord,
    amount: int,
    *,
    speed: str = "normal",
    notes: dict[str, Any] | list[Any] | None = None,
    receipt: str | None = None,
    processed: bool = False,
) -> dict[str, Any]:
    """Record a refund of ``amount`` on a payment (lock held) and return it.

    ``processed`` refunds (instant ones, and the automatic refund of a late payment) are
    final at once; others wait for the processing delay.
    """
    payment = record.obj
    processed = processed or speed == "optimum"
    refund: dict[str, Any] = {
        "id": state.new_id("rfnd_", RAZORPAY_ID_CHARS),
        "entity": "refund",
        "amount": amount,
        "currency": payment["currency"],
        "payment_id": payment["id"],
        "notes": [] if notes is None else notes,
        "receipt": receipt,
        "acquirer_data": {"arn": None},
        "created_at": int(state.now()),
        "batch_id": None,
        "status": "pending",
        "speed_processed": "instant" if speed == "optimum" else "normal",
        "speed_requested": speed,
    }
    payment["amount_refunded"] = int(payment["amount_refunded"]) + amount
    full = payment["amount_refunded"] >= int(payment["amount"])
    payment["refund_status"] = "full" if full else "partial"
    if full:
        payment["status"] = "refunded"
    delay_s = state.faults["razorpay"].processing_delay_s
    refund_record = RazorpayRefundRecord(refund, None if processed else state.mono() + delay_s)
    state.rz_refunds[refund["id"]] = refund_record
    state.rz_refunds_by_payment.setdefault(payment["id"], []).append(refund["id"])
    if processed:
        _mark_processed(state, refund_record)
    else:
        state.rz_pending_refunds.add(refund["id"])
    return refund


def process_due_refunds(state: State, now_mono: float) -> None:
    """Move ``pending`` refunds whose time has come to ``processed`` (lock held)."""
    for refund_id in list(state.rz_pending_refunds):
        record = state.rz_refunds.get(refund_id)
        if record is None:
            state.rz_pending_refunds.discard(refund_id)
        elif record.process_at_mono is not None and now_mono >= record.process_at_mono:
            state.rz_pending_refunds.discard(refund_id)
            _mark_processed(state, record)


def _mark_processed(state: State, record: RazorpayRefundRecord) -> None:
    refund = record.obj
    record.process_at_mono = None
    refund["status"] = "processed"
    refund["acquirer_data"] = {"arn": state.new_id("", _ARN_DIGITS)}
    payment = state.rz_payments[refund["payment_id"]].obj
    emit_event(state, "refund.processed", {"refund": refund, "payment": payment})


def get_refund(state: State, call: RzCall) -> Response:
    return json_response(200, find_refund(state, call.parts[2]).obj)


def list_refunds(state: State, call: RzCall) -> Response:
    newest_first = [state.rz_refunds[r].obj for r in reversed(state.rz_refunds)]
    return collection(newest_first, call.params)


def payment_refunds(state: State, call: RzCall) -> Response:
    """``GET /v1/payments/:id/refunds``: the payment's refunds, newest first."""
    payment_id = find_payment(state, call.parts[2]).obj["id"]
    ids = state.rz_refunds_by_payment.get(payment_id, [])
    return collection([state.rz_refunds[r].obj for r in reversed(ids)], call.params)


def payment_refund(state: State, call: RzCall) -> Response:
    """``GET /v1/payments/:id/refunds/:refund_id``: a refund of that payment only."""
    payment_id = find_payment(state, call.parts[2]).obj["id"]
    record = find_refund(state, call.parts[4])
    if record.obj["payment_id"] != payment_id:
        raise invalid("The id provided does not exist", "id")
    return json_response(200, record.obj)
