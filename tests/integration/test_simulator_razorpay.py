"""Specification of the simulator's Razorpay API, driven through the official ``razorpay``
SDK over real HTTP (``base_url`` = the simulator's ``/razorpay`` prefix)."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import razorpay
import razorpay.errors as rz_errors
import requests

from orchestrator.dev.simulator import Simulator, SimulatorControl

KEY_ID = "rzp_test_simkey01"
KEY_SECRET = "sim_secret_value"
WEBHOOK_SECRET = "whsec_razorpay_sim"
PROCESSING_DELAY_S = 2.0  # FaultConfig's default
ORDER_ALREADY_PAID = "Payment already done for this order."


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    simulator = Simulator(razorpay_key_id=KEY_ID, razorpay_key_secret=KEY_SECRET, seed=3).start()
    yield simulator
    simulator.stop()


@pytest.fixture(autouse=True)
def _fresh(sim: Simulator) -> Iterator[None]:
    sim.reset()
    sim.set_receipt_mode("reject")
    yield
    sim.set_razorpay_webhook(None)


def client(sim: Simulator, secret: str = KEY_SECRET) -> razorpay.Client:
    return razorpay.Client(auth=(KEY_ID, secret), base_url=sim.razorpay_url)


def create_order(sim: Simulator, receipt: str | None = "job-1", **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"amount": 50000, "currency": "INR", "payment_capture": True, **extra}
    if receipt is not None:
        data["receipt"] = receipt
    order: dict[str, Any] = client(sim).order.create(data)
    return order


def charge(sim: Simulator, order: dict[str, Any], token: str = "token_success") -> dict[str, Any]:
    result: dict[str, Any] = client(sim).payment.createRecurring(
        {
            "email": "gaurav.kumar@example.com",
            "contact": "9123456789",
            "amount": order["amount"],
            "currency": order["currency"],
            "order_id": order["id"],
            "customer_id": "cust_1Aa00000000001",
            "token": token,
            "recurring": "1",
            "notes": {"orchestrator_job_id": "job-1"},
            "description": "monthly charge",
        }
    )
    return result


def refund(sim: Simulator, payment_id: str, key: str | None, **data: Any) -> dict[str, Any]:
    headers = {} if key is None else {"X-Refund-Idempotency": key}
    result: dict[str, Any] = client(sim).payment.refund(payment_id, data, headers=headers)
    return result


def raw(sim: Simulator, method: str, path: str, **kwargs: Any) -> requests.Response:
    kwargs.setdefault("auth", (KEY_ID, KEY_SECRET))
    return requests.request(method, f"{sim.razorpay_url}{path}", timeout=5, **kwargs)


def captured_per_order(sim: Simulator) -> dict[str, int]:
    counts: dict[str, int] = {}
    for payment in sim.razorpay_payments():
        if payment["captured"]:
            counts[payment["order_id"]] = counts.get(payment["order_id"], 0) + 1
    return counts


def wait_until(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


# --------------------------------------------------------------------------- orders


def test_order_create_fetch_and_list_by_receipt(sim: Simulator) -> None:
    """An order is created in Razorpay's shape, fetched by id and found by its receipt."""
    order = create_order(sim, "job-1", notes={"orchestrator_job_id": "job-1"})
    assert order["id"].startswith("order_") and len(order["id"]) == 20
    assert (order["entity"], order["status"], order["attempts"]) == ("order", "created", 0)
    assert (order["amount"], order["amount_paid"], order["amount_due"]) == (50000, 0, 50000)
    assert order["notes"] == {"orchestrator_job_id": "job-1"}
    assert client(sim).order.fetch(order["id"]) == order
    other = create_order(sim, "job-2")
    assert other["notes"] == []  # Razorpay answers empty notes as an empty array
    listed = client(sim).order.all({"receipt": "job-1"})
    assert (listed["entity"], listed["count"]) == ("collection", 1)
    assert [o["id"] for o in listed["items"]] == [order["id"]]
    assert [o["id"] for o in client(sim).order.all()["items"]] == [other["id"], order["id"]]
    assert client(sim).order.payments(order["id"])["items"] == []
    with pytest.raises(rz_errors.BadRequestError, match="The id provided does not exist"):
        client(sim).order.fetch("order_DoesNotExist01")


