"""Razorpay end to end: the official SDK over real HTTP against the simulator's Razorpay API,
jobs in PostgreSQL, the real dramatiq worker, and the webhook endpoint under uvicorn.

The session's simulator has no Razorpay keys, so this module starts its own (with the suite's
Stripe and SendGrid keys too, since the orchestrator it serves is built from the suite's
settings). Razorpay's settings are not core settings: each test sets ``RAZORPAY_*`` in the
environment before the orchestrator builds its providers, and installs that orchestrator as
the worker's runtime for the test.
"""

from __future__ import annotations

import collections
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from orchestrator import runtime
from orchestrator.api import Orchestrator
from orchestrator.dev.simulator import Simulator
from orchestrator.errors import InvalidOperation
from orchestrator.maintenance.clock import Clock
from orchestrator.models import JobState
from orchestrator.providers.razorpay.objects import receipt_for
from orchestrator.providers.razorpay.provider import RazorpayProvider
from orchestrator.providers.razorpay.webhooks import signature_of
from orchestrator.web import create_app
from orchestrator.webhooks.listing import list_events
from tests.conftest import (
    SENDGRID_TEST_KEY,
    STRIPE_TEST_KEY,
    orchestrator_like,
    serve,
    wait_until,
)

KEY_ID = "rzp_test_orchestratorSuite"
KEY_SECRET = "razorpaySuiteSecret"
WEBHOOK_SECRET = "whsec_razorpaySuite01"
CUSTOMER = "cust_SuiteCustomer01"
CONTACT = {"email": "ana@example.com", "contact": "+919876543210"}
TERMINAL = {JobState.SUCCEEDED, JobState.FAILED, JobState.DEAD, JobState.CANCELLED}


@pytest.fixture(scope="module")
def rz_sim() -> Iterator[Simulator]:
    sim = Simulator(
        stripe_api_key=STRIPE_TEST_KEY,
        sendgrid_api_key=SENDGRID_TEST_KEY,
        razorpay_key_id=KEY_ID,
        razorpay_key_secret=KEY_SECRET,
        seed=11,
    ).start()
    yield sim
    sim.stop()


@dataclass
class Rz:
    orch: Orchestrator
    sim: Simulator

    def charge(self, key: str, token: str = "token_success", amount: int = 50000) -> Any:
        return self.orch.charge(
            amount,
            "INR",
            CUSTOMER,
            token,
            key,
            {"order": key},
            provider="razorpay",
            provider_options=CONTACT,
        )

    def payments_of(self, job_id: str) -> list[dict[str, Any]]:
        return [
            p
            for p in self.sim.razorpay_payments()
            if (p.get("notes") or {}).get("orchestrator_job_id") == job_id
        ]

    def orders_of(self, job_id: str) -> list[dict[str, Any]]:
        return [
            o
            for o in self.sim.razorpay_orders()
            if (o.get("notes") or {}).get("orchestrator_job_id") == job_id
        ]


def _razorpay_env(monkeypatch: pytest.MonkeyPatch, sim: Simulator) -> None:
    monkeypatch.setenv("RAZORPAY_KEY_ID", KEY_ID)
    monkeypatch.setenv("RAZORPAY_KEY_SECRET", KEY_SECRET)
    monkeypatch.setenv("RAZORPAY_API_BASE", sim.razorpay_url)
    monkeypatch.setenv("RAZORPAY_WEBHOOK_SECRET", WEBHOOK_SECRET)


@pytest.fixture
def rz(orch: Any, rz_sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rz]:
    """An orchestrator with Razorpay configured against this module's simulator, installed
    as the worker's runtime for the test."""
    rz_sim.reset()
    rz_sim.set_receipt_mode("reject")
    _razorpay_env(monkeypatch, rz_sim)
    rz_orch = orchestrator_like(orch, rz_sim.url)
    runtime.install(rz_orch)
    try:
        yield Rz(rz_orch, rz_sim)
    finally:
        runtime.install(orch)
        rz_sim.set_razorpay_webhook(None)


def _settled(o: Orchestrator, job_id: str, timeout_s: float = 30.0) -> Any:
    wait_until(lambda: o.job(job_id).state in TERMINAL, timeout_s=timeout_s)
    return o.job(job_id)


# -- charges ---------------------------------------------------------------------------------


