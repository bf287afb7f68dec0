"""Orchestrator.charge_many: one insert for a batch, per-item idempotency, all or nothing;
real PostgreSQL, Redis, dramatiq worker, stripe SDK and simulator."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from orchestrator import IdempotencyConflict, JobState, ValidationError
from orchestrator.app.bulk import BatchIdempotencyConflict
from tests.conftest import count_jobs, wait_until


def _item(key: str, amount: int = 1000, **extra: Any) -> dict[str, Any]:
    return {
        "amount": amount,
        "currency": "usd",
        "customer": "cus_bulk",
        "payment_method": "pm_card_visa",
        "idempotency_key": key,
        **extra,
    }


def test_bulk_of_500_with_existing_keys_returns_jobs_in_input_order(orch: Any) -> None:
    """50 of 500 keys were used before (by charge() and by an earlier batch): those items get
    their existing jobs back, the 450 others new pending jobs, all in input order."""
    earlier = [
        orch.charge(1000 + i, "usd", "cus_bulk", "pm_card_visa", f"b-{i}") for i in range(25)
    ]
    earlier += orch.charge_many([_item(f"b-{i}", 1000 + i) for i in range(25, 50)])
    items = [_item(f"b-{i}", 1000 + i) for i in range(500)]
    for i in range(50, 500):
        items[i]["metadata"] = {"n": str(i)}
    jobs = orch.charge_many(items)

    assert [j.idempotency_key for j in jobs] == [f"b-{i}" for i in range(500)]
    assert [j.amount for j in jobs] == [1000 + i for i in range(500)]
    assert [j.id for j in jobs[:50]] == [j.id for j in earlier]
    assert all(j.state is JobState.PENDING for j in jobs)
    assert jobs[60].metadata == {"n": "60"}
    assert len({j.id for j in jobs}) == 500
    assert count_jobs(orch) == 500
    # The same rows as charge() makes: a single charge() of a batch's item finds its job.
    again = orch.charge(1300, "usd", "cus_bulk", "pm_card_visa", "b-300", {"n": "300"})
    assert again.id == jobs[300].id
    # Each new job has its insert transition, as a single charge() does.
    assert [(t.from_state, t.to_state) for t in orch.transitions(jobs[400].id)] == [
        (None, "pending")
    ]


def test_the_jobs_returned_are_the_rows_stored(orch: Any) -> None:
    """charge_many reads one created row back whole and builds the others from it: every job
    it returns equals the job read from the database, field for field (a new column whose
    default differs per row would show here)."""
    items = [
        _item("same-0", metadata={"order": "0"}, description="first"),
        _item("same-1", capture=False),
        _item("same-2", customer=None, return_url="https://shop.example/r"),
        _item("same-3", stripe_account="acct_1Seller", application_fee_amount=100),
    ]
    earlier = orch.charge_many(items[:1])
    jobs = orch.charge_many(items)
    assert jobs[0] == earlier[0]
    for job in jobs:
        assert job == orch.job(job.id)


def test_a_conflicting_key_writes_nothing(orch: Any) -> None:
    """One item reuses a stored key with another amount: IdempotencyConflict naming the item
    and the existing job, and none of the batch's other (new) items is written."""
    stored = orch.charge(1000, "usd", "cus_bulk", "pm_card_visa", "c-5")
    items = [_item(f"c-{i}") for i in range(10)]
    items[5]["amount"] = 2000
    with pytest.raises(IdempotencyConflict) as caught:
        orch.charge_many(items)
    assert caught.value.job_id == stored.id
    assert "item 5" in str(caught.value)
    assert count_jobs(orch) == 1