def test_reused_receipt_is_refused_by_default(sim: Simulator) -> None:
    """In "reject" mode a second order with a receipt already used is a 400."""
    first = create_order(sim, "job-dup")
    with pytest.raises(
        rz_errors.BadRequestError, match=re.escape("Order receipt should be unique.")
    ):
        create_order(sim, "job-dup")
    resp = raw(
        sim, "POST", "/v1/orders", json={"amount": 50000, "currency": "INR", "receipt": "job-dup"}
    )
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert (error["code"], error["reason"]) == ("BAD_REQUEST_ERROR", "input_validation_failed")
    assert error["metadata"] == {"order_id": first["id"]}
    assert [o["id"] for o in sim.razorpay_orders()] == [first["id"]]


def test_reused_receipt_returns_the_existing_order_in_that_mode(sim: Simulator) -> None:
    """In "return_existing" mode the same receipt answers the order that has it."""
    control = SimulatorControl(sim.url)
    control.set_receipt_mode("return_existing")
    assert requests.get(f"{sim.url}/_sim/razorpay/settings", timeout=2).json()["receipt_mode"] == (
        "return_existing"
    )
    first = create_order(sim, "job-same")
    again = create_order(sim, "job-same")
    assert again["id"] == first["id"]
    assert len(sim.razorpay_orders()) == 1
    with pytest.raises(ValueError):
        control.set_receipt_mode("sometimes")
    control.close()


def test_order_validation(sim: Simulator) -> None:
    """Receipts over 40 characters, amounts under 1.00 and unknown fields are 400s."""
    with pytest.raises(rz_errors.BadRequestError, match="may not be greater than 40"):
        create_order(sim, "r" * 41)
    with pytest.raises(rz_errors.BadRequestError, match=re.escape("at least INR 1.00")):
        client(sim).order.create({"amount": 99, "currency": "INR"})
    with pytest.raises(rz_errors.BadRequestError, match=re.escape("is/are not required")):
        create_order(sim, "job-x", metadata={"a": "b"})
    assert sim.razorpay_orders() == []


# --------------------------------------------------------------------------- payments


def test_recurring_payment_succeeds_and_pays_the_order(sim: Simulator) -> None:
    """token_success is captured at once; the order is paid; the signature verifies."""
    order = create_order(sim)
    result = charge(sim, order)
    assert result["razorpay_order_id"] == order["id"]
    assert client(sim).utility.verify_payment_signature(result)
    payment = client(sim).payment.fetch(result["razorpay_payment_id"])
    assert (payment["entity"], payment["status"], payment["captured"]) == (
        "payment",
        "captured",
        True,
    )
    assert (payment["order_id"], payment["amount"], payment["amount_refunded"]) == (
        order["id"],
        50000,
        0,
    )
    assert payment["notes"] == {"orchestrator_job_id": "job-1"}
    paid = client(sim).order.fetch(order["id"])
    assert (paid["status"], paid["amount_paid"], paid["amount_due"], paid["attempts"]) == (
        "paid",
        50000,
        0,
        1,
    )
    assert [p["id"] for p in client(sim).order.payments(order["id"])["items"]] == [payment["id"]]


def test_failing_token_fails_and_the_order_takes_a_retry(sim: Simulator) -> None:
    """token_fail is a 400 "Payment failed"; the failed payment is kept; a new attempt on
    the same order can still succeed."""
    order = create_order(sim)
    resp = raw(
        sim,
        "POST",
        "/v1/payments/create/recurring",
        json={
            "email": "a@example.com",
            "contact": "9123456789",
            "amount": 50000,
            "currency": "INR",
            "order_id": order["id"],
            "customer_id": "cust_1",
            "token": "token_fail",
            "recurring": "1",
        },
    )
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert (error["code"], error["description"]) == ("BAD_REQUEST_ERROR", "Payment failed")
    (failed,) = sim.razorpay_payments()
    assert error["metadata"] == {"payment_id": failed["id"], "order_id": order["id"]}
    assert (failed["status"], failed["error_code"]) == ("failed", "BAD_REQUEST_ERROR")
    assert client(sim).order.fetch(order["id"])["status"] == "attempted"
    with pytest.raises(rz_errors.BadRequestError, match="insufficient balance"):
        charge(sim, order, "token_fail_insufficient_funds")
    charge(sim, order)
    assert captured_per_order(sim) == {order["id"]: 1}
    assert client(sim).order.fetch(order["id"])["attempts"] == 3