def test_a_charge_succeeds_with_one_captured_payment_on_one_order(rz: Rz, worker: Any) -> None:
    job = rz.charge("rz-ok-1")
    done = _settled(rz.orch, job.id)
    assert done.state is JobState.SUCCEEDED
    orders, payments = rz.orders_of(job.id), rz.payments_of(job.id)
    assert len(orders) == 1 and len(payments) == 1
    assert orders[0]["receipt"] == receipt_for(job.id, 0)
    assert orders[0]["status"] == "paid"
    assert payments[0]["status"] == "captured"
    assert done.provider_ref == payments[0]["id"]
    assert payments[0]["order_id"] == orders[0]["id"]
    assert payments[0]["token_id"] == "token_success"
    assert payments[0]["customer_id"] == CUSTOMER
    assert payments[0]["email"] == CONTACT["email"]
    assert orders[0]["notes"]["order"] == "rz-ok-1"  # the job's metadata rides along


def test_a_failed_token_fails_the_job(rz: Rz, worker: Any) -> None:
    job = rz.charge("rz-fail-1", token="token_fail_insufficient_funds")
    done = _settled(rz.orch, job.id)
    assert done.state is JobState.FAILED
    assert done.last_error_code == "insufficient_funds"
    (payment,) = rz.payments_of(job.id)
    assert payment["status"] == "failed"
    assert done.provider_ref == payment["id"]
    assert len(rz.orch.attempts(job.id)) == 1  # a decline is final: no retry


def test_a_pending_debit_stays_processing_then_settles_by_polling(rz: Rz, worker: Any) -> None:
    job = rz.charge("rz-pending-1", token="token_pending")
    wait_until(lambda: rz.orch.job(job.id).state is JobState.PROCESSING, timeout_s=15)
    processing = rz.orch.job(job.id)
    assert processing.provider_status == "created"
    (payment,) = rz.payments_of(job.id)
    assert processing.provider_ref == payment["id"]
    rz.sim.advance_clock(5)  # the bank's file-based debit goes through
    done = _settled(rz.orch, job.id)
    assert done.state is JobState.SUCCEEDED
    assert done.provider_ref == payment["id"]
    assert [p["status"] for p in rz.payments_of(job.id)] == ["captured"]
    assert len(rz.orch.attempts(job.id)) == 1  # settled by lookups, not by new attempts


def test_a_pending_debit_that_fails_fails_the_job(rz: Rz, worker: Any) -> None:
    job = rz.charge("rz-pending-fail-1", token="token_pending_fail")
    wait_until(lambda: rz.orch.job(job.id).state is JobState.PROCESSING, timeout_s=15)
    rz.sim.advance_clock(5)
    done = _settled(rz.orch, job.id)
    assert done.state is JobState.FAILED
    assert [p["status"] for p in rz.payments_of(job.id)] == ["failed"]


def test_charge_options_are_checked_before_anything_is_written(rz: Rz) -> None:
    with pytest.raises(ValueError, match="return_url"):
        rz.orch.charge(
            100,
            "INR",
            CUSTOMER,
            "token_success",
            "rz-opt-1",
            provider="razorpay",
            provider_options={**CONTACT, "return_url": "https://example.com"},
        )
    with pytest.raises(ValueError, match="customer"):
        rz.orch.charge(
            100, "INR", None, "token_success", "rz-opt-2", provider="razorpay",
            provider_options=CONTACT,
        )  # fmt: skip
    with pytest.raises(ValueError, match="email"):
        rz.orch.charge(100, "INR", CUSTOMER, "token_success", "rz-opt-3", provider="razorpay")


# -- receipts: both documented answers to a reused receipt -----------------------------------


