"""The Razorpay endpoints (served under ``/razorpay/v1/...``): routing and Orders; payments
and refunds live in :mod:`.razorpay_payments` and :mod:`.razorpay_refunds`.

Orders follow Razorpay's Orders API: amounts in the currency subunit (at least 1.00),
``receipt`` up to 40 characters, ``notes`` up to 15 pairs, ``payment_capture`` (default on),
fields the endpoint does not take refused as ``extra_field_sent``. A receipt already used by
another order is refused ("Order receipt should be unique.") or answered with that order,
per the simulator's receipt mode.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from orchestrator.dev.simulator.common import Response, json_response
from orchestrator.dev.simulator.razorpay_common import (
    INVALID_JSON,
    RAZORPAY_ID_CHARS,
    RazorpayError,
    RzCall,
    collection,
    find_order,
    generic_error,
    invalid,
    parse_amount,
    parse_currency,
    parse_notes,
    reject_extra_fields,
    url_not_found,
)
from orchestrator.dev.simulator.razorpay_payments import (
    capture_payment,
    create_recurring,
    get_payment,
    list_payments,
    order_payments,
    settle_due,
)
from orchestrator.dev.simulator.razorpay_refunds import (
    create_refund,
    get_refund,
    list_refunds,
    payment_refund,
    payment_refunds,
)
from orchestrator.dev.simulator.state import RazorpayOrderRecord, State

MAX_RECEIPT_CHARS = 40
# Fields Orders API create takes. Those beyond amount, currency, receipt, notes and
# payment_capture are accepted and ignored (``unique_receipt`` included: receipt reuse
# follows the simulator's receipt mode).
ORDER_FIELDS = (
    "amount",
    "currency",
    "receipt",
    "notes",
    "payment_capture",
    "partial_payment",
    "first_payment_min_amount",
    "method",
    "customer_id",
    "token",
    "bank_account",
    "offer_id",
    "unique_receipt",
)

Handler = Callable[[State, RzCall], Response]


class RazorpayAPI:
    """Razorpay endpoint dispatch; every handler runs with the state lock held."""

    def __init__(self, state: State) -> None:
        self.state = state

    def route(
        self, method: str, path: str, params: dict[str, Any], key_secret: str = ""
    ) -> Response:
        """Answer ``method path`` (``path`` without the ``/razorpay`` prefix)."""
        parts = [p for p in path.split("/") if p]
        handler = _resolve(method, parts)
        if handler is None:
            return url_not_found()
        if INVALID_JSON in params:
            return generic_error(400, "The request body should be a valid JSON object")
        call = RzCall(parts, params, key_secret)
        try:
            with self.state.lock:
                settle_due(self.state)
                return handler(self.state, call)
        except RazorpayError as exc:
            return exc.response()


# -- orders ----------------------------------------------------------------------


def create_order(state: State, call: RzCall) -> Response:
    params = call.params
    reject_extra_fields(params, ORDER_FIELDS)
    currency = parse_currency(params)
    amount = parse_amount(params, currency)
    receipt = params.get("receipt")
    if receipt is not None and not isinstance(receipt, str):
        raise invalid("The receipt must be a string.", "receipt")
    if receipt is not None and len(receipt) > MAX_RECEIPT_CHARS:
        raise invalid(
            f"The receipt may not be greater than {MAX_RECEIPT_CHARS} characters.", "receipt"
        )
    notes = parse_notes(params)
    auto_capture = _parse_capture(params.get("payment_capture"))
    if receipt and receipt in state.rz_receipts:
        existing = state.rz_orders[state.rz_receipts[receipt]].obj
        if state.razorpay_receipt_mode == "return_existing":
            return json_response(200, existing)
        raise invalid("Order receipt should be unique.", metadata={"order_id": existing["id"]})
    order: dict[str, Any] = {
        "id": state.new_id("order_", RAZORPAY_ID_CHARS),
        "entity": "order",
        "amount": amount,
        "amount_paid": 0,
        "amount_due": amount,
        "currency": currency,
        "receipt": receipt or None,
        "offer_id": None,
        "status": "created",
        "attempts": 0,
        "notes": notes,
        "created_at": int(state.now()),
    }
    state.rz_orders[order["id"]] = RazorpayOrderRecord(order, auto_capture)
    if receipt:
        state.rz_receipts[receipt] = order["id"]
    return json_response(200, order)


def _parse_capture(raw: object) -> bool:
    """``payment_capture``: a boolean, or 0 / 1 as older integrations send it."""
    if raw is None:
        return True
    if isinstance(raw, bool):
        return raw
    if raw in (0, 1, "0", "1", "true", "false"):
        return str(raw) in ("1", "true")
    raise invalid("The payment capture field must be true or false.", "payment_capture")


def get_order(state: State, call: RzCall) -> Response:
    return json_response(200, find_order(state, call.parts[2]).obj)


def list_orders(state: State, call: RzCall) -> Response:
    """Newest first; ``receipt`` filters to that receipt's orders."""
    receipt = call.params.get("receipt")
    newest_first = [
        state.rz_orders[order_id].obj
        for order_id in reversed(state.rz_orders)
        if receipt is None or state.rz_orders[order_id].obj["receipt"] == receipt
    ]
    return collection(newest_first, _without(call.params, "receipt"))


def _without(params: Mapping[str, Any], name: str) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k != name}


# -- routing ---------------------------------------------------------------------

_ROUTES: dict[tuple[str, str, int], Handler] = {
    ("POST", "orders", 2): create_order,
    ("GET", "orders", 2): list_orders,
    ("GET", "orders", 3): get_order,
    ("GET", "payments", 2): list_payments,
    ("GET", "payments", 3): get_payment,
    ("GET", "refunds", 2): list_refunds,
    ("GET", "refunds", 3): get_refund,
}
_SUB_ROUTES: dict[tuple[str, str, str], Handler] = {
    ("GET", "orders", "payments"): order_payments,
    ("POST", "payments", "capture"): capture_payment,
    ("POST", "payments", "refund"): create_refund,
    ("GET", "payments", "refunds"): payment_refunds,
}


def _resolve(method: str, parts: list[str]) -> Handler | None:
    if len(parts) < 2 or parts[0] != "v1":
        return None
    if method == "POST" and parts[1:] == ["payments", "create", "recurring"]:
        return create_recurring
    if len(parts) == 4:
        return _SUB_ROUTES.get((method, parts[1], parts[3]))
    if method == "GET" and len(parts) == 5 and parts[1] == "payments" and parts[3] == "refunds":
        return payment_refund
    return _ROUTES.get((method, parts[1], len(parts)))


def is_refund_create(method: str, path: str) -> bool:
    """``POST /v1/payments/:id/refund``: the one call ``X-Refund-Idempotency`` applies to."""
    parts = [p for p in path.split("/") if p]
    return method == "POST" and len(parts) == 4 and parts[1] == "payments" and parts[3] == "refund"
