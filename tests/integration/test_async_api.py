"""AsyncOrchestrator: the application API on asyncio, against real PostgreSQL and Redis (and a
real worker and the simulator where a job runs). Each test runs its own event loop
(``asyncio.run``): no async test plugin is needed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import pytest

from orchestrator import (
    AsyncOrchestrator,
    IdempotencyConflict,
    InvalidOperation,
    JobNotFound,
    JobState,
    ValidationError,
    WaitTimeout,
)
from orchestrator.app import aio
from tests.conftest import count_jobs

# A settle is announced at commit: wait() must return well within this (the target is tens
# of milliseconds; the bound leaves room for a loaded machine).
SETTLE_LATENCY_BOUND_S = 0.25


def _run(orch: Any, body: Callable[[AsyncOrchestrator], Awaitable[Any]]) -> Any:
    """``body(aorch)`` in a fresh event loop, with an AsyncOrchestrator on ``orch``'s database
    and broker (the session's Redis namespace, where the ``worker`` fixture consumes)."""

    async def main() -> Any:
        async with AsyncOrchestrator(orch.settings, broker=orch.broker) as aorch:
            return await body(aorch)

    return asyncio.run(main())


def _settle(orch: Any, job_id: str, state: str = "cancelled") -> float:
    """Move a pending job to ``state`` from another connection; the commit's time."""
    with psycopg.connect(orch.settings.database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE jobs SET state = %s, changed_by = 'test', change_reason = 'test settle' "
            "WHERE id = %s",
            (state, job_id),
        )
        return time.monotonic()


def test_charge_email_and_job_follow_the_sync_rules(orch: Any) -> None:
    """Same key and request: the same job (also across the sync and async APIs); other
    request: IdempotencyConflict; bad input: ValidationError and nothing written."""

    async def body(aorch: AsyncOrchestrator) -> str:
        first = await aorch.charge(1000, "usd", "cus_a", "pm_card_visa", "a-1", {"o": "1"})
        assert first.state is JobState.PENDING
        again = await aorch.charge(1000, "usd", "cus_a", "pm_card_visa", "a-1", {"o": "1"})
        assert again.id == first.id
        with pytest.raises(IdempotencyConflict):
            await aorch.charge(2000, "usd", "cus_a", "pm_card_visa", "a-1", {"o": "1"})
        with pytest.raises(ValidationError):
            await aorch.charge(0, "usd", "cus_a", "pm_card_visa", "a-2")
        email = await aorch.send_email(
            "to@example.com", "Hi", "Body", idempotency_key="a-3", from_email="f@example.com"
        )
        assert email.kind.value == "email"
        assert (await aorch.job(first.id)).id == first.id
        with pytest.raises(JobNotFound):
            await aorch.job("00000000-0000-0000-0000-000000000000")
        with pytest.raises(ValidationError):
            await aorch.job("not-a-uuid")
        return str(first.id)

    async_id = _run(orch, body)
    assert count_jobs(orch) == 2
    sync_twin = orch.charge(1000, "usd", "cus_a", "pm_card_visa", "a-1", {"o": "1"})
    assert sync_twin.id == async_id
    made_sync = orch.charge(500, "eur", None, "pm_card_visa", "a-4")

    async def same_from_async(aorch: AsyncOrchestrator) -> Any:
        return await aorch.charge(500, "eur", None, "pm_card_visa", "a-4")

    assert _run(orch, same_from_async).id == made_sync.id
    assert count_jobs(orch) == 3


def test_charge_runs_and_wait_returns_it_settled(orch: Any, worker: Any, simulator: Any) -> None:
    """Without conn=, the message goes out after commit (the dispatcher's background sender):
    the worker runs the charge and wait() returns it succeeded."""

    async def body(aorch: AsyncOrchestrator) -> Any:
        job = await aorch.charge(1200, "usd", "cus_w", "pm_card_visa", "w-1")
        return await aorch.wait(job.id, timeout=30)

    done = _run(orch, body)
    assert done.state is JobState.SUCCEEDED
    assert [pi["id"] for pi in simulator.payment_intents()] == [done.provider_ref]


def test_wait_returns_within_tens_of_ms_of_the_settle(orch: Any) -> None:
    """Five waits, each settled from another connection while it waits: each returns the
    settled job soon after the commit (notification, not the 1 s safety re-read)."""
    jobs = [orch.charge(100 + i, "usd", "cus_l", "pm_card_visa", f"l-{i}") for i in range(5)]
    latencies: list[float] = []

    async def body(aorch: AsyncOrchestrator) -> None:
        for job in jobs:
            waiting = asyncio.create_task(aorch.wait(job.id, timeout=10))
            await asyncio.sleep(0.2)  # listening and parked between safety re-reads
            committed = await asyncio.to_thread(_settle, orch, job.id)
            settled = await waiting
            latencies.append(time.monotonic() - committed)
            assert settled.state is JobState.CANCELLED

    _run(orch, body)
    print(f"wait() latency after the settle's commit: {[f'{x * 1000:.1f} ms' for x in latencies]}")
    assert max(latencies) < SETTLE_LATENCY_BOUND_S


def test_wait_on_a_settled_job_returns_at_once_and_times_out_otherwise(orch: Any) -> None:
    settled = orch.charge(100, "usd", "cus_t", "pm_card_visa", "t-1")
    _settle(orch, settled.id)
    pending = orch.charge(100, "usd", "cus_t", "pm_card_visa", "t-2")

    async def body(aorch: AsyncOrchestrator) -> None:
        started = time.monotonic()
        assert (await aorch.wait(settled.id, timeout=5)).state is JobState.CANCELLED
        assert time.monotonic() - started < 1.0
        started = time.monotonic()
        with pytest.raises(WaitTimeout) as caught:
            await aorch.wait(pending.id, timeout=0.3)
        elapsed = time.monotonic() - started
        assert 0.3 <= elapsed < 1.0
        assert (caught.value.job_id, caught.value.state) == (pending.id, "pending")
        assert isinstance(caught.value, TimeoutError)
        # The wait that timed out took its job_waiters row with it: the settle stays silent.
        with psycopg.connect(orch.settings.database_url) as conn:
            assert conn.execute("SELECT count(*) FROM job_waiters").fetchone() == (0,)
        with pytest.raises(JobNotFound):
            await aorch.wait("00000000-0000-0000-0000-000000000000", timeout=1)
        with pytest.raises(ValidationError):
            await aorch.wait(pending.id, timeout=-1)

    _run(orch, body)


def test_wait_survives_a_lost_listener_connection(orch: Any, monkeypatch: Any) -> None:
    """The listener's connection is killed: the settle's notification is lost, yet wait()
    returns it (the listener reconnects and wakes every waiter; the safety re-read)."""
    monkeypatch.setattr(aio, "LISTENER_RETRY_S", 5.0)  # stay deaf: only re-reads can see it
    job = orch.charge(100, "usd", "cus_k", "pm_card_visa", "k-1")

    async def body(aorch: AsyncOrchestrator) -> float:
        waiting = asyncio.create_task(aorch.wait(job.id, timeout=10))
        await asyncio.sleep(0.2)
        with psycopg.connect(orch.settings.database_url, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE query LIKE 'LISTEN%orchestrator_settled%' AND datname = current_database()"
            ).fetchone()
        assert killed == (1,)
        await asyncio.sleep(0.1)
        committed = await asyncio.to_thread(_settle, orch, job.id)
        assert (await waiting).state is JobState.CANCELLED
        return time.monotonic() - committed

    latency = _run(orch, body)
    assert latency < aio.SAFETY_REREAD_S + 0.5


def test_conn_enqueues_inside_the_callers_async_transaction(orch: Any) -> None:
    """With conn=: rolled back, no job; committed, the job exists and the clock's dispatch
    channel announces it at commit."""
    url = orch.settings.database_url

    async def body(aorch: AsyncOrchestrator) -> tuple[str, set[str]]:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            await aorch.charge(100, "usd", "cus_c", "pm_card_visa", "c-1", conn=conn)
            await conn.rollback()
        assert count_jobs(orch) == 0
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as listener:
            await listener.execute("LISTEN orchestrator_dispatch")
            async with await psycopg.AsyncConnection.connect(url) as conn:
                job = await aorch.charge(100, "usd", "cus_c", "pm_card_visa", "c-2", conn=conn)
                assert count_jobs(orch) == 0  # not visible before the caller commits
                await conn.commit()
            heard = {n.payload async for n in listener.notifies(timeout=2.0, stop_after=1)}
        return job.id, heard

    job_id, heard = _run(orch, body)
    assert heard == {job_id}
    assert orch.job(job_id).state is JobState.PENDING


def test_refund_reserves_and_follows_idempotency(orch: Any) -> None:
    """An async refund of a succeeded charge reserves its amount; the same key returns the
    same refund; more than remains is refused; with conn= a rollback undoes the reservation."""
    charge = orch.charge(1000, "usd", "cus_r", "pm_card_visa", "r-1")
    with psycopg.connect(orch.settings.database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE jobs SET state = 'running', lease_owner = 't', "
            "lease_expires_at = now() + interval '1 minute', changed_by = 't', "
            "change_reason = 't' WHERE id = %s",
            (charge.id,),
        )
        conn.execute(
            "UPDATE jobs SET state = 'succeeded', provider_ref = 'pi_test', lease_owner = NULL, "
            "lease_expires_at = NULL, changed_by = 't', change_reason = 't' WHERE id = %s",
            (charge.id,),
        )
    url = orch.settings.database_url

    async def body(aorch: AsyncOrchestrator) -> None:
        refund = await aorch.refund(charge.id, 400, idempotency_key="r-2")
        assert (refund.kind.value, refund.amount, refund.parent_job_id) == (
            "refund",
            400,
            charge.id,
        )
        assert (await aorch.refund(charge.id, 400, idempotency_key="r-2")).id == refund.id
        with pytest.raises(IdempotencyConflict):
            await aorch.refund(charge.id, 300, idempotency_key="r-2")
        with pytest.raises(InvalidOperation):
            await aorch.refund(charge.id, 700, idempotency_key="r-3")
        async with await psycopg.AsyncConnection.connect(url) as conn:
            await aorch.refund(charge.id, 600, idempotency_key="r-4", conn=conn)
            await conn.rollback()
        assert (await aorch.job(charge.id)).refunded_amount == 400

    _run(orch, body)
    assert count_jobs(orch) == 2