def test_pending_debit_settles_on_the_simulated_clock(sim: Simulator) -> None:
    """token_pending stays created for processing_delay_s, then is captured;
    token_pending_fail then fails."""
    order = create_order(sim, "job-p")
    paying = charge(sim, order, "token_pending")["razorpay_payment_id"]
    failing_order = create_order(sim, "job-pf")
    failing = charge(sim, failing_order, "token_pending_fail")["razorpay_payment_id"]
    assert client(sim).payment.fetch(paying)["status"] == "created"
    assert client(sim).order.fetch(order["id"])["status"] == "attempted"
    sim.advance_clock(PROCESSING_DELAY_S + 1)
    assert client(sim).payment.fetch(paying)["status"] == "captured"
    assert client(sim).order.fetch(order["id"])["status"] == "paid"
    assert client(sim).payment.fetch(failing)["status"] == "failed"
    assert client(sim).order.fetch(failing_order["id"])["status"] == "attempted"


def test_a_paid_order_refuses_a_second_payment(sim: Simulator) -> None:
    """A second charge on a paid order is refused; it never captures twice."""
    order = create_order(sim)
    charge(sim, order)
    with pytest.raises(rz_errors.BadRequestError, match=re.escape(ORDER_ALREADY_PAID)):
        charge(sim, order)
    assert len(sim.razorpay_payments()) == 1
    assert captured_per_order(sim) == {order["id"]: 1}


def test_a_late_pending_debit_on_a_paid_order_is_refunded_not_captured(sim: Simulator) -> None:
    """A debit still pending when another payment paid the order is refunded when it goes
    through: one captured payment per order."""
    order = create_order(sim)
    late = charge(sim, order, "token_pending")["razorpay_payment_id"]
    charge(sim, order)
    sim.advance_clock(PROCESSING_DELAY_S + 1)
    payment = client(sim).payment.fetch(late)
    assert (payment["status"], payment["captured"], payment["refund_status"]) == (
        "refunded",
        False,
        "full",
    )
    assert captured_per_order(sim) == {order["id"]: 1}


def test_manual_capture_order(sim: Simulator) -> None:
    """With payment_capture off a payment stays authorized, blocks another payment, and
    /capture (amount must equal) captures it."""
    order = create_order(sim, payment_capture=False)
    payment_id = charge(sim, order)["razorpay_payment_id"]
    assert client(sim).payment.fetch(payment_id)["status"] == "authorized"
    with pytest.raises(rz_errors.BadRequestError, match=re.escape(ORDER_ALREADY_PAID)):
        charge(sim, order)
    with pytest.raises(rz_errors.BadRequestError, match="equal to the amount authorized"):
        client(sim).payment.capture(payment_id, 100)
    captured = client(sim).payment.capture(payment_id, 50000, {"currency": "INR"})
    assert (captured["status"], captured["captured"]) == ("captured", True)
    assert client(sim).order.fetch(order["id"])["status"] == "paid"


# --------------------------------------------------------------------------- refunds


def paid_payment(sim: Simulator, receipt: str = "job-r") -> str:
    payment_id: str = charge(sim, create_order(sim, receipt))["razorpay_payment_id"]
    return payment_id