@pytest.mark.parametrize("mode", ["reject", "return_existing"])
@pytest.mark.parametrize("already_paid", [False, True], ids=["unpaid", "paid"])
def test_a_reused_receipt_leads_to_the_existing_order(
    rz: Rz, monkeypatch: pytest.MonkeyPatch, mode: str, already_paid: bool
) -> None:
    """An earlier attempt made the order (and, when ``already_paid``, its payment), but the
    first listing by receipt misses it, as a lagging read would: creating it again is refused
    ("Order receipt should be unique.") or answered with that order, per the simulator's
    receipt mode. Either way the existing order is used: paid, its payment is the answer;
    unpaid, it is paid once."""
    rz.sim.set_receipt_mode(mode)
    job = rz.charge(f"rz-receipt-{mode}-{already_paid}")
    provider = rz.orch.executor().providers["razorpay"]
    assert isinstance(provider, RazorpayProvider)
    client = provider._client
    order = client.order.create(
        {"amount": 50000, "currency": "INR", "receipt": receipt_for(job.id, 0)}
    )
    if already_paid:
        client.payment.createRecurring(
            {**CONTACT, "amount": 50000, "currency": "INR", "order_id": order["id"],
             "customer_id": CUSTOMER, "token": "token_success", "recurring": True}
        )  # fmt: skip
    real = provider._order_by_receipt
    calls: list[str] = []

    def lagging(receipt: str) -> Any:
        calls.append(receipt)
        return None if len(calls) == 1 else real(receipt)

    monkeypatch.setattr(provider, "_order_by_receipt", lagging)
    assert rz.orch.executor().run(job.id) is JobState.SUCCEEDED
    orders = [o for o in rz.sim.razorpay_orders() if o["receipt"] == receipt_for(job.id, 0)]
    assert [o["id"] for o in orders] == [order["id"]]
    payments = [p for p in rz.sim.razorpay_payments() if p["order_id"] == order["id"]]
    assert [p["status"] for p in payments] == ["captured"]
    assert rz.orch.job(job.id).provider_ref == payments[0]["id"]
    creates = [
        r for r in rz.sim.requests_log() if r["path"] == "/v1/orders" and r["method"] == "POST"
    ]
    assert len(creates) == 2  # ours above, and the job's refused or answered one


# -- refunds ---------------------------------------------------------------------------------


def test_refunds_partial_then_full_never_exceed_the_payment(rz: Rz, worker: Any) -> None:
    charge = rz.charge("rz-refund-charge")
    assert _settled(rz.orch, charge.id).state is JobState.SUCCEEDED
    partial = rz.orch.refund(charge.id, 20000, idempotency_key="rz-refund-1")
    rest = rz.orch.refund(charge.id, idempotency_key="rz-refund-2")
    assert rest.amount == 30000
    with pytest.raises(InvalidOperation):
        rz.orch.refund(charge.id, 100, idempotency_key="rz-refund-3")
    wait_until(
        lambda: {rz.orch.job(j.id).state for j in (partial, rest)} == {JobState.PROCESSING},
        timeout_s=15,
    )
    rz.sim.advance_clock(5)  # normal-speed refunds are processed later
    for job in (partial, rest):
        done = _settled(rz.orch, job.id)
        assert done.state is JobState.SUCCEEDED
        assert done.provider_ref and done.provider_ref.startswith("rfnd_")
    refunds = [r for r in rz.sim.razorpay_refunds() if r["payment_id"] == charge_ref(rz, charge)]
    assert sorted(r["amount"] for r in refunds) == [20000, 30000]
    assert all(r["status"] == "processed" for r in refunds)
    assert {r["notes"]["orchestrator_job_id"] for r in refunds} == {partial.id, rest.id}
    (payment,) = rz.payments_of(charge.id)
    assert payment["amount_refunded"] == payment["amount"] == 50000
    keys = {r["idempotency_key"] for r in rz.sim.requests_log() if r["path"].endswith("/refund")}
    assert len(keys) == 2 and all(k and k.startswith("rf-") for k in keys)


def charge_ref(rz: Rz, charge: Any) -> str:
    ref = rz.orch.job(charge.id).provider_ref
    assert ref is not None
    return ref


def test_a_refund_cut_after_executing_is_made_once(rz: Rz) -> None:
    """The refund's answer is lost after Razorpay made it (the job goes unknown); resolving
    it finds that refund (by the job id in its notes) instead of making another."""
    charge = rz.charge("rz-refund-cut-charge")
    executor = rz.orch.executor()
    assert executor.run(charge.id) is JobState.SUCCEEDED
    refund = rz.orch.refund(charge.id, idempotency_key="rz-refund-cut")
    rz.sim.set_faults("razorpay", rate_cut_after_execute=1.0)
    assert executor.run(refund.id) is JobState.UNKNOWN
    rz.sim.set_faults("razorpay")
    assert executor.run(refund.id) is JobState.PROCESSING  # found pending, not made again
    rz.sim.advance_clock(5)
    wait_until(lambda: executor.run(refund.id) is JobState.SUCCEEDED, timeout_s=10)
    refunds = [r for r in rz.sim.razorpay_refunds() if r["payment_id"] == charge_ref(rz, charge)]
    assert len(refunds) == 1 and refunds[0]["amount"] == 50000
    assert rz.orch.job(refund.id).provider_ref == refunds[0]["id"]


