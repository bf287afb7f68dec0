"""One trigger per state change (migration 0009): jobs_record_transition now also holds the
authorization rules and what a settling refund, capture or void does to its charge, which
three more triggers did before. Every transition between any two states, for every kind of
job and every shape of authorization, is run against a database migrated to 0008 and one
migrated to the end: the same errors, the same rows."""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from orchestrator.db.pool import create_database, drop_database, migrate, migrations
from tests.conftest import TEST_DATABASE_URL, _with_database

STATES = (
    "pending", "running", "succeeded", "failed", "retrying", "unknown", "processing", "dead",
    "cancelled",
)  # fmt: skip
NS = uuid.UUID("7f1d2b1e-0000-4000-8000-000000000009")
CREATED = "2026-01-01T00:00:00Z"

# A charge's own columns that decide what the trigger does with it: plain or an
# authorization, captured or not, with or without the provider's capture deadline.
CHARGE_SHAPES = [
    {"provider_status": status, "captured_amount": captured, "capture_reserved": reserved,
     "provider_details": details}
    for status, (captured, reserved), details in itertools.product(
        (None, "requires_capture"),
        ((None, 0), (0, 0), (0, 500), (500, 500)),
        (None, {"capture_before": 1767225600}),
    )
]  # fmt: skip


@pytest.fixture(scope="module")
def before_and_after() -> Iterator[tuple[str, str]]:
    """A database with migrations 1 to 8 applied in order, and one with every migration."""
    names = [f"orchestrator_trg_{uuid.uuid4().hex[:10]}" for _ in range(2)]
    for name in names:
        create_database(TEST_DATABASE_URL, name)
    before, after = (_with_database(TEST_DATABASE_URL, name) for name in names)
    try:
        with psycopg.connect(before, autocommit=True) as conn:
            for migration in migrations():
                if migration.version <= 8:
                    conn.execute(migration.sql)
        migrate(after)
        yield before, after
    finally:
        for name in names:
            drop_database(TEST_DATABASE_URL, name)


def _scenarios() -> Iterator[dict[str, Any]]:
    """Every (from, to) pair of states for each kind; charges in every shape."""
    n = 0
    for from_state, to_state in itertools.product(STATES, STATES):
        for shape in CHARGE_SHAPES:
            n += 1
            yield {"n": n, "kind": "charge", "from": from_state, "to": to_state, **shape}
        for kind in ("refund", "capture", "void"):
            n += 1
            yield {"n": n, "kind": kind, "from": from_state, "to": to_state}


def _insert(cur: psycopg.Cursor[Any], job_id: uuid.UUID, **cols: Any) -> None:
    row: dict[str, Any] = {
        "id": job_id, "provider": "stripe", "idempotency_key": f"trg-{job_id}",
        "fingerprint": "f" * 64, "customer": "cus_1", "max_attempts": 5,
        "deadline_at": "2026-01-02T00:00:00Z", "changed_by": "test", "change_reason": "made",
        "created_at": CREATED, "updated_at": CREATED, "lease_owner": "w",
        "lease_expires_at": "2026-01-01T00:01:00Z", "provider_ref": "ref_1",
        "dead_reason": "test", "unknown_cause": "lease_expired",
    }  # fmt: skip
    row.update(cols)
    if isinstance(row.get("provider_details"), dict):
        row["provider_details"] = json.dumps(row["provider_details"])
    if isinstance(row.get("params"), dict):
        row["params"] = json.dumps(row["params"])
    names = ", ".join(row)
    values = ", ".join(f"%({c})s" for c in row)
    cur.execute(f"INSERT INTO jobs ({names}) VALUES ({values})", row)  # type: ignore[arg-type]


