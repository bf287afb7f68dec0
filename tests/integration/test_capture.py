"""Authorize now, capture later: charge(..., capture=False), orch.capture() and its SQL guards,
end to end against real PostgreSQL, Redis, the stripe SDK and the simulator over HTTP."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import stripe

from orchestrator import InvalidOperation, JobState
from orchestrator.executor import provider_key
from orchestrator.models import JobKind
from tests.conftest import STRIPE_TEST_KEY, cli_main

WEEK_S = 7 * 24 * 3600


def _authorized(orch: Any, key: str, amount: int = 1000) -> Any:
    job = orch.charge(amount, "usd", "cus_test", "pm_card_visa", key, capture=False)
    assert orch.executor().run(job.id) is JobState.SUCCEEDED
    return orch.job(job.id)


def _intent(simulator: Any, pi_id: str) -> dict[str, Any]:
    (pi,) = [p for p in simulator.payment_intents() if p["id"] == pi_id]
    return dict(pi)


def _settle(orch: Any, job_id: str, timeout_s: float = 10.0) -> Any:
    """Run (and resolve) the job until it settles."""
    executor = orch.executor()
    deadline = time.monotonic() + timeout_s
    while not orch.job(job_id).state.is_terminal and time.monotonic() < deadline:
        executor.run(job_id)
        time.sleep(0.05)
    return orch.job(job_id)


def test_authorize_then_partial_capture(orch: Any, simulator: Any) -> None:
    """capture=False leaves the PaymentIntent requires_capture and the job succeeded but not
    captured, with Stripe's deadline; a partial capture is a job of its own with its own key,
    Stripe releases the rest, and refunds are then limited to what was captured."""
    charge = _authorized(orch, "auth-1")
    assert charge.params["capture_method"] == "manual"
    assert (charge.captured, charge.captured_amount, charge.capture_reserved) == (False, 0, 0)
    assert charge.provider_status == "requires_capture"
    pi = _intent(simulator, charge.provider_ref)
    assert pi["status"] == "requires_capture" and pi["amount_capturable"] == 1000
    expected = datetime.fromtimestamp(pi["created"] + WEEK_S, UTC)
    assert charge.capture_before == expected
    assert charge.provider_details == {
        "capture_before": pi["created"] + WEEK_S,
        "amount_capturable": 1000,
    }
    with pytest.raises(InvalidOperation, match="not captured"):
        orch.refund(charge.id, idempotency_key="refund-too-early")

    capture = orch.capture(charge.id, 600, idempotency_key="capture-1")
    assert (capture.kind, capture.parent_job_id, capture.amount) == (
        JobKind.CAPTURE,
        charge.id,
        600,
    )
    assert orch.job(charge.id).capture_reserved == 600
    assert orch.capture(charge.id, 600, idempotency_key="capture-1").id == capture.id
    assert orch.executor().run(capture.id) is JobState.SUCCEEDED
    done = orch.job(capture.id)
    assert done.provider_ref == charge.provider_ref and done.provider_status == "succeeded"
    (attempt,) = orch.attempts(capture.id)
    assert attempt.provider_key == provider_key(done) == f"orch-{capture.id}-g0"
    captures = [r for r in simulator.requests_log() if r["path"].endswith("/capture")]
    assert [r["idempotency_key"] for r in captures] == [f"orch-{capture.id}-g0"]

    charge = orch.job(charge.id)
    assert charge.captured and charge.captured_amount == 600
    assert charge.state is JobState.SUCCEEDED and charge.provider_status == "succeeded"
    pi = _intent(simulator, charge.provider_ref)
    assert (pi["status"], pi["amount_received"], pi["amount_capturable"]) == ("succeeded", 600, 0)

    with pytest.raises(InvalidOperation, match="exceeds what remains"):
        orch.refund(charge.id, 601, idempotency_key="refund-over-captured")
    refund = orch.refund(charge.id, idempotency_key="refund-rest")
    assert refund.amount == 600
    assert orch.executor().run(refund.id) is JobState.SUCCEEDED
    assert [r["amount"] for r in simulator.refunds()] == [600]
    with pytest.raises(InvalidOperation, match="already has a capture"):
        orch.capture(charge.id, 100, idempotency_key="capture-2")


def test_concurrent_captures_make_one(orch: Any, simulator: Any) -> None:
    """Ten concurrent captures of one authorization: exactly one is accepted and captured at
    Stripe once; an over-capture is refused before anything is written."""
    charge = _authorized(orch, "auth-race")
    with pytest.raises(InvalidOperation, match="exceeds the authorized amount"):
        orch.capture(charge.id, 1001, idempotency_key="capture-over")
    barrier = threading.Barrier(10)

    def attempt(i: int) -> Any:
        barrier.wait()
        try:
            return orch.capture(charge.id, 500 + i, idempotency_key=f"capture-race-{i}")
        except InvalidOperation as exc:
            return exc

    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(attempt, range(10)))
    accepted = [r for r in results if not isinstance(r, InvalidOperation)]
    assert len(accepted) == 1
    (job,) = accepted
    assert orch.job(charge.id).capture_reserved == job.amount
    assert orch.executor().run(job.id) is JobState.SUCCEEDED
    assert _intent(simulator, charge.provider_ref)["amount_received"] == job.amount
    assert len(orch.store.list_jobs(kind="capture")) == 1


def test_the_database_refuses_over_and_double_capture(orch: Any) -> None:
    """Whatever code runs: a reservation over the authorized amount, a refund reservation over
    the captured amount and a second live capture are refused by the schema itself."""
    charge = _authorized(orch, "auth-check")
    capture = orch.capture(charge.id, 400, idempotency_key="capture-check")
    with psycopg.connect(orch.settings.database_url) as conn:
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("UPDATE jobs SET capture_reserved = 1001 WHERE id = %s", (charge.id,))
        conn.rollback()
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(
                "INSERT INTO jobs (kind, provider, idempotency_key, fingerprint, amount, "
                "parent_job_id, max_attempts, deadline_at, changed_by, change_reason) "
                "SELECT kind, provider, 'twin', fingerprint, amount, parent_job_id, "
                "max_attempts, deadline_at, changed_by, change_reason FROM jobs WHERE id = %s",
                (capture.id,),
            )
        conn.rollback()
        assert orch.executor().run(capture.id) is JobState.SUCCEEDED
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("UPDATE jobs SET refunded_amount = 401 WHERE id = %s", (charge.id,))


def test_capture_past_the_deadline_is_refused(orch: Any) -> None:
    """Past capture_before the capture is refused (InvalidOperation), by the check and by the
    reservation's SQL guard alike; nothing is written."""
    charge = _authorized(orch, "auth-late")
    with psycopg.connect(orch.settings.database_url) as conn:
        conn.execute(
            "UPDATE jobs SET capture_before = now() - interval '1 second' WHERE id = %s",
            (charge.id,),
        )
    with pytest.raises(InvalidOperation, match="authorization expired"):
        orch.capture(charge.id, idempotency_key="capture-late")
    with orch.store.connection() as conn:
        assert orch.store.reserve_capture(conn, charge.id, 100) is None
    assert orch.store.list_jobs(kind="capture") == []
    assert orch.job(charge.id).capture_reserved == 0


