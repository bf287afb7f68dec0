"""The clock's leadership check: its session must still hold the advisory lock before each
pass (after a partition PostgreSQL may have ended the session while the idle client noticed
nothing; scripts/chaos --multi-host --scenario clock shows it over a real black hole)."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

from orchestrator.db.pool import connect, holds_advisory_lock, try_advisory_lock
from orchestrator.maintenance import clock as clock_module
from orchestrator.maintenance.clock import CLOCK_LOCK_ID, Clock
from tests.conftest import orchestrator_like, wait_until

LOCK = 0x7465_7374  # not the clock's


def test_holds_advisory_lock_answers_for_this_session_only(orch: Any) -> None:
    url = orch.settings.database_url
    with connect(url, autocommit=True) as holder, connect(url, autocommit=True) as other:
        assert not holds_advisory_lock(holder, LOCK)
        assert try_advisory_lock(holder, LOCK)
        assert holds_advisory_lock(holder, LOCK)
        assert not holds_advisory_lock(other, LOCK)
        holder.execute("SELECT pg_advisory_unlock(%s)", (LOCK,))
        assert not holds_advisory_lock(holder, LOCK)


def test_a_clock_that_lost_its_lock_stands_down_before_acting(
    orch: Any, simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the check says the session no longer holds the lock, the clock runs no pass: it
    goes back to waiting for the lock (on a new connection), and acts only once it holds it
    again."""
    events: list[str] = []
    real_holds, real_try = clock_module.holds_advisory_lock, clock_module.try_advisory_lock

    def holds(conn: Any, lock_id: int) -> bool:
        held = real_holds(conn, lock_id) and "lost" in events  # the first check: lost
        events.append("checked" if held else "lost")
        return held

    def take(conn: Any, lock_id: int) -> bool:
        taken = real_try(conn, lock_id)
        events.append("acquired" if taken else "waiting")
        return taken

    monkeypatch.setattr(clock_module, "holds_advisory_lock", holds)
    monkeypatch.setattr(clock_module, "try_advisory_lock", take)
    clock = Clock(orchestrator_like(orch, simulator.url, clock_interval_s=0.2))
    run_once = clock.run_once
    monkeypatch.setattr(clock, "run_once", lambda **kw: events.append("pass") or run_once(**kw))
    stop = threading.Event()
    thread = threading.Thread(target=clock.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_until(lambda: "pass" in events, timeout_s=20)
    finally:
        stop.set()
        thread.join(timeout=20)
    # The old session's backend may still hold the lock for a moment: the new connection may
    # wait for it ("waiting") before it acquires it again.
    acted = [e for e in events if e != "waiting"]
    assert acted[:5] == ["acquired", "lost", "acquired", "checked", "pass"], events

    def lock_released() -> bool:
        with psycopg.connect(orch.settings.database_url, autocommit=True) as conn:
            held = conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s",
                (CLOCK_LOCK_ID,),
            ).fetchone()
        return held is not None and held[0] == 0

    # Released with the clock's connection: its backend ends a moment after the client
    # closes the socket, so the lock goes then, not at once.
    wait_until(lock_released, timeout_s=10)
