"""Stripe as it documents itself: keys forgotten after 24 h, eventually consistent search,
saved 500s that did and did not execute, cut connections, off-session authentication and
Connect. Real PostgreSQL, Redis, dramatiq worker and stripe SDK, against the simulator."""

from __future__ import annotations

from collections import Counter
from typing import Any

import psycopg
import pytest

from orchestrator import JobState, ValidationError
from tests.conftest import count_jobs, orchestrator_like, wait_until

SEARCH_LAG_S = 900  # 15 minutes: Stripe's search "can be up to an hour behind during outages"


def _backdate(orch: Any, job_ids: list[str], **intervals: str) -> None:
    """Move timestamps of jobs (and their attempts) into the past, as time passing would."""
    with psycopg.connect(orch.settings.database_url, autocommit=True) as conn:
        for column, interval in intervals.items():
            table = "job_attempts" if column == "finished_at" else "jobs"
            key = "job_id" if table == "job_attempts" else "id"
            conn.execute(
                f"UPDATE {table} SET {column} = {column} - %s::interval "
                f"WHERE {key} = ANY(%s::uuid[])",
                (interval, job_ids),
            )


def _posts(simulator: Any, path: str = "/v1/payment_intents") -> list[dict[str, Any]]:
    return [r for r in simulator.requests_log() if r["method"] == "POST" and r["path"] == path]


def test_a_25_hour_backlog_never_resends_an_expired_key(orch: Any, simulator: Any) -> None:
    """Jobs that waited past their retry horizon (workers down for 25 h) are refused at the
    claim: dead with reason retry_horizon, and no request carrying their keys is ever sent,
    so Stripe, which forgets keys 24 h after first use, can never execute them twice."""
    jobs = [orch.charge(1000, "usd", "cus_backlog", "pm_card_visa", f"late-{i}") for i in range(5)]
    ids = [j.id for j in jobs]
    _backdate(orch, ids, created_at="25 hours", deadline_at="25 hours")
    simulator.advance_clock(25 * 3600)
    for job_id in ids:
        assert orch.executor().run(job_id) is JobState.DEAD
    for job_id in ids:
        job = orch.job(job_id)
        assert (job.state, job.dead_reason, job.attempts) == (JobState.DEAD, "retry_horizon", 0)
    assert _posts(simulator) == []


def test_saved_500s_and_cuts_under_search_lag_charge_each_job_once(
    orch: Any, worker: Any, clock: Any, simulator: Any
) -> None:
    """500 charges with customers under a 15-minute search lag, 30 % saved 500s (half of them
    after executing) and 10 % connections cut after executing: every job ends succeeded with
    exactly one successful PaymentIntent, found by consistent lists, never by search. (The
    clock runs: breaker deferrals may go past the broker's delay window.)"""
    simulator.set_faults(
        "stripe",
        search_lag_s=SEARCH_LAG_S,
        rate_500=0.15,
        rate_500_after_execute=0.15,
        rate_cut_after_execute=0.10,
    )
    n = 500
    for i in range(n):
        orch.charge(700 + i, "usd", f"cus_{i % 37}", "pm_card_visa", f"lag-{i}")
    wait_until(lambda: count_jobs(orch, "succeeded") == n, timeout_s=120)
    simulator.set_faults("stripe")
    succeeded = Counter(
        pi["metadata"]["orchestrator_job_id"]
        for pi in simulator.payment_intents()
        if pi["status"] == "succeeded"
    )
    assert len(succeeded) == n
    assert set(succeeded.values()) == {1}
    faults = Counter(r["fault"] for r in simulator.requests_log() if r["fault"])
    assert faults["rate_500"] > 0 and faults["rate_500_after_execute"] > 0
    assert faults["rate_cut_after_execute"] > 0
    assert not [r for r in simulator.requests_log() if "/search" in r["path"]]


@pytest.mark.parametrize("executed", [True, False])
def test_a_customerless_charge_waits_out_the_search_lag(
    orch: Any, simulator: Any, executed: bool
) -> None:
    """Without a customer only search can find the charge. After a saved 500 the job stays
    unknown until the search grace has passed since the attempt *finished*: search misses
    the object during the lag, and concluding "absent" then would charge twice."""
    patient = orchestrator_like(orch, simulator.url, search_grace_s=3600)
    simulator.set_faults(
        "stripe",
        search_lag_s=SEARCH_LAG_S,
        **({"rate_500_after_execute": 1.0} if executed else {"rate_500": 1.0}),
    )
    job = orch.charge(1500, "usd", None, "pm_card_visa", f"customerless-{executed}")
    assert patient.executor().run(job.id) is JobState.UNKNOWN
    simulator.set_faults("stripe", search_lag_s=SEARCH_LAG_S)
    _backdate(orch, [job.id], next_attempt_at="1 hour")
    assert patient.executor().resolve(job.id) is JobState.UNKNOWN  # within the grace: wait
    assert orch.job(job.id).key_generation == 0
    # An hour later (our clock and Stripe's): the search index has caught up.
    _backdate(orch, [job.id], finished_at="3601 seconds", next_attempt_at="2 hours")
    simulator.advance_clock(3601)
    expected = JobState.SUCCEEDED if executed else JobState.RETRYING
    assert patient.executor().resolve(job.id) is expected
    if not executed:
        assert patient.executor().run(job.id) is JobState.SUCCEEDED
    mine = [
        pi
        for pi in simulator.payment_intents()
        if pi["metadata"]["orchestrator_job_id"] == job.id and pi["status"] == "succeeded"
    ]
    assert len(mine) == 1


