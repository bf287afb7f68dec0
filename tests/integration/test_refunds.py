"""Refunds end to end: real PostgreSQL, Redis, the stripe SDK and the simulator over HTTP."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
import stripe

from orchestrator import IdempotencyConflict, InvalidOperation, JobNotFound, JobState
from tests.conftest import STRIPE_TEST_KEY, wait_until


def _succeeded_charge(orch: Any, key: str, amount: int = 1000) -> Any:
    job = orch.charge(amount, "usd", "cus_test", "pm_card_visa", key)
    orch.executor().run(job.id)  # with a worker running, the worker may win the claim
    wait_until(lambda: orch.job(job.id).state is JobState.SUCCEEDED, timeout_s=10)
    return orch.job(job.id)


def _refunded(orch: Any, charge_id: str) -> int:
    return int(orch.job(charge_id).refunded_amount)


def _refund_or_error(orch: Any, charge_id: str, key: str, amount: int | None) -> Any:
    try:
        return orch.refund(charge_id, amount, idempotency_key=key)
    except InvalidOperation as exc:
        return exc


def test_two_concurrent_full_refunds_make_one(orch: Any, worker: Any, simulator: Any) -> None:
    """Two full refunds of one charge at once: one is accepted and refunded at Stripe
    exactly once; the other is refused with an error saying the charge is fully refunded."""
    charge = _succeeded_charge(orch, "charge-race")
    barrier = threading.Barrier(2)

    def attempt(i: int) -> Any:
        barrier.wait()
        return _refund_or_error(orch, charge.id, f"full-{i}", None)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(attempt, range(2)))
    refused = [r for r in results if isinstance(r, InvalidOperation)]
    accepted = [r for r in results if not isinstance(r, InvalidOperation)]
    assert len(refused) == 1 and len(accepted) == 1
    assert "already fully refunded" in str(refused[0])
    job = accepted[0]
    wait_until(lambda: orch.job(job.id).state is JobState.SUCCEEDED)
    (refund,) = simulator.refunds()
    assert refund["amount"] == 1000
    assert refund["payment_intent"] == charge.provider_ref
    assert refund["metadata"] == {"orchestrator_job_id": job.id}
    assert orch.job(job.id).provider_ref == refund["id"]
    assert _refunded(orch, charge.id) == 1000


def test_concurrent_partial_refunds_never_exceed_the_charge(orch: Any, simulator: Any) -> None:
    """20 concurrent refunds of 300 on a 1000 charge: exactly 3 are accepted, and the provider
    ends with 900 refunded."""
    charge = _succeeded_charge(orch, "charge-partials")
    barrier = threading.Barrier(20)

    def attempt(i: int) -> Any:
        barrier.wait()
        return _refund_or_error(orch, charge.id, f"part-{i}", 300)

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(attempt, range(20)))
    accepted = [r for r in results if not isinstance(r, InvalidOperation)]
    assert len(accepted) == 3
    assert all("exceeds what remains" in str(r) for r in results if r not in accepted)
    assert _refunded(orch, charge.id) == 900
    for job in accepted:
        assert orch.executor().run(job.id) is JobState.SUCCEEDED
    assert sorted(r["amount"] for r in simulator.refunds()) == [300, 300, 300]


def test_partial_then_remaining_then_refused(orch: Any, simulator: Any) -> None:
    """A partial refund, then one with no amount (the rest), then nothing is left."""
    charge = _succeeded_charge(orch, "charge-steps")
    first = orch.refund(charge.id, 250, idempotency_key="step-1")
    rest = orch.refund(charge.id, idempotency_key="step-2")
    assert (first.amount, rest.amount) == (250, 750)
    assert rest.currency == "usd" and rest.parent_job_id == charge.id
    for job in (first, rest):
        assert orch.executor().run(job.id) is JobState.SUCCEEDED
    assert sorted(r["amount"] for r in simulator.refunds()) == [250, 750]
    with pytest.raises(InvalidOperation, match="already fully refunded"):
        orch.refund(charge.id, 1, idempotency_key="step-3")


def test_replay_returns_the_same_refund_without_reserving_twice(orch: Any) -> None:
    """The same key and request returns the same job (even once nothing remains); the same
    key with another amount is a conflict. Only the first call reserves."""
    charge = _succeeded_charge(orch, "charge-replay")
    first = orch.refund(charge.id, 400, idempotency_key="replay-1")
    again = orch.refund(charge.id, 400, idempotency_key="replay-1")
    assert again.id == first.id
    assert _refunded(orch, charge.id) == 400
    with pytest.raises(IdempotencyConflict):
        orch.refund(charge.id, 500, idempotency_key="replay-1")
    orch.refund(charge.id, idempotency_key="replay-rest")
    assert orch.refund(charge.id, 400, idempotency_key="replay-1").id == first.id
    assert _refunded(orch, charge.id) == 1000


def test_only_a_succeeded_charge_can_be_refunded(orch: Any) -> None:
    """Refusing a failed charge, a charge not yet executed, a refund, an unknown id and an
    amount over the charge, each with a clear error; nothing is reserved or written."""
    failed = orch.charge(1000, "usd", None, "pm_card_chargeDeclined", "charge-declined")
    assert orch.executor().run(failed.id) is JobState.FAILED
    with pytest.raises(InvalidOperation, match="is failed: only a succeeded charge"):
        orch.refund(failed.id, idempotency_key="refund-failed")
    pending = orch.charge(1000, "usd", None, "pm_card_visa", "charge-pending")
    with pytest.raises(InvalidOperation, match="is pending"):
        orch.refund(pending.id, idempotency_key="refund-pending")
    charge = _succeeded_charge(orch, "charge-ok")
    with pytest.raises(InvalidOperation, match="exceeds what remains"):
        orch.refund(charge.id, 1001, idempotency_key="refund-too-much")
    refund = orch.refund(charge.id, 10, idempotency_key="refund-ok")
    with pytest.raises(InvalidOperation, match="not a charge"):
        orch.refund(refund.id, idempotency_key="refund-of-refund")
    with pytest.raises(JobNotFound):
        orch.refund("00000000-0000-0000-0000-000000000000", idempotency_key="refund-none")
    with pytest.raises(ValueError):
        orch.refund(charge.id, 0, idempotency_key="refund-zero")
    assert _refunded(orch, failed.id) == 0
    assert _refunded(orch, charge.id) == 10
    assert len(orch.store.list_jobs(kind="refund")) == 1


def test_a_refused_refund_gives_its_reservation_back(orch: Any, simulator: Any) -> None:
    """A refund Stripe refuses (the intent was refunded elsewhere) ends `failed` and its
    amount is released on the charge, in the same transaction as the transition."""
    charge = _succeeded_charge(orch, "charge-elsewhere")
    client = stripe.StripeClient(STRIPE_TEST_KEY, base_addresses={"api": simulator.url})
    client.v1.refunds.create({"payment_intent": charge.provider_ref})
    job = orch.refund(charge.id, idempotency_key="refund-late")
    assert _refunded(orch, charge.id) == 1000
    assert orch.executor().run(job.id) is JobState.FAILED
    assert orch.job(job.id).last_error_code == "charge_already_refunded"
    assert _refunded(orch, charge.id) == 0


def test_the_database_refuses_an_over_refund(orch: Any) -> None:
    """Whatever code runs, the schema's CHECK refuses reservations beyond the charge."""
    charge = _succeeded_charge(orch, "charge-check")
    with (
        psycopg.connect(orch.settings.database_url) as conn,
        pytest.raises(psycopg.errors.CheckViolation),
    ):
        conn.execute("UPDATE jobs SET refunded_amount = 1001 WHERE id = %s", (charge.id,))


