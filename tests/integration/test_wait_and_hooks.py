"""wait() woken by the settle's NOTIFY, and settlement hooks fed from the outbox at least once:
real PostgreSQL, Redis, dramatiq workers, the stripe SDK and the simulator."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import dramatiq
import psycopg
import pytest

from orchestrator import JobNotFound, JobState, ValidationError, WaitTimeout
from orchestrator.app import waiting
from orchestrator.broker import Dispatcher, make_broker
from orchestrator.maintenance.settlements import DeliverSettlements
from tests.conftest import (
    BROKER_CONNECTION_ERRORS,
    orchestrator_like,
    refused_broker,
    stop_worker,
    wait_until,
)


def _charge(orch: Any, key: str, pm: str = "pm_card_visa") -> Any:
    return orch.charge(1000, "usd", "cus_wait", pm, key)


def _settle_by_sql(orch: Any, job_id: str, after_s: float) -> threading.Thread:
    """Another client settles the job (pending -> cancelled) after ``after_s``."""

    def settle() -> None:
        time.sleep(after_s)
        with psycopg.connect(orch.settings.database_url, autocommit=True) as conn:
            conn.execute(
                "UPDATE jobs SET state = 'cancelled', changed_by = 'test', "
                "change_reason = 'settled by the test' WHERE id = %s",
                (job_id,),
            )

    thread = threading.Thread(target=settle)
    thread.start()
    return thread


def test_wait_returns_the_settled_job(orch: Any, worker: Any) -> None:
    job = _charge(orch, "wait-1")
    done = orch.wait(job.id, timeout=30)
    assert done.state is JobState.SUCCEEDED
    assert done.provider_ref
    # Already settled: returned at once.
    assert orch.wait(job.id, timeout=0).state is JobState.SUCCEEDED


def test_wait_is_woken_by_the_notify_not_by_polling(
    orch: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the safety re-read pushed out to a minute, only the settle's NOTIFY can wake the
    waiter: it returns as soon as the other client commits."""
    monkeypatch.setattr(waiting, "RECHECK_S", 60.0)
    job = _charge(orch, "wait-notify")  # no worker: it stays pending until the test settles it
    settler = _settle_by_sql(orch, job.id, after_s=0.3)
    started = time.monotonic()
    done = orch.wait(job.id, timeout=20)
    waited = time.monotonic() - started
    settler.join()
    assert done.state is JobState.CANCELLED
    assert waited < 10, "woken by the re-read, not by the notification"


def _settled_notifications(url: str, during: Any, listen_s: float = 0.5) -> list[str]:
    """The ``orchestrator_settled`` payloads a bystander hears while ``during()`` runs."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("LISTEN orchestrator_settled")
        during()
        return [n.payload for n in conn.notifies(timeout=listen_s)]


def _waiter_rows(orch: Any) -> int:
    with psycopg.connect(orch.settings.database_url) as conn:
        row = conn.execute("SELECT count(*) FROM job_waiters").fetchone()
    return int(row[0]) if row else 0


def test_a_settle_nobody_waits_for_sends_no_notify(
    orch: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NOTIFY serializes commits, so only a settle someone waits for announces itself: one
    job settled with no waiter is silent, one with a waiter is heard (once), and the waiter's
    row is gone with the settle."""
    monkeypatch.setattr(waiting, "RECHECK_S", 60.0)
    url = orch.settings.database_url
    quiet = _charge(orch, "notify-quiet")
    heard = _settled_notifications(url, lambda: _settle_by_sql(orch, quiet.id, 0).join())
    assert heard == []
    waited = _charge(orch, "notify-waited")

    def settle_while_waited() -> None:
        settler = _settle_by_sql(orch, waited.id, after_s=0.3)
        assert orch.wait(waited.id, timeout=20).state is JobState.CANCELLED
        settler.join()

    heard = _settled_notifications(url, settle_while_waited)
    assert heard == [waited.id]
    assert _waiter_rows(orch) == 0