def test_refund_idempotency_key_returns_the_same_refund(sim: Simulator) -> None:
    """The same X-Refund-Idempotency key returns the same refund; another body with it is
    a 400; a malformed key is a 400."""
    payment_id = paid_payment(sim)
    first = refund(sim, payment_id, "refund-key-000001", amount=1000)
    assert (first["entity"], first["status"], first["amount"]) == ("refund", "pending", 1000)
    assert refund(sim, payment_id, "refund-key-000001", amount=1000)["id"] == first["id"]
    with pytest.raises(rz_errors.BadRequestError, match="Different request with the same"):
        refund(sim, payment_id, "refund-key-000001", amount=2000)
    with pytest.raises(rz_errors.BadRequestError, match="at least 10 characters"):
        refund(sim, payment_id, "short", amount=1000)
    assert [r["id"] for r in sim.razorpay_refunds()] == [first["id"]]
    assert [e["replayed"] for e in sim.requests_log() if "/refund" in e["path"]] == [
        False,
        True,
        False,
        False,
    ]
    assert client(sim).refund.fetch(first["id"])["payment_id"] == payment_id
    listed = client(sim).payment.fetch_multiple_refund(payment_id)
    assert [r["id"] for r in listed["items"]] == [first["id"]]


def test_refund_key_in_flight_is_409(sim: Simulator) -> None:
    """A request whose key is still being processed is answered 409 Conflict."""
    payment_id = paid_payment(sim)
    sim.set_faults("razorpay", latency_ms=400)
    results: list[str] = []
    first = threading.Thread(
        target=lambda: results.append(
            refund(sim, payment_id, "refund-key-inflight", amount=1000)["id"]
        )
    )
    first.start()
    time.sleep(0.15)
    resp = raw(
        sim,
        "POST",
        f"/v1/payments/{payment_id}/refund",
        json={"amount": 1000},
        headers={"X-Refund-Idempotency": "refund-key-inflight"},
    )
    first.join()
    assert resp.status_code == 409
    assert resp.json()["error"]["code"] == "BAD_REQUEST_ERROR"
    assert len(results) == 1 and len(sim.razorpay_refunds()) == 1


def test_refunds_never_exceed_the_captured_amount(sim: Simulator) -> None:
    """Over-refunds are refused with Razorpay's errors; pending refunds become processed."""
    payment_id = paid_payment(sim)
    with pytest.raises(rz_errors.BadRequestError, match="greater than amount captured"):
        refund(sim, payment_id, None, amount=50001)
    refund(sim, payment_id, None, amount=30000)
    with pytest.raises(rz_errors.BadRequestError, match="greater than the unrefunded amount"):
        refund(sim, payment_id, None, amount=30000)
    rest = refund(sim, payment_id, None)  # no amount: what remains
    assert rest["amount"] == 20000
    with pytest.raises(rz_errors.BadRequestError, match="fully refunded already"):
        refund(sim, payment_id, None, amount=100)
    payment = client(sim).payment.fetch(payment_id)
    assert (payment["status"], payment["amount_refunded"], payment["refund_status"]) == (
        "refunded",
        50000,
        "full",
    )
    sim.advance_clock(PROCESSING_DELAY_S + 1)
    assert {r["status"] for r in sim.razorpay_refunds()} == {"processed"}
    unpaid = create_order(sim, "job-unpaid")
    pending = charge(sim, unpaid, "token_pending")["razorpay_payment_id"]
    with pytest.raises(rz_errors.BadRequestError, match="should be captured"):
        refund(sim, pending, None)


def test_refund_retry_after_a_500_after_execute_gets_the_same_refund(sim: Simulator) -> None:
    """The refund was made although the answer was a 500: a retry with the key returns it."""
    payment_id = paid_payment(sim)
    sim.set_faults("razorpay", rate_500_after_execute=1.0, first_try_only=True)
    with pytest.raises(rz_errors.ServerError):
        refund(sim, payment_id, "refund-key-after500", amount=1000)
    again = refund(sim, payment_id, "refund-key-after500", amount=1000)
    assert [r["id"] for r in sim.razorpay_refunds()] == [again["id"]]


# --------------------------------------------------------------------------- auth and faults


def test_wrong_credentials_are_401_and_never_executed(sim: Simulator) -> None:
    """A wrong secret (or none) is 401 BAD_REQUEST_ERROR "Authentication failed"."""
    with pytest.raises(rz_errors.BadRequestError, match="Authentication failed"):
        client(sim, secret="wrong").order.create({"amount": 50000, "currency": "INR"})
    resp = raw(sim, "POST", "/v1/orders", json={"amount": 50000, "currency": "INR"}, auth=None)
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == "BAD_REQUEST_ERROR"
    assert sim.razorpay_orders() == []


