"""What `orchestrator status` makes of heartbeat records, without Redis."""

from __future__ import annotations

from orchestrator.cli.status import status_lines
from orchestrator.ops.heartbeats import fleet_status


def test_fleet_status_picks_the_freshest_leader() -> None:
    """Of two clocks claiming the lock (a takeover in flight), the one seen last leads; ages
    are measured from now and never negative (clock skew)."""
    now = 1_700_000_000.0
    base = {"kind": "clock", "host": "h", "started_at": now - 100}
    records = [
        {**base, "pid": 1, "seen_at": now - 8, "leader": True},
        {**base, "pid": 2, "seen_at": now + 1, "leader": True},
        {**base, "pid": 3, "seen_at": now - 1, "leader": False},
    ]
    status = fleet_status(records, now, 30)
    assert status["ok"] is True
    assert [c["pid"] for c in status["clocks"]] == [2, 1, 3]
    assert status["clock_leader"]["pid"] == 2 and status["clock_leader"]["age_s"] == 0
    assert fleet_status(records[2:], now, 30)["ok"] is False


def test_status_lines_list_clocks_then_workers_then_problems() -> None:
    """One line a process (role and last-seen time), then each problem and warning."""
    now = 1_700_000_000.0
    worker = {"kind": "worker", "host": "h", "pid": 7, "started_at": now, "seen_at": now - 2}
    status = fleet_status([{**worker, "threads": 8}], now, 30)
    lines = status_lines(status)
    assert lines[0].startswith("worker ") and "h:7" in lines[0] and "last seen 2s ago" in lines[0]
    assert lines[0].endswith("8 threads")
    assert (
        lines[1]
        == "PROBLEM: no clock leader seen in the last 30 s: is `orchestrator clock` running?"
    )
    assert status_lines(fleet_status([], now, 30))[-1] == "warning: no worker seen in the last 20 s"