def test_a_failed_capture_gives_its_reservation_back(orch: Any, simulator: Any) -> None:
    """A capture Stripe refuses (the intent was canceled elsewhere) ends failed, and the
    charge's reservation is released in the same transaction."""
    charge = _authorized(orch, "auth-elsewhere")
    client = stripe.StripeClient(STRIPE_TEST_KEY, base_addresses={"api": simulator.url})
    client.v1.payment_intents.cancel(charge.provider_ref)
    job = orch.capture(charge.id, idempotency_key="capture-refused")
    assert orch.job(charge.id).capture_reserved == 1000
    assert orch.executor().run(job.id) is JobState.FAILED
    assert orch.job(job.id).last_error_code == "payment_intent_unexpected_state"
    assert orch.job(charge.id).capture_reserved == 0


@pytest.mark.parametrize("fault", ["rate_cut_after_execute", "rate_500_after_execute"])
def test_ambiguous_capture_settles_by_lookup(orch: Any, simulator: Any, fault: str) -> None:
    """A capture that executed but answered nothing (cut) or a saved 500 becomes unknown and
    settles succeeded with one capture at Stripe: the lookup retrieves the PaymentIntent and
    judges it by its status and amount_received."""
    charge = _authorized(orch, f"auth-{fault}")
    job = orch.capture(charge.id, 700, idempotency_key=f"capture-{fault}")
    simulator.set_faults("stripe", **{fault: 1.0})
    assert orch.executor().run(job.id) is JobState.UNKNOWN
    simulator.set_faults("stripe")
    done = _settle(orch, job.id)
    assert done.state is JobState.SUCCEEDED
    pi = _intent(simulator, charge.provider_ref)
    assert (pi["status"], pi["amount_received"]) == ("succeeded", 700)
    assert orch.job(charge.id).captured_amount == 700