@pytest.mark.parametrize(
    ("fault", "status", "error", "executed"),
    [
        ("outage", 503, rz_errors.ServerError, False),
        ("rate_429", 429, rz_errors.BadRequestError, False),
        ("rate_500", 500, rz_errors.ServerError, False),
        ("rate_500_after_execute", 500, rz_errors.ServerError, True),
        ("rate_cut_before_execute", None, requests.ConnectionError, False),
        ("rate_cut_after_execute", None, requests.ConnectionError, True),
        ("rate_html_502", 502, requests.JSONDecodeError, False),
        ("rate_html_504_after_execute", 504, requests.JSONDecodeError, True),
    ],
)
def test_faults(
    sim: Simulator, fault: str, status: int | None, error: type[Exception], executed: bool
) -> None:
    """Each fault answers as documented in the fault model and executes (or not)."""
    value: float | bool = True if fault == "outage" else 1.0
    sim.set_faults("razorpay", **{fault: value})
    with pytest.raises(error):
        create_order(sim, f"job-{fault}")
    (entry,) = sim.requests_log()
    assert (entry["provider"], entry["fault"], entry["status"]) == ("razorpay", fault, status)
    if status is not None:
        sim.reset()
        sim.set_faults("razorpay", **{fault: value})
        resp = raw(sim, "POST", "/v1/orders", json={"amount": 50000, "currency": "INR"})
        assert resp.status_code == status
        if fault.startswith("rate_html"):
            assert resp.headers["Content-Type"] == "text/html" and b"<html>" in resp.content
        else:
            assert resp.json()["error"]["code"] in ("SERVER_ERROR", "BAD_REQUEST_ERROR")
    sim.set_faults("razorpay")
    assert len(sim.razorpay_orders()) == (1 if executed else 0)


def test_latency_and_timeout_faults(sim: Simulator) -> None:
    """latency_ms delays every answer; rate_timeout executes and then answers too late."""
    sim.set_faults("razorpay", latency_ms=300)
    started = time.monotonic()
    create_order(sim, "job-slow")
    assert time.monotonic() - started >= 0.3
    sim.set_faults("razorpay", rate_timeout=1.0, timeout_sleep_s=1.0)
    with pytest.raises(requests.Timeout):
        client(sim).order.create({"amount": 50000, "currency": "INR"}, timeout=0.3)
    assert len(sim.razorpay_orders()) == 2


def test_stripe_is_untouched_by_razorpay_faults(sim: Simulator) -> None:
    """Razorpay's fault config is its own: a Razorpay outage leaves /v1 (Stripe) alone."""
    sim.set_faults("razorpay", outage=True)
    resp = requests.get(
        f"{sim.url}/v1/payment_intents", headers={"Authorization": "Bearer sk_test_x"}, timeout=2
    )
    assert resp.status_code == 200
    faults = requests.get(f"{sim.url}/_sim/faults", timeout=2).json()
    assert faults["razorpay"]["outage"] is True and faults["stripe"]["outage"] is False


# --------------------------------------------------------------------------- webhooks


