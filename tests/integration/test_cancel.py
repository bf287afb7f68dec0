"""orch.cancel(): compare-and-set out of pending/retrying, voids of authorizations through
their own jobs, and conn= for cancel, capture and refund, against real PostgreSQL, Redis, the
stripe SDK and the simulator over HTTP."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest

from orchestrator import InvalidOperation, JobNotFound, JobState
from orchestrator.executor import SAME_KEY_RESEND, provider_key
from orchestrator.models import JobKind


def _authorized(orch: Any, key: str, amount: int = 1000) -> Any:
    job = orch.charge(amount, "usd", "cus_test", "pm_card_visa", key, capture=False)
    assert orch.executor().run(job.id) is JobState.SUCCEEDED
    return orch.job(job.id)


def _intent(simulator: Any, pi_id: str) -> dict[str, Any]:
    (pi,) = [p for p in simulator.payment_intents() if p["id"] == pi_id]
    return dict(pi)


def test_cancel_a_pending_charge(orch: Any, simulator: Any) -> None:
    """pending -> cancelled in one compare-and-set, recorded with the reason; the worker then
    leaves it alone and Stripe never hears of it."""
    job = orch.charge(1000, "usd", None, "pm_card_visa", "cancel-pending")
    cancelled = orch.cancel(job.id, reason="customer changed their mind")
    assert cancelled.id == job.id and cancelled.state is JobState.CANCELLED
    last = orch.transitions(job.id)[-1]
    assert (last.from_state, last.to_state) == ("pending", "cancelled")
    assert last.reason == "cancelled: customer changed their mind" and last.changed_by == "api"
    assert orch.executor().run(job.id) is None
    assert simulator.payment_intents() == []
    with pytest.raises(InvalidOperation, match="is cancelled: a final state"):
        orch.cancel(job.id, reason="again")
    with pytest.raises(JobNotFound):
        orch.cancel("00000000-0000-0000-0000-000000000000", reason="none")
    with pytest.raises(ValueError):
        orch.cancel(job.id, reason="")


def test_a_running_or_final_job_is_not_cancelled(orch: Any) -> None:
    """A claimed job is not cancelled under its running call; final states are refused."""
    job = orch.charge(1000, "usd", None, "pm_card_visa", "cancel-running")
    assert orch.store.claim(job.id, "worker:test", 30.0) is not None
    with pytest.raises(InvalidOperation, match=r"is running: .*not cancelled under a running"):
        orch.cancel(job.id, reason="too late")
    assert orch.job(job.id).state is JobState.RUNNING
    done = orch.charge(1000, "usd", None, "pm_card_visa", "cancel-done")
    assert orch.executor().run(done.id) is JobState.SUCCEEDED
    with pytest.raises(InvalidOperation, match="captured, refund it instead"):
        orch.cancel(done.id, reason="too late")
    declined = orch.charge(1000, "usd", None, "pm_card_chargeDeclined", "cancel-declined")
    assert orch.executor().run(declined.id) is JobState.FAILED
    with pytest.raises(InvalidOperation, match="is failed: a final state"):
        orch.cancel(declined.id, reason="too late")


def test_retrying_after_no_response_is_not_cancelled(orch: Any, simulator: Any) -> None:
    """A job retrying with the same key after an attempt that may have executed is refused:
    Stripe may hold its charge. Once it has run again it settles as usual."""
    job = orch.charge(1000, "usd", None, "pm_card_visa", "cancel-ambiguous")
    executor = orch.executor()
    simulator.set_faults("stripe", rate_cut_after_execute=1.0)
    assert executor.run(job.id) is JobState.UNKNOWN
    # The search (a customerless charge's only lookup) does not see the intent yet.
    simulator.set_faults("stripe", search_lag_s=3600)
    assert executor.run(job.id) is JobState.RETRYING
    assert orch.job(job.id).change_reason == SAME_KEY_RESEND
    with pytest.raises(InvalidOperation, match="may already hold the result"):
        orch.cancel(job.id, reason="nope")
    simulator.set_faults("stripe")
    deadline = time.monotonic() + 10
    while orch.job(job.id).state is not JobState.SUCCEEDED and time.monotonic() < deadline:
        executor.run(job.id)
        time.sleep(0.05)
    assert orch.job(job.id).state is JobState.SUCCEEDED
    assert len(simulator.payment_intents()) == 1


def test_cancel_a_pending_refund_gives_its_reservation_back(orch: Any) -> None:
    charge = orch.charge(1000, "usd", None, "pm_card_visa", "cancel-refund-charge")
    assert orch.executor().run(charge.id) is JobState.SUCCEEDED
    refund = orch.refund(charge.id, 300, idempotency_key="cancel-refund")
    assert orch.job(charge.id).refunded_amount == 300
    assert orch.cancel(refund.id, reason="wrong amount").state is JobState.CANCELLED
    assert orch.job(charge.id).refunded_amount == 0


def test_cancel_an_authorization_voids_it_through_a_job(orch: Any, simulator: Any) -> None:
    """cancel() of an uncaptured authorization makes a void job (returned again while it is
    live) that cancels the PaymentIntent with its own key; its success moves the charge
    succeeded -> cancelled. A capture is refused from then on."""
    charge = _authorized(orch, "void-1")
    void = orch.cancel(charge.id, reason="requested_by_customer")
    assert (void.kind, void.parent_job_id, void.state) == (JobKind.VOID, charge.id, "pending")
    assert orch.cancel(charge.id, reason="requested_by_customer").id == void.id
    with pytest.raises(InvalidOperation, match="cannot be captured now"):
        orch.capture(charge.id, idempotency_key="capture-after-void")
    assert orch.executor().run(void.id) is JobState.SUCCEEDED
    (attempt,) = orch.attempts(void.id)
    assert attempt.provider_key == provider_key(orch.job(void.id)) == f"orch-{void.id}-g0"
    pi = _intent(simulator, charge.provider_ref)
    assert (pi["status"], pi["cancellation_reason"]) == ("canceled", "requested_by_customer")
    charge = orch.job(charge.id)
    assert charge.state is JobState.CANCELLED and charge.provider_status == "canceled"
    assert not charge.captured
    last = orch.transitions(charge.id)[-1]
    assert (last.from_state, last.to_state) == ("succeeded", "cancelled")
    assert f"voided by job {void.id}" in last.reason
    with pytest.raises(InvalidOperation, match="is cancelled"):
        orch.cancel(charge.id, reason="again")
    with pytest.raises(InvalidOperation, match="is cancelled"):
        orch.capture(charge.id, idempotency_key="capture-after-void-2")


def test_a_captured_authorization_cannot_be_voided(orch: Any) -> None:
    """A capture in flight or done refuses the void; the database refuses succeeded ->
    cancelled for a captured charge whatever code runs."""
    charge = _authorized(orch, "void-captured")
    capture = orch.capture(charge.id, idempotency_key="void-captured-capture")
    with pytest.raises(InvalidOperation, match="being captured cannot be voided"):
        orch.cancel(charge.id, reason="too late")
    assert orch.executor().run(capture.id) is JobState.SUCCEEDED
    with pytest.raises(InvalidOperation, match="refund it instead"):
        orch.cancel(charge.id, reason="too late")
    with (
        psycopg.connect(orch.settings.database_url) as conn,
        pytest.raises(psycopg.errors.CheckViolation, match="uncaptured authorization"),
    ):
        conn.execute("UPDATE jobs SET state = 'cancelled' WHERE id = %s", (charge.id,))


@pytest.mark.parametrize("fault", ["rate_cut_after_execute", "rate_500_after_execute"])
def test_ambiguous_void_settles_by_lookup(orch: Any, simulator: Any, fault: str) -> None:
    charge = _authorized(orch, f"void-{fault}")
    void = orch.cancel(charge.id, reason="abandoned")
    simulator.set_faults("stripe", **{fault: 1.0})
    assert orch.executor().run(void.id) is JobState.UNKNOWN
    simulator.set_faults("stripe")
    deadline = time.monotonic() + 10
    while not orch.job(void.id).state.is_terminal and time.monotonic() < deadline:
        orch.executor().run(void.id)
        time.sleep(0.05)
    assert orch.job(void.id).state is JobState.SUCCEEDED
    assert orch.job(charge.id).state is JobState.CANCELLED
    assert _intent(simulator, charge.provider_ref)["status"] == "canceled"


def test_conn_keeps_cancel_capture_and_refund_in_the_callers_transaction(orch: Any) -> None:
    """With conn=, cancel, capture and refund write inside the caller's transaction: rolled
    back, nothing stays (no job, no reservation, no state change); committed, all of it."""
    pending = orch.charge(1000, "usd", None, "pm_card_visa", "conn-pending")
    authorized = _authorized(orch, "conn-auth")
    other = _authorized(orch, "conn-auth-2")
    paid = orch.charge(1000, "usd", None, "pm_card_visa", "conn-paid")
    assert orch.executor().run(paid.id) is JobState.SUCCEEDED
    url = orch.settings.database_url
    with psycopg.connect(url) as conn:
        assert orch.cancel(pending.id, reason="rolled back", conn=conn).state == "cancelled"
        assert orch.capture(authorized.id, 500, idempotency_key="conn-cap", conn=conn).amount == 500
        assert orch.cancel(other.id, reason="rolled back", conn=conn).kind is JobKind.VOID
        assert orch.refund(paid.id, 100, idempotency_key="conn-refund", conn=conn).amount == 100
        conn.rollback()
    assert orch.job(pending.id).state is JobState.PENDING
    assert orch.job(authorized.id).capture_reserved == 0
    assert orch.job(paid.id).refunded_amount == 0
    for kind in ("capture", "void", "refund"):
        assert orch.store.list_jobs(kind=kind) == []
    with psycopg.connect(url) as conn:
        with pytest.raises(InvalidOperation):  # a refused call leaves the transaction usable
            orch.refund(paid.id, 5000, idempotency_key="conn-too-much", conn=conn)
        orch.cancel(pending.id, reason="committed", conn=conn)
        capture = orch.capture(authorized.id, 500, idempotency_key="conn-cap", conn=conn)
        void = orch.cancel(other.id, reason="committed", conn=conn)
        refund = orch.refund(paid.id, 100, idempotency_key="conn-refund", conn=conn)
        conn.commit()
    assert orch.job(pending.id).state is JobState.CANCELLED
    assert orch.job(paid.id).refunded_amount == 100
    for job in (capture, void, refund):
        assert orch.executor().run(job.id) is JobState.SUCCEEDED
    assert orch.job(authorized.id).captured_amount == 500
    assert orch.job(other.id).state is JobState.CANCELLED