def test_a_refund_resent_with_its_key_gets_the_same_refund(rz: Rz) -> None:
    """A 500 after Razorpay made the refund: the resend carries the same
    X-Refund-Idempotency key (and body) and is answered with that refund."""
    charge = rz.charge("rz-refund-500-charge")
    executor = rz.orch.executor()
    assert executor.run(charge.id) is JobState.SUCCEEDED
    refund = rz.orch.refund(charge.id, 10000, idempotency_key="rz-refund-500")
    job = rz.orch.job(refund.id)
    provider = executor.providers["razorpay"]
    rz.sim.set_faults("razorpay", rate_500_after_execute=1.0)
    first = provider.execute(job, "orch-refund-500-g0")
    rz.sim.set_faults("razorpay")
    second = provider.execute(job, "orch-refund-500-g0")
    assert first.kind.value == "ambiguous" and first.http_status == 500
    assert second.kind.value == "pending"
    refunds = [r for r in rz.sim.razorpay_refunds() if r["payment_id"] == charge_ref(rz, charge)]
    assert [r["id"] for r in refunds] == [second.provider_ref]
    keys = [r["idempotency_key"] for r in rz.sim.requests_log() if r["path"].endswith("/refund")]
    assert len(keys) == 2 and keys[0] == keys[1]


# -- webhooks --------------------------------------------------------------------------------


def _event(event_type: str, **entities: dict[str, Any]) -> bytes:
    payload = {name: {"entity": entity} for name, entity in entities.items()}
    body = {"entity": "event", "event": event_type, "contains": list(entities)}
    return json.dumps({**body, "payload": payload, "created_at": int(time.time())}).encode()


def _post(url: str, body: bytes, signature: str | None, event_id: str | None) -> Any:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["X-Razorpay-Signature"] = signature
    if event_id is not None:
        headers["x-razorpay-event-id"] = event_id
    return requests.post(f"{url}/webhooks/razorpay", data=body, headers=headers, timeout=10)


def test_a_signed_delivery_settles_a_processing_job(
    orch: Any, rz: Rz, worker: Any, rz_sim: Simulator
) -> None:
    """Polling is made too slow to matter: the simulator's signed payment.captured and
    order.paid deliveries settle the job."""
    patient = orchestrator_like(orch, rz_sim.url, processing_poll_s=3600)
    runtime.install(patient)
    with serve(create_app(patient)) as url:
        rz_sim.set_razorpay_webhook(f"{url}/webhooks/razorpay", WEBHOOK_SECRET)
        job = Rz(patient, rz_sim).charge("rz-webhook-1", token="token_pending")
        wait_until(lambda: patient.job(job.id).state is JobState.PROCESSING, timeout_s=15)
        rz_sim.advance_clock(5)
        done = _settled(patient, job.id)
    assert done.state is JobState.SUCCEEDED
    assert any(t.changed_by.startswith("webhook:") for t in patient.transitions(job.id))
    events = list_events(patient, limit=100)
    assert {e.type for e in events} >= {"payment.captured", "order.paid"}
    assert all(e.provider == "razorpay" for e in events)


def test_a_forged_delivery_is_refused_and_stores_nothing(rz: Rz) -> None:
    body = _event("payment.captured", payment={"id": "pay_forged", "status": "captured"})
    with serve(create_app(rz.orch)) as url:
        forged = _post(url, body, signature_of(body, "whsec_attacker"), "evt_forged1")
        unsigned = _post(url, body, None, "evt_forged2")
        no_id = _post(url, body, signature_of(body, WEBHOOK_SECRET), None)
    assert forged.status_code == 401
    assert unsigned.status_code == 400
    assert no_id.status_code == 400
    assert list_events(rz.orch, limit=100) == []


