"""A statement that names one row by its primary key finds it by that key, whatever the
planner's statistics say.

The trap: beside finished history, the partial indexes the clock reads (`jobs_due_idx`,
`jobs_running_lease_idx`, `webhook_events_received_idx`) and the `state` range of
`jobs_state_created_idx` look small to the planner, so a statement such as the claim
(`WHERE id = $1 AND state IN ('pending', 'retrying') AND next_attempt_at <= now()`) was
planned as a scan of `jobs_due_idx` with `id` as a filter. Such a scan walks every due job
and every dead index entry left by the jobs claimed since the last vacuum, once per claim:
PostgreSQL's CPU per job grew by a quarter over the first 10,000 jobs of a table
(`scripts/bench --only floor`) and would grow with any backlog. Each statement here is run
through `auto_explain` on a database holding finished jobs and processed webhook events, with
custom plans and with generic ones (what a prepared statement may use after five runs), and
every scan of its target table must be a scan of that table's primary key.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from orchestrator.db.bench import load_history
from orchestrator.db.pool import create_database, drop_database, migrate, q
from tests.conftest import TEST_DATABASE_URL, _with_database

HISTORY_JOBS = 4000
NO_JOB = str(uuid.UUID(int=1))
NO_EVENT = 10**12

_SETTLE = {
    "id": NO_JOB, "attempt": None, "attempt_generation": None, "provider_key": None,
    "owner": "worker-1", "outcome": None, "error_class": None, "error_code": None,
    "http_status": None, "provider_request_id": None, "provider_ref": "pi_1",
    "duration_ms": None, "started_at": None, "attempt_provider": None,
    "to_state": "succeeded", "delay_s": 0.0, "dispatching": False, "broker_carries": False,
    "generation_step": 0, "reset_attempts": False, "refund_attempt": 0,
    "provider_status": "succeeded", "provider_details": None, "error": None,
    "unknown_cause": None, "dead_reason": None, "switch_provider": None,
    "switch_customer": None, "switch_payment_method": None, "reason": "provider reported success",
    "from_state": "running", "lease_owner": "worker-1",
}  # fmt: skip
_WEBHOOK_MOVE = {
    "id": NO_JOB, "to_state": "succeeded", "provider_ref": "pi_1",
    "provider_status": "succeeded", "error_code": None, "delay_s": 0.0,
    "broker_carries": False, "changed_by": "webhook", "reason": "event",
    "from_states": ["running", "unknown", "processing"],
}  # fmt: skip
_OPERATOR = {"id": NO_JOB, "actor": "ops", "reason": "checked", "details": Jsonb({})}

# name -> (target table, arguments); every id names no row, so nothing is written.
STATEMENTS: dict[str, tuple[str, dict[str, Any]]] = {
    "job_by_id": ("jobs", {"id": NO_JOB}),
    "job_state": ("jobs", {"id": NO_JOB}),
    "due_in": ("jobs", {"id": NO_JOB}),
    "claim_job": (
        "jobs",
        {"id": NO_JOB, "owner": "worker-1", "lease_s": 30.0, "keyed_providers": ["stripe"]},
    ),
    "lease_for_lookup": ("jobs", {"id": NO_JOB, "owner": "worker-1", "lease_s": 30.0}),
    "settle_job": ("jobs", _SETTLE),
    "release_lease": (
        "jobs",
        {"id": NO_JOB, "owner": "worker-1", "delay_s": 5.0, "broker_carries": False},
    ),
    "lock_charge_for_refund": ("jobs", {"id": NO_JOB}),
    "reserve_refund": ("jobs", {"id": NO_JOB, "amount": 100}),
    "reserve_capture": ("jobs", {"id": NO_JOB, "amount": 100}),
    "cancel_job": (
        "jobs",
        {"id": NO_JOB, "actor": "app", "reason": "cancelled", "same_key_reason": "resend"},
    ),
    "add_waiter": ("jobs", {"id": NO_JOB, "waiter": str(uuid.uuid4())}),
    "ops_replay_job": (
        "jobs",
        {
            **_OPERATOR,
            "budget": 3,
            "generation_step": 1,
            "horizon_s": 3600.0,
            "expected_generation": 0,
        },
    ),
    "ops_adopt_job": (
        "jobs",
        {**_OPERATOR, "provider_ref": "pi_1", "provider_status": "succeeded"},
    ),
    "ops_discard_job": ("jobs", _OPERATOR),
    "settle_job_from_webhook": ("jobs", _WEBHOOK_MOVE),
    "claim_webhook_event": ("webhook_events", {"id": NO_EVENT, "lease_s": 30.0}),
    "finish_webhook_event": (
        "webhook_events",
        {"id": NO_EVENT, "status": "processed", "job_id": None, "note": "done"},
    ),
    "release_webhook_event": (
        "webhook_events",
        {"id": NO_EVENT, "error": "provider down", "max_attempts": 5},
    ),
}

# Processed events beside the finished jobs: the partial index of received ones stays empty.
_EVENT_HISTORY = """
INSERT INTO webhook_events (provider, event_id, type, object_id, payload, status,
                            received_at, dispatched_at, processed_at)