def test_capture_flag_and_capture_method_agree(orch: Any) -> None:
    """capture=False is capture_method="manual" (the same request, so the same job for the same
    key); contradictions are ValidationErrors; an automatic charge has nothing to capture."""
    a = orch.charge(1000, "usd", None, "pm_card_visa", "flag-1", capture=False)
    b = orch.charge(1000, "usd", None, "pm_card_visa", "flag-1", capture_method="manual")
    assert a.id == b.id
    for kwargs in (
        {"capture": False, "capture_method": "automatic"},
        {"capture": True, "capture_method": "manual"},
        {"capture": "no"},
    ):
        with pytest.raises(ValueError, match="capture"):
            orch.charge(1000, "usd", None, "pm_card_visa", "flag-2", **kwargs)
    auto = orch.charge(1000, "usd", None, "pm_card_visa", "flag-3", capture=True)
    assert orch.executor().run(auto.id) is JobState.SUCCEEDED
    assert orch.job(auto.id).captured and orch.job(auto.id).captured_amount is None
    with pytest.raises(InvalidOperation, match="nothing to capture"):
        orch.capture(auto.id, idempotency_key="capture-auto")
    with pytest.raises(InvalidOperation, match="is pending"):
        orch.capture(a.id, idempotency_key="capture-pending")


def test_jobs_show_prints_the_capture_deadline(
    orch: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """`orchestrator jobs show` says an authorization waits for its capture, and until when."""
    charge = _authorized(orch, "auth-show")
    main = cli_main(orch, monkeypatch)
    assert main(["jobs", "show", charge.id]) == 0
    out = capsys.readouterr().out
    assert f"capture before {charge.capture_before:%Y-%m-%d %H:%M:%S}" in out
    assert main(["jobs", "show", charge.id, "--json"]) == 0
    assert '"captured": false' in capsys.readouterr().out


def test_simulator_models_stripe_capture(simulator: Any) -> None:
    """As Stripe documents: a partial capture releases the rest, a canceled intent cannot be
    captured nor a succeeded one canceled, and an authorization not captured within 7 days is
    canceled by Stripe (cancellation_reason automatic)."""
    simulator.reset()
    client = stripe.StripeClient(STRIPE_TEST_KEY, base_addresses={"api": simulator.url})
    params: Any = {
        "amount": 1000,
        "currency": "usd",
        "payment_method": "pm_card_visa",
        "confirm": True,
        "off_session": True,
        "capture_method": "manual",
        "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"},
    }
    held = client.v1.payment_intents.create(params)
    captured = client.v1.payment_intents.capture(held.id, {"amount_to_capture": 250})
    assert (captured.status, captured.amount_received, captured.amount_capturable) == (
        "succeeded",
        250,
        0,
    )
    with pytest.raises(stripe.InvalidRequestError) as cancel_captured:
        client.v1.payment_intents.cancel(held.id)
    assert cancel_captured.value.code == "payment_intent_unexpected_state"
    voided = client.v1.payment_intents.cancel(client.v1.payment_intents.create(params).id)
    with pytest.raises(stripe.InvalidRequestError) as capture_canceled:
        client.v1.payment_intents.capture(voided.id)
    assert capture_canceled.value.code == "payment_intent_unexpected_state"
    old = client.v1.payment_intents.create(params)
    simulator.advance_clock(WEEK_S - 60)
    assert client.v1.payment_intents.retrieve(old.id).status == "requires_capture"
    simulator.advance_clock(120)
    expired = client.v1.payment_intents.retrieve(old.id)
    assert (expired.status, expired.cancellation_reason) == ("canceled", "automatic")
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.payment_intents.capture(old.id)
    assert expired.canceled_at is not None
    assert timedelta(seconds=expired.canceled_at - old.created) == timedelta(days=7)