def test_wait_registering_during_an_uncommitted_settle_is_not_missed(
    orch: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race the registration closes: the settle's trigger has already run (no waiter
    then, so no NOTIFY) when wait() registers, and commits after. The registration waits for
    the row lock and reads the committed state: wait() returns at the commit, not at the
    (pushed-out) safety re-read."""
    monkeypatch.setattr(waiting, "RECHECK_S", 60.0)
    job = _charge(orch, "wait-race")
    done: dict[str, Any] = {}
    with psycopg.connect(orch.settings.database_url) as settler:
        settler.execute(
            "UPDATE jobs SET state = 'cancelled', changed_by = 'test', "
            "change_reason = 'settled by the test' WHERE id = %s",
            (job.id,),
        )

        def wait() -> None:
            done["job"] = orch.wait(job.id, timeout=20)
            done["at"] = time.monotonic()

        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(0.5)
        assert "job" not in done, "the registration did not wait for the settle's row lock"
        settler.commit()
        committed = time.monotonic()
    waiter.join(25)
    assert done["job"].state is JobState.CANCELLED
    assert done["at"] - committed < 5
    assert _waiter_rows(orch) == 0


def test_a_wait_that_times_out_leaves_no_waiter_row(orch: Any) -> None:
    job = _charge(orch, "wait-timeout-row")
    with pytest.raises(WaitTimeout):
        orch.wait(job.id, timeout=0.2)
    assert _waiter_rows(orch) == 0
    heard = _settled_notifications(
        orch.settings.database_url, lambda: _settle_by_sql(orch, job.id, 0).join()
    )
    assert heard == []


def test_many_waiters_on_many_jobs(orch: Any, worker: Any) -> None:
    jobs = [_charge(orch, f"wait-many-{i}") for i in range(20)]
    results: dict[str, str] = {}

    def wait_for(job_id: str) -> None:
        results[job_id] = str(orch.wait(job_id, timeout=60).state)

    threads = [threading.Thread(target=wait_for, args=(j.id,)) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {j.id: "succeeded" for j in jobs}


def test_wait_times_out_with_the_state_it_saw(orch: Any) -> None:
    job = _charge(orch, "wait-timeout")
    with pytest.raises(WaitTimeout) as caught:
        orch.wait(job.id, timeout=0.3)
    assert isinstance(caught.value, TimeoutError)
    assert caught.value.state == "pending"
    assert caught.value.job_id == job.id


def test_wait_refuses_bad_input(orch: Any) -> None:
    with pytest.raises(JobNotFound):
        orch.wait(str(uuid.uuid4()), timeout=0.1)
    with pytest.raises(ValidationError):
        orch.wait("not-a-uuid", timeout=0.1)
    with pytest.raises(ValidationError):
        orch.wait(_charge(orch, "wait-bad-timeout").id, timeout=-1)


def _hook_worker(orch: Any, queue: str) -> tuple[dramatiq.Worker, list[tuple[str, str]]]:
    """An application's dramatiq actor on ``queue`` recording what it is told, and a worker."""
    calls: list[tuple[str, str]] = []
    lock = threading.Lock()

    def on_settled(job_id: str, state: str) -> None:
        with lock:
            calls.append((job_id, state))

    dramatiq.actor(on_settled, broker=orch.broker, queue_name=queue, actor_name=f"{queue}_hook")
    w = dramatiq.Worker(orch.broker, queues={queue}, worker_threads=2, worker_timeout=50)
    w.start()
    return w, calls


def test_settlement_hooks_hear_every_settle_after_commit(
    orch: Any, worker: Any, simulator: Any
) -> None:
    queue = f"hooks_{uuid.uuid4().hex[:8]}"
    hook_worker, calls = _hook_worker(orch, queue)
    try:
        drain = DeliverSettlements.from_text(orch.store, orch.dispatcher, f"{queue}:{queue}_hook")
        ok = [_charge(orch, f"hook-ok-{i}") for i in range(5)]
        declined = _charge(orch, "hook-declined", pm="pm_card_chargeDeclined")
        for job in [*ok, declined]:
            orch.wait(job.id, timeout=30)
        assert drain.preview() == 6
        assert drain.run_once() == 6
        wait_until(lambda: len(calls) == 6)
        expected = {(j.id, "succeeded") for j in ok} | {(declined.id, "failed")}
        assert set(calls) == expected
        # Drained: nothing is sent twice by a later pass, and the totals counted them.
        assert drain.run_once() == 0
        with psycopg.connect(orch.settings.database_url) as conn:
            totals = dict(
                conn.execute(
                    "SELECT state::text, n FROM job_settled_totals WHERE kind = 'charge'"
                ).fetchall()
            )
        assert totals == {"succeeded": 5, "failed": 1}
    finally:
        stop_worker(hook_worker)


def test_a_failed_delivery_keeps_the_settles_for_the_next_pass(
    orch: Any, simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker refusing the hook's message rolls the drain back: the next pass sends it."""
    queue = f"hooks_{uuid.uuid4().hex[:8]}"
    job = _charge(orch, "hook-retry")
    _settle_by_sql(orch, job.id, after_s=0).join()
    refused = refused_broker(orch, simulator.url)
    broken = Dispatcher(make_broker(refused), refused.queue_name)
    failing = DeliverSettlements.from_text(orch.store, broken, f"{queue}:h")
    with pytest.raises(BROKER_CONNECTION_ERRORS):
        failing.run_once()
    assert failing.preview() == 1  # still in the outbox
    hook_worker, calls = _hook_worker(orch, queue)
    try:
        working = DeliverSettlements.from_text(orch.store, orch.dispatcher, f"{queue}:{queue}_hook")
        assert working.run_once() == 1
        wait_until(lambda: calls == [(job.id, "cancelled")])
    finally:
        stop_worker(hook_worker)


def test_settle_hooks_setting_is_validated(orch: Any, simulator: Any) -> None:
    from orchestrator.errors import ConfigError

    with pytest.raises(ConfigError, match="ORCHESTRATOR_SETTLE_HOOKS"):
        orchestrator_like(orch, simulator.url, settle_hooks="billing:order paid")
