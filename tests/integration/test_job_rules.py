"""The rules relating a job's columns (the CHECK jobs_rules, migration 0008): each refuses the
write it forbids, under its own name, writing nothing and printing no column of the row; and
the one function refuses exactly what the ten CHECKs it replaced refused."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

# The ten CHECKs of migrations 0001 to 0007, verbatim: the reference the function must match.
OLD_CHECKS = {
    "jobs_charge_shape": "kind <> 'charge' OR (amount IS NOT NULL AND currency IS NOT NULL"
    " AND payment_method IS NOT NULL)",
    "jobs_refund_shape": "kind <> 'refund' OR parent_job_id IS NOT NULL",
    "jobs_running_has_lease": "state <> 'running' OR (lease_owner IS NOT NULL"
    " AND lease_expires_at IS NOT NULL)",
    "jobs_succeeded_has_ref": "state <> 'succeeded' OR provider_ref IS NOT NULL",
    "jobs_dead_has_reason": "state <> 'dead' OR dead_reason IS NOT NULL",
    "jobs_unknown_has_cause": "state <> 'unknown' OR unknown_cause IS NOT NULL",
    "jobs_attempts_bounded": "attempts <= max_attempts",
    "jobs_refunds_within_amount": "refunded_amount >= 0 AND (kind = 'charge'"
    " OR refunded_amount = 0) AND refunded_amount <= COALESCE(amount, 0)",
    "jobs_capture_within_amount": "capture_reserved >= 0 AND (kind = 'charge'"
    " OR (capture_reserved = 0 AND captured_amount IS NULL))"
    " AND capture_reserved <= COALESCE(amount, 0)"
    " AND (captured_amount IS NULL OR captured_amount BETWEEN 0 AND capture_reserved)"
    " AND refunded_amount <= COALESCE(captured_amount, refunded_amount)",
    "jobs_settler_shape": "kind NOT IN ('capture', 'void') OR parent_job_id IS NOT NULL",
}

COLUMNS = (
    "kind", "state", "amount", "currency", "payment_method", "parent_job_id", "lease_owner",
    "lease_expires_at", "provider_ref", "dead_reason", "unknown_cause", "attempts",
    "max_attempts", "refunded_amount", "capture_reserved", "captured_amount",
)  # fmt: skip
TYPES = (
    "job_kind", "job_state", "bigint", "text", "text", "uuid", "text", "timestamptz", "text",
    "text", "text", "integer", "integer", "bigint", "bigint", "bigint",
)  # fmt: skip

SECRET_CUSTOMER = "cus_secret_never_printed"
SECRET_METHOD = "pm_secret_never_printed"


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url, autocommit=True) as c:
        yield c


def _insert(conn: psycopg.Connection[Any], **over: Any) -> str:
    """Insert one job (a pending charge unless ``over`` says otherwise); returns its id."""
    row: dict[str, Any] = {
        "kind": "charge", "provider": "stripe", "idempotency_key": f"rules-{uuid.uuid4()}",
        "fingerprint": "f" * 64, "amount": 1000, "currency": "usd",
        "customer": SECRET_CUSTOMER, "payment_method": SECRET_METHOD, "max_attempts": 5,
        "changed_by": "test", "change_reason": "rules",
    }  # fmt: skip
    row.update(over)
    cols = ", ".join(row)
    vals = ", ".join(f"%({c})s" for c in row)
    found = conn.execute(
        f"INSERT INTO jobs ({cols}, deadline_at) VALUES ({vals}, now() + interval '1 hour') "
        "RETURNING id",
        row,
    ).fetchone()
    assert found is not None
    return str(found[0])


def _count(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM jobs").fetchone()
    assert row is not None
    return int(row[0])


# Each rule, with a write that breaks it (an insert's columns, or an update of a pending
# charge: SET ... ).
BROKEN_INSERTS = {
    "jobs_charge_shape": {"amount": None},
    "jobs_refund_shape": {"kind": "refund"},
    "jobs_settler_shape": {"kind": "capture"},
    "jobs_attempts_bounded": {"attempts": 6},
    "jobs_refunds_within_amount": {"refunded_amount": 1001},
    "jobs_capture_within_amount": {"capture_reserved": 1001},
}
BROKEN_UPDATES = {
    "jobs_running_has_lease": "state = 'running'",
    "jobs_dead_has_reason": "state = 'dead'",
    "jobs_unknown_has_cause": "state = 'running', lease_owner = 'w', lease_expires_at = now()",
    "jobs_refunds_within_amount": "refunded_amount = -1",
    "jobs_capture_within_amount": "captured_amount = 5, capture_reserved = 4",
}


@pytest.mark.parametrize("rule", sorted(BROKEN_INSERTS))
def test_an_insert_breaking_a_rule_is_refused_under_its_name(
    conn: psycopg.Connection[Any], rule: str
) -> None:
    before = _count(conn)
    with pytest.raises(psycopg.errors.CheckViolation) as caught:
        _insert(conn, **BROKEN_INSERTS[rule])
    assert caught.value.diag.constraint_name == rule
    assert caught.value.diag.table_name == "jobs"
    assert f'violates check constraint "{rule}"' in str(caught.value)
    assert SECRET_METHOD not in str(caught.value) and SECRET_CUSTOMER not in str(caught.value)
    assert caught.value.diag.message_detail is None  # no "Failing row contains (...)"
    assert _count(conn) == before


@pytest.mark.parametrize("rule", sorted(BROKEN_UPDATES))
def test_an_update_breaking_a_rule_is_refused_under_its_name(
    conn: psycopg.Connection[Any], rule: str
) -> None:
    job = _insert(conn)
    if rule == "jobs_unknown_has_cause":  # running first: pending -> unknown is not a move
        conn.execute(f"UPDATE jobs SET {BROKEN_UPDATES[rule]} WHERE id = %s", (job,))
        update = "state = 'unknown', lease_owner = NULL, lease_expires_at = NULL"
    else:
        update = BROKEN_UPDATES[rule]
    before = conn.execute("SELECT * FROM jobs WHERE id = %s", (job,)).fetchone()
    with pytest.raises(psycopg.errors.CheckViolation) as caught:
        conn.execute(f"UPDATE jobs SET {update} WHERE id = %s", (job,))
    assert caught.value.diag.constraint_name == rule
    assert SECRET_METHOD not in str(caught.value)
    assert conn.execute("SELECT * FROM jobs WHERE id = %s", (job,)).fetchone() == before


def test_a_job_keeping_every_rule_is_written(conn: psycopg.Connection[Any]) -> None:
    job = _insert(conn)
    conn.execute(
        "UPDATE jobs SET state = 'running', lease_owner = 'w', lease_expires_at = now(), "
        "attempts = 1 WHERE id = %s",
        (job,),
    )
    conn.execute(
        "UPDATE jobs SET state = 'succeeded', provider_ref = 'pi_1', lease_owner = NULL, "
        "lease_expires_at = NULL, refunded_amount = 400 WHERE id = %s",
        (job,),
    )
    row = conn.execute("SELECT state, refunded_amount FROM jobs WHERE id = %s", (job,)).fetchone()
    assert row == ("succeeded", 400)


# Values each column takes in the comparison: the edges of every rule, NULL where it may be.
GRID: dict[str, tuple[Any, ...]] = {
    "kind": ("charge", "refund", "capture", "void", "email"),
    "state": ("pending", "running", "succeeded", "unknown", "dead", "failed"),
    "amount": (None, 100),
    "currency": (None, "usd"),
    "payment_method": (None, "pm_1"),
    "parent_job_id": (None, "00000000-0000-0000-0000-000000000001"),
    "lease_owner": (None, "w"),
    "lease_expires_at": (None, "2026-01-01T00:00:00Z"),
    "provider_ref": (None, "pi_1"),
    "dead_reason": (None, "exhausted"),
    "unknown_cause": (None, "no_response"),
    "attempts": (0, 3, 6),
    "max_attempts": (5,),
    "refunded_amount": (-1, 0, 50, 100, 101),
    "capture_reserved": (-1, 0, 50, 100, 101),
    "captured_amount": (None, -1, 0, 50, 100),
}


def _rows(n_each: int = 2) -> Iterator[tuple[Any, ...]]:
    """Every combination of the kind, state and money columns, each with a few spreads of the
    other columns (the rules on those read one column or two)."""
    money = ("amount", "refunded_amount", "capture_reserved", "captured_amount")
    others = [c for c in COLUMNS if c not in ("kind", "state", *money)]
    for kind, state, *amounts in itertools.product(
        GRID["kind"], GRID["state"], *(GRID[c] for c in money)
    ):
        for spread in range(n_each):
            row = {"kind": kind, "state": state, **dict(zip(money, amounts, strict=True))}
            for i, col in enumerate(others):
                values = GRID[col]
                row[col] = values[(spread + i + len(amounts) + hash(kind) % 7) % len(values)]
            yield tuple(row[c] for c in COLUMNS)


def test_the_function_refuses_exactly_what_the_ten_checks_refused(database_url: str) -> None:
    """Over every combination of kind, state and money columns (with spreads of the others),
    jobs_row_rules refuses a row exactly when one of the old CHECKs is false, naming the first
    one broken in its order."""
    params = ", ".join(f"%s::{t} AS {c}" for c, t in zip(COLUMNS, TYPES, strict=True))
    old = ", ".join(f"COALESCE(({expr}), true)" for expr in OLD_CHECKS.values())
    rules = ", ".join(f"v.{c}" for c in COLUMNS)
    order = [
        "jobs_charge_shape", "jobs_refund_shape", "jobs_settler_shape", "jobs_running_has_lease",
        "jobs_succeeded_has_ref", "jobs_dead_has_reason", "jobs_unknown_has_cause",
        "jobs_attempts_bounded", "jobs_refunds_within_amount", "jobs_capture_within_amount",
    ]  # fmt: skip
    rows = list(_rows())
    assert len(rows) > 10_000
    refused = 0
    with psycopg.connect(database_url) as conn:
        for row in rows:
            got = conn.execute(f"SELECT {old} FROM (SELECT {params}) v", row).fetchone()
            assert got is not None
            verdicts = dict(zip(OLD_CHECKS, got, strict=True))
            broken = next((name for name in order if not verdicts[name]), None)
            conn.execute("SAVEPOINT s")
            try:
                conn.execute(f"SELECT jobs_row_rules({rules}) FROM (SELECT {params}) v", row)
                named = None
            except psycopg.errors.CheckViolation as exc:
                named = exc.diag.constraint_name
                conn.execute("ROLLBACK TO SAVEPOINT s")
            assert named == broken, dict(zip(COLUMNS, row, strict=True))
            refused += broken is not None
    assert 0 < refused < len(rows)