def test_duplicate_keys_inside_a_batch(orch: Any) -> None:
    """A key twice with the same request is one job, returned at both positions; twice with
    different requests is a conflict raised before anything is written."""
    jobs = orch.charge_many([_item("d-1"), _item("d-2"), _item("d-1")])
    assert jobs[0].id == jobs[2].id != jobs[1].id
    assert count_jobs(orch) == 2

    with pytest.raises(BatchIdempotencyConflict) as caught:
        orch.charge_many([_item("d-3"), _item("d-4"), _item("d-3", amount=5)])
    assert isinstance(caught.value, IdempotencyConflict)
    assert caught.value.items == (0, 2)
    assert count_jobs(orch) == 2


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"amount": 0}, "item 3: "),
        ({"currency": "xyz"}, "item 3: "),
        ({"idempotency_key": ""}, "item 3: "),
        ({"colour": "red"}, "item 3: unexpected argument 'colour'"),
        ({"conn": None}, "item 3: unexpected argument 'conn'"),
    ],
)
def test_a_bad_item_is_named_and_nothing_is_written(
    orch: Any, bad: dict[str, Any], message: str
) -> None:
    items = [_item(f"v-{i}") for i in range(6)]
    items[3].update(bad)
    with pytest.raises(ValidationError, match=message):
        orch.charge_many(items)
    assert count_jobs(orch) == 0


def test_a_missing_argument_or_a_non_mapping_item_is_named(orch: Any) -> None:
    items: list[Any] = [_item("m-0"), _item("m-1")]
    del items[1]["payment_method"]
    with pytest.raises(ValidationError, match="item 1: missing argument 'payment_method'"):
        orch.charge_many(items)
    with pytest.raises(ValidationError, match="item 0: expected a mapping"):
        orch.charge_many([("m-2", 1000)])
    assert orch.charge_many([]) == []
    assert count_jobs(orch) == 0


def test_inside_the_callers_transaction(orch: Any) -> None:
    """With conn=, the batch is part of the caller's transaction: rolled back, nothing stays;
    a conflict rolls back only the batch's savepoint, not the caller's own work; committed,
    the jobs exist (and the clock's NOTIFY dispatch announces them, checked below)."""
    url = orch.settings.database_url
    with psycopg.connect(url) as conn:
        jobs = orch.charge_many([_item("t-1"), _item("t-2")], conn=conn)
        assert len(jobs) == 2
        conn.rollback()
    assert count_jobs(orch) == 0

    with psycopg.connect(url, autocommit=True) as listener:
        listener.execute("LISTEN orchestrator_dispatch")
        with psycopg.connect(url) as conn:
            jobs = orch.charge_many([_item("t-3"), _item("t-4")], conn=conn)
            with pytest.raises(IdempotencyConflict):
                orch.charge_many([_item("t-5"), _item("t-3", amount=7)], conn=conn)
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        # committed at the end of the with block
        heard = {n.payload for n in listener.notifies(timeout=2.0, stop_after=2)}
    assert heard == {j.id for j in jobs}
    assert count_jobs(orch) == 2


def test_every_job_of_a_batch_is_executed(orch: Any, worker: Any, simulator: Any) -> None:
    """200 charges in one batch: each becomes one succeeded job with one PaymentIntent."""
    jobs = orch.charge_many([_item(f"w-{i}", 100 + i) for i in range(200)])
    wait_until(lambda: count_jobs(orch, "succeeded") == 200, timeout_s=90)
    intents = simulator.payment_intents()
    assert sorted(pi["metadata"]["orchestrator_job_id"] for pi in intents) == sorted(
        j.id for j in jobs
    )
    assert {j.id: j.amount for j in jobs} == {
        pi["metadata"]["orchestrator_job_id"]: pi["amount"] for pi in intents
    }


def test_the_bulk_benchmark_prints_both_figures_and_the_ratio(capsys: Any) -> None:
    """``scripts/bench --only bulk`` at tiny scale: both calls measured, the ratio printed."""
    from orchestrator.dev.benchmarks import bulk as bench
    from orchestrator.dev.benchmarks.runner import build_parser
    from tests.conftest import TEST_DATABASE_URL, TEST_REDIS_URL

    args = build_parser().parse_args(
        ["--charges", "50", "--database-url", TEST_DATABASE_URL, "--redis-url", TEST_REDIS_URL]
    )
    bench.run(args)
    out = capsys.readouterr().out
    assert "charge() x N" in out
    assert "charge_many(N)" in out
    assert "faster than 50 single charge() calls" in out