@pytest.mark.parametrize("fault", ["rate_cut_after_execute", "rate_500_after_execute"])
def test_ambiguous_refund_settles_to_one_refund(orch: Any, simulator: Any, fault: str) -> None:
    """A refund whose first call executed but answered nothing (cut) or a saved 500 becomes
    `unknown` and settles `succeeded` with exactly one refund at Stripe: by a same-key resend
    (replayed) after no response, by finding it in the intent's refunds after a 500."""
    charge = _succeeded_charge(orch, f"charge-{fault}")
    job = orch.refund(charge.id, 600, idempotency_key=f"refund-{fault}")
    executor = orch.executor()
    simulator.set_faults("stripe", **{fault: 1.0})
    assert executor.run(job.id) is JobState.UNKNOWN
    simulator.set_faults("stripe")
    deadline = time.monotonic() + 10
    while orch.job(job.id).state is not JobState.SUCCEEDED and time.monotonic() < deadline:
        executor.run(job.id)
        time.sleep(0.1)
    done = orch.job(job.id)
    assert done.state is JobState.SUCCEEDED
    (refund,) = simulator.refunds()
    assert refund["amount"] == 600 and done.provider_ref == refund["id"]
    assert _refunded(orch, charge.id) == 600


def test_cli_refund_and_send(
    orch: Any, simulator: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any, tmp_path: Any
) -> None:
    """`orchestrator refund` enqueues a refund (exit 0) and refuses a second full one with
    one line (exit 1); `orchestrator send` enqueues an email (exit 0)."""
    from orchestrator.cli import main

    monkeypatch.chdir(tmp_path)  # no stray .env
    settings = orch.settings
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    monkeypatch.setenv("ORCHESTRATOR_REDIS_NAMESPACE", settings.redis_namespace)
    charge = _succeeded_charge(orch, "charge-cli")
    assert main(["refund", charge.id, "--idempotency-key", "cli-1", "--json"]) == 0
    assert '"kind": "refund"' in capsys.readouterr().out
    assert main(["refund", charge.id, "--idempotency-key", "cli-2"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("orchestrator: charge") and "fully refunded" in err
    assert "\n" not in err
    send = ["send", "--to", "ana@example.com", "--subject", "Hi", "--body", "Hello"]
    assert main([*send, "--from", "b@example.com", "--idempotency-key", "cli-3"]) == 0
    assert "email to ana@example.com" in capsys.readouterr().out
    assert len(orch.store.list_jobs(kind="email")) == 1