SELECT 'stripe', 'evt_history_' || g, 'payment_intent.succeeded', 'pi_history_' || g,
       '{}'::jsonb, 'processed', now() - g * interval '1 minute',
       now() - g * interval '1 minute', now() - g * interval '1 minute'
FROM generate_series(1, %(n)s) AS g
"""


@pytest.fixture(scope="module")
def history_url() -> Iterator[str]:
    """A database holding finished charges and processed events, vacuumed and analyzed."""
    name = f"orchestrator_plans_{uuid.uuid4().hex[:10]}"
    create_database(TEST_DATABASE_URL, name)
    url = _with_database(TEST_DATABASE_URL, name)
    try:
        migrate(url)
        load_history(url, HISTORY_JOBS, retention_days=30, progress=lambda _: None)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(_EVENT_HISTORY, {"n": HISTORY_JOBS})
            conn.execute("VACUUM ANALYZE webhook_events")
        yield url
    finally:
        drop_database(TEST_DATABASE_URL, name)


def _executed_plans(url: str, name: str, args: dict[str, Any], mode: str) -> list[dict[str, Any]]:
    """The plans `auto_explain` reports for the named statement, run as the store runs it
    (prepared, parameters bound) under ``plan_cache_mode = mode``, in a transaction rolled
    back."""
    notices: list[str] = []
    with psycopg.connect(url) as conn:
        conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
        conn.execute("LOAD 'auto_explain'")
        conn.execute("SET auto_explain.log_min_duration = 0")
        conn.execute("SET auto_explain.log_level = notice")
        conn.execute("SET auto_explain.log_format = json")
        conn.execute(f"SET plan_cache_mode = {mode}")
        notices.clear()
        conn.execute(q(name), args, prepare=True)
        conn.rollback()
    return [json.loads(n.split("plan:", 1)[1])["Plan"] for n in notices if "plan:" in n]


def _scans_of(plan: dict[str, Any], table: str) -> Iterator[dict[str, Any]]:
    """Nodes of ``plan`` that read ``table`` under its own name (not a subquery's alias; not
    the node that writes the rows found)."""
    reads = plan.get("Node Type") != "ModifyTable"
    if reads and plan.get("Relation Name") == table and plan.get("Alias") == table:
        yield plan
    for child in plan.get("Plans", ()):
        yield from _scans_of(child, table)


@pytest.mark.parametrize("mode", ["force_custom_plan", "force_generic_plan"])
@pytest.mark.parametrize("name", sorted(STATEMENTS))
def test_a_statement_naming_its_row_by_id_reads_the_primary_key(
    history_url: str, name: str, mode: str
) -> None:
    table, args = STATEMENTS[name]
    plans = _executed_plans(history_url, name, args, mode)
    assert plans, f"auto_explain reported no plan for {name}"
    scans = [scan for plan in plans for scan in _scans_of(plan, table)]
    assert scans, f"{name}: no scan of {table} in {plans}"
    used = {(scan["Node Type"], scan.get("Index Name")) for scan in scans}
    assert used <= {("Index Scan", f"{table}_pkey"), ("Index Only Scan", f"{table}_pkey")}, (
        f"{name} ({mode}) reads {table} by {used}, not by its primary key"
    )