def _run(cur: psycopg.Cursor[Any], sc: dict[str, Any]) -> dict[str, Any]:
    """Make the scenario's jobs, move the job from `from` to `to`, and read back what the
    database holds (then roll it all back)."""
    child = uuid.uuid5(NS, f"{sc['n']}-child")
    parent = uuid.uuid5(NS, f"{sc['n']}-parent")
    out: dict[str, Any] = {}
    with cur.connection.transaction(force_rollback=True):
        try:
            with cur.connection.transaction():
                if sc["kind"] == "charge":
                    shape = {k: sc[k] for k in CHARGE_SHAPES[0]}
                    _insert(cur, child, kind="charge", state=sc["from"], amount=1000,
                            currency="usd", payment_method="pm_1", **shape)  # fmt: skip
                else:
                    authorization = sc["kind"] in ("capture", "void")
                    _insert(
                        cur, parent, kind="charge", state="succeeded", amount=1000,
                        currency="usd", payment_method="pm_1",
                        provider_status="requires_capture" if authorization else "succeeded",
                        captured_amount=0 if authorization else None,
                        capture_reserved=400 if sc["kind"] == "capture" else 0,
                        refunded_amount=300 if sc["kind"] == "refund" else 0,
                    )  # fmt: skip
                    _insert(
                        cur, child, kind=sc["kind"], state=sc["from"], parent_job_id=parent,
                        amount={"refund": 300, "capture": 400}.get(sc["kind"]),
                        currency="usd", params={"reason": "duplicate"},
                        provider_status="succeeded",
                    )  # fmt: skip
                cur.execute(
                    "INSERT INTO job_waiters (job_id, waiter) VALUES (%s, %s)",
                    (child, uuid.uuid5(NS, f"{sc['n']}-waiter")),
                )
        except psycopg.Error as exc:
            return {"insert_error": (exc.sqlstate, str(exc).splitlines()[0])}
        try:
            with cur.connection.transaction():
                cur.execute(
                    "UPDATE jobs SET state = %s, changed_by = 'mover', change_reason = 'moved' "
                    "WHERE id = %s",
                    (sc["to"], child),
                )
        except psycopg.Error as exc:
            out["error"] = (exc.sqlstate, exc.diag.constraint_name, str(exc).splitlines()[0])
        cur.execute(
            "SELECT id = %s AS is_child, state, refunded_amount, capture_reserved, "
            "captured_amount, capture_before, provider_status, changed_by, change_reason, "
            "updated_at = now() AS touched FROM jobs WHERE id IN (%s, %s) ORDER BY 1",
            (child, child, parent),
        )
        out["jobs"] = cur.fetchall()
        cur.execute(
            "SELECT job_id = %s, from_state, to_state, changed_by, reason FROM job_transitions "
            "WHERE job_id IN (%s, %s) ORDER BY id",
            (child, child, parent),
        )
        out["transitions"] = cur.fetchall()
        cur.execute(
            "SELECT job_id = %s, kind, state FROM job_settlements WHERE job_id IN (%s, %s) "
            "ORDER BY id",
            (child, child, parent),
        )
        out["settlements"] = cur.fetchall()
        cur.execute("SELECT count(*) FROM job_waiters WHERE job_id = %s", (child,))
        out["waiters"] = cur.fetchall()
    return out


def _outcomes(url: str) -> list[dict[str, Any]]:
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        return [_run(cur, sc) for sc in _scenarios()]


def test_one_trigger_does_what_the_four_did(before_and_after: tuple[str, str]) -> None:
    before, after = before_and_after
    old, new = _outcomes(before), _outcomes(after)
    scenarios = list(_scenarios())
    assert len(old) == len(new) == len(scenarios)
    for sc, was, now in zip(scenarios, old, new, strict=True):
        assert now == was, sc

    # The comparison covers every branch the three folded triggers held.
    def parents(pred: Any) -> int:
        return sum(
            1
            for sc, out in zip(scenarios, new, strict=True)
            if sc["kind"] != "charge" and "error" not in out and "jobs" in out and pred(sc, out)
        )

    parent_of = lambda out: next(r for r in out["jobs"] if not r[0])  # noqa: E731
    # Into failed from running, unknown, processing; into cancelled from pending, retrying,
    # dead: 6 ways a refund or a capture gives its reservation back. Into succeeded from
    # running, retrying, unknown, processing, dead: 5 ways a capture or void settles.
    assert parents(lambda sc, o: sc["kind"] == "refund" and parent_of(o)[2] == 0) == 6
    assert parents(lambda sc, o: sc["kind"] == "capture" and parent_of(o)[4] == 400) == 5
    assert parents(lambda sc, o: sc["kind"] == "capture" and parent_of(o)[3] == 0) == 6
    assert parents(lambda sc, o: sc["kind"] == "void" and parent_of(o)[1] == "cancelled") == 5
    marked = [
        o for sc, o in zip(scenarios, new, strict=True)
        if sc["kind"] == "charge" and sc["captured_amount"] is None and "error" not in o
        and o.get("jobs") and o["jobs"][0][4] == 0
    ]  # fmt: skip
    assert len(marked) == 2 * 5  # with and without the provider's deadline, from 5 states
    refused = [
        o for o in new
        if o.get("error") and "only an uncaptured authorization" in o["error"][2]
    ]  # fmt: skip
    assert refused
    settled_waiters = [o for o in new if o.get("waiters") == [(0,)]]
    assert settled_waiters


def test_only_the_two_transition_triggers_are_left(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        names = conn.execute(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = 'jobs'::regclass "
            "AND NOT tgisinternal ORDER BY 1"
        ).fetchall()
    assert names == [("jobs_check_transition",), ("jobs_record_insert",)]