def test_a_redelivered_event_id_is_a_duplicate(rz: Rz) -> None:
    payment = {"id": "pay_dup", "status": "captured", "amount": 100, "currency": "INR"}
    body = _event("payment.captured", payment={**payment, "notes": []})
    signature = signature_of(body, WEBHOOK_SECRET)
    with serve(create_app(rz.orch)) as url:
        first = _post(url, body, signature, "evt_dup0000001")
        again = _post(url, body, signature, "evt_dup0000001")
    assert first.status_code == again.status_code == 200
    assert first.json()["duplicate"] is False
    assert again.json()["duplicate"] is True
    assert [e.event_id for e in list_events(rz.orch, limit=100)] == ["evt_dup0000001"]


# -- acceptance: retries under faults never charge twice -------------------------------------

CHARGES = 300
# Of every Razorpay request (reads included): 15 % connections cut after executing, 10 % 5xx
# (JSON 500s before and after executing, an HTML 502 before and an HTML 504 after).
FAULTS: dict[str, float | bool] = {
    "rate_cut_after_execute": 0.15,
    "rate_500": 0.03,
    "rate_500_after_execute": 0.03,
    "rate_html_502": 0.02,
    "rate_html_504_after_execute": 0.02,
}


def _run_clock(o: Orchestrator, stop: threading.Event) -> None:
    clock = Clock(o)
    while not stop.wait(0.5):
        clock.run_once()


def test_300_charges_under_cuts_and_5xx_are_each_captured_exactly_once(
    orch: Any, rz_sim: Simulator, worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    rz_sim.reset()
    _razorpay_env(monkeypatch, rz_sim)
    tolerant = orchestrator_like(
        orch,
        rz_sim.url,
        max_attempts=30,
        # The faults are the point: the breaker must not park the whole run.
        breaker_failure_threshold=1000,
        breaker_window_calls=1000,
        breaker_min_calls=1000,
    )
    runtime.install(tolerant)
    rz = Rz(tolerant, rz_sim)
    stop = threading.Event()
    # The clock dispatches what is due beyond the broker's delay window (a lookup that could
    # not reach Razorpay is tried again after 5 s), as it does in production.
    clock = threading.Thread(target=_run_clock, args=(tolerant, stop), daemon=True)
    clock.start()
    try:
        rz_sim.set_faults("razorpay", **FAULTS)
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=8) as pool:
            jobs = list(
                pool.map(lambda i: rz.charge(f"rz-accept-{i}", amount=100 + i), range(CHARGES))
            )
        wait_until(lambda: all(tolerant.job(j.id).state in TERMINAL for j in jobs), timeout_s=200)
        elapsed = time.monotonic() - started
        rz_sim.set_faults("razorpay")
    finally:
        stop.set()
        clock.join(timeout=10)
        runtime.install(orch)
    faults = collections.Counter(r["fault"] for r in rz_sim.requests_log() if r["fault"])
    payments = rz_sim.razorpay_payments()
    captured = collections.Counter(
        (p.get("notes") or {}).get("orchestrator_job_id")
        for p in payments
        if p["status"] == "captured"
    )
    states = collections.Counter(str(tolerant.job(j.id).state) for j in jobs)
    orders = collections.Counter(
        (o.get("notes") or {}).get("orchestrator_job_id") for o in rz_sim.razorpay_orders()
    )
    print(  # the report's numbers (pytest -s)
        f"\nrazorpay acceptance: {CHARGES} charges in {elapsed:.1f}s; faults {dict(faults)}; "
        f"{len(rz_sim.requests_log())} requests; states {dict(states)}; "
        f"captured per job {collections.Counter(captured.values())}; "
        f"orders per job {collections.Counter(orders.values())}; "
        f"payment statuses {dict(collections.Counter(p['status'] for p in payments))}; "
        f"attempts {sum(len(tolerant.attempts(j.id)) for j in jobs)}"
    )
    assert faults["rate_cut_after_execute"] > 0 and faults["rate_500"] > 0
    assert states == {"succeeded": CHARGES}
    for job in jobs:
        done = tolerant.job(job.id)
        assert captured[job.id] == 1, f"job {job.id}: {captured[job.id]} captured payments"
        (mine,) = [
            p for p in payments if p["status"] == "captured" and p["id"] == done.provider_ref
        ]
        assert (mine.get("notes") or {}).get("orchestrator_job_id") == job.id
        assert mine["amount"] == job.amount
    assert sum(captured.values()) == CHARGES