class _Receiver:
    """A webhook endpoint that records every request (headers and raw body)."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhooks/razorpay"

    def events(self) -> list[tuple[dict[str, str], dict[str, Any]]]:
        return [(headers, json.loads(body)) for headers, body in list(self.received)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver(sim: Simulator) -> Iterator[_Receiver]:
    endpoint = _Receiver()
    sim.set_razorpay_webhook(endpoint.url, WEBHOOK_SECRET)
    yield endpoint
    sim.set_razorpay_webhook(None)
    endpoint.close()


def test_webhooks_are_signed_and_carry_an_event_id(sim: Simulator, receiver: _Receiver) -> None:
    """payment.captured, order.paid, refund.processed and payment.failed arrive in Razorpay's
    event shape, signed with X-Razorpay-Signature, each with its own x-razorpay-event-id."""
    order = create_order(sim)
    payment_id = charge(sim, order)["razorpay_payment_id"]
    refund(sim, payment_id, None, amount=1000)
    sim.advance_clock(PROCESSING_DELAY_S + 1)
    failed_order = create_order(sim, "job-fail")
    with pytest.raises(rz_errors.BadRequestError):
        charge(sim, failed_order, "token_fail")
    wait_until(lambda: len(receiver.received) == 4)
    for headers, body in receiver.received:
        expected = hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["x-razorpay-signature"], expected)
        assert client(sim).utility.verify_webhook_signature(
            body.decode(), headers["x-razorpay-signature"], WEBHOOK_SECRET
        )
    events = {event["event"]: (headers, event) for headers, event in receiver.events()}
    assert set(events) == {"payment.captured", "order.paid", "refund.processed", "payment.failed"}
    assert len({headers["x-razorpay-event-id"] for headers, _ in events.values()}) == 4
    _, captured = events["payment.captured"]
    assert (captured["entity"], captured["contains"]) == ("event", ["payment"])
    assert captured["account_id"].startswith("acc_")
    assert captured["payload"]["payment"]["entity"]["id"] == payment_id
    _, paid = events["order.paid"]
    assert paid["payload"]["order"]["entity"]["status"] == "paid"
    _, refunded = events["refund.processed"]
    assert refunded["payload"]["refund"]["entity"]["status"] == "processed"
    _, failed = events["payment.failed"]
    assert failed["payload"]["payment"]["entity"]["error_code"] == "BAD_REQUEST_ERROR"

    # A delivery is recorded once the receiver's answer is read, just after the body arrives.
    def razorpay_deliveries() -> list[dict[str, Any]]:
        return [d for d in sim.webhook_deliveries() if d["provider"] == "razorpay"]

    wait_until(lambda: len(razorpay_deliveries()) == 4)
    deliveries = razorpay_deliveries()
    assert len(deliveries) == 4 and {d["status"] for d in deliveries} == {200}


def test_a_duplicate_delivery_keeps_the_event_id(sim: Simulator, receiver: _Receiver) -> None:
    """With webhook_duplicate_rate=1 each event arrives twice under one event id."""
    sim.set_faults("razorpay", webhook_duplicate_rate=1.0)
    with pytest.raises(rz_errors.BadRequestError):
        charge(sim, create_order(sim), "token_fail")
    wait_until(lambda: len(receiver.received) == 2)
    (first_headers, first), (second_headers, second) = receiver.events()
    assert first == second
    assert first_headers["x-razorpay-event-id"] == second_headers["x-razorpay-event-id"]


# --------------------------------------------------------------------------- control plane


def test_control_plane_inspects_and_configures_razorpay(sim: Simulator) -> None:
    """SimulatorControl lists orders, payments and refunds and sets faults for razorpay."""
    control = SimulatorControl(sim.url)
    control.set_faults("razorpay", rate_429=1.0)
    with pytest.raises(rz_errors.BadRequestError):
        create_order(sim)
    control.set_faults("razorpay")
    order = create_order(sim)
    payment_id = charge(sim, order)["razorpay_payment_id"]
    refund_id = refund(sim, payment_id, "control-key-0001", amount=500)["id"]
    assert [o["id"] for o in control.razorpay_orders()] == [order["id"]]
    assert [(p["id"], p["status"]) for p in control.razorpay_payments()] == [
        (payment_id, "captured")
    ]
    assert [r["id"] for r in control.razorpay_refunds()] == [refund_id]
    control.set_razorpay_webhook("http://127.0.0.1:9/hook", "s3cret")
    settings = requests.get(f"{sim.url}/_sim/razorpay/settings", timeout=2).json()
    assert settings["webhook_url"] == "http://127.0.0.1:9/hook"
    control.set_razorpay_webhook(None)
    control.reset()
    assert control.razorpay_orders() == [] and control.razorpay_payments() == []
    control.close()


def test_base_url_with_a_trailing_slash_works(sim: Simulator) -> None:
    """``base_url`` ending in "/" makes the SDK send "//v1/..."; it is served the same."""
    rz = razorpay.Client(auth=(KEY_ID, KEY_SECRET), base_url=sim.razorpay_url + "/")
    order = rz.order.create({"amount": 50000, "currency": "INR"})
    assert rz.order.fetch(order["id"])["id"] == order["id"]