def test_off_session_authentication_fails_the_job_and_keeps_the_intent(
    orch: Any, simulator: Any
) -> None:
    """A card that needs authentication, charged with no customer present: the job fails with
    authentication_required and keeps the PaymentIntent id, so the app can bring the customer
    back to confirm it."""
    job = orch.charge(2500, "usd", "cus_sca", "pm_card_authenticationRequired", "sca-1")
    assert orch.executor().run(job.id) is JobState.FAILED
    failed = orch.job(job.id)
    assert failed.last_error_code == "authentication_required"
    (pi,) = simulator.payment_intents()
    assert failed.provider_ref == pi["id"]
    assert pi["status"] == "requires_payment_method"


def test_connect_charges_and_their_refunds_go_to_the_connected_account(
    orch: Any, simulator: Any
) -> None:
    """stripe_account is sent as Stripe-Account: the intent lives in that account, the job's
    lookups and its refund are made there too."""
    job = orch.charge(
        4000,
        "usd",
        "cus_connect",
        "pm_card_visa",
        "connect-1",
        stripe_account="acct_1Connected",
        application_fee_amount=300,
        statement_descriptor_suffix="ORDER 42",
    )
    assert orch.executor().run(job.id) is JobState.SUCCEEDED
    creates = _posts(simulator)
    assert [r["account"] for r in creates] == ["acct_1Connected"]
    (pi,) = simulator.payment_intents()
    assert pi["application_fee_amount"] == 300
    assert pi["statement_descriptor_suffix"] == "ORDER 42"
    refund = orch.refund(job.id, amount=1000, idempotency_key="connect-1-refund")
    assert orch.executor().run(refund.id) is JobState.SUCCEEDED
    assert [r["account"] for r in _posts(simulator, "/v1/refunds")] == ["acct_1Connected"]


@pytest.mark.parametrize(
    ("options", "names"),
    [
        ({"capture_method": "later"}, "capture_method"),
        ({"statement_descriptor_suffix": "x" * 23}, "statement_descriptor_suffix"),
        ({"statement_descriptor_suffix": "<script>"}, "statement_descriptor_suffix"),
        ({"return_url": "not a url"}, "return_url"),
        ({"stripe_account": "cus_123"}, "stripe_account"),
        ({"application_fee_amount": 100}, "application_fee_amount"),
        ({"transfer_data": {"destination": "acct_1", "amount": 10**9}}, "transfer_data"),
        ({"payment_method_types": "card"}, "payment_method_types"),
        ({"receipt_email": "nobody"}, "receipt_email"),
        ({"metadata": {"orchestrator_key_generation": "9"}}, "orchestrator_key_generation"),
    ],
)
def test_bad_payment_intent_options_are_refused_before_any_write(
    orch: Any, options: dict[str, Any], names: str
) -> None:
    """Each bad option raises a ValidationError naming it, and no job is written."""
    with pytest.raises(ValidationError, match=names):
        orch.charge(1000, "usd", "cus_x", "pm_card_visa", "bad-options", **options)
    assert count_jobs(orch) == 0


def test_on_session_authentication_waits_for_the_customer(orch: Any, simulator: Any) -> None:
    """With a return_url the charge is on-session: a card that needs authentication leaves
    the PaymentIntent requires_action, the job processing, and hands the app what it needs
    to bring the customer back (next_action, client_secret), which no log line carries."""
    from structlog.testing import capture_logs

    job = orch.charge(
        2500,
        "usd",
        "cus_sca",
        "pm_card_authenticationRequired",
        "sca-on-session",
        return_url="https://shop.example/orders/42/return",
    )
    with capture_logs() as logs:
        assert orch.executor().run(job.id) is JobState.PROCESSING
    waiting = orch.job(job.id)
    assert waiting.provider_status == "requires_action"
    details = waiting.provider_details
    assert details is not None
    redirect = details["next_action"]["redirect_to_url"]
    assert redirect["return_url"] == "https://shop.example/orders/42/return"
    assert details["client_secret"].startswith(f"{waiting.provider_ref}_secret_")
    assert details["client_secret"] not in repr(logs)
    (pi,) = simulator.payment_intents()
    assert "off_session" not in pi or not pi["off_session"]
