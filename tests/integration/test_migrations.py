"""Versioned migrations: numbered files applied in order under an advisory lock, recorded in
schema_migrations; the first release's database adopted and upgraded with its jobs; the
migrations and the readable schema.sql make the same schema."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from orchestrator.db.pool import (
    MIGRATIONS_DIR,
    SCHEMA_PATH,
    create_database,
    drop_database,
    migrate,
    migrations,
    pending_migrations,
)
from tests.conftest import TEST_DATABASE_URL, _with_database

# The first release's schema.sql (commit aa3bfd5), shipped verbatim as migration 1.
FIRST_RELEASE = MIGRATIONS_DIR / "0001_first_release.sql"


@pytest.fixture
def fresh_db() -> Iterator[str]:
    """An empty database, dropped afterwards."""
    name = f"orchestrator_mig_{uuid.uuid4().hex[:10]}"
    create_database(TEST_DATABASE_URL, name)
    try:
        yield _with_database(TEST_DATABASE_URL, name)
    finally:
        drop_database(TEST_DATABASE_URL, name)


def _first_release_db(url: str) -> None:
    """What the first release's `orchestrator migrate` made: its schema.sql, applied whole,
    and no schema_migrations table; with two charges in it."""
    body = FIRST_RELEASE.read_text().split("\n\n", 1)[1]  # past the migration's own header
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(body)  # type: ignore[arg-type]
        for key in ("old-1", "old-2"):
            conn.execute(
                "INSERT INTO jobs (kind, provider, idempotency_key, fingerprint, amount, "
                "currency, customer, payment_method, params, max_attempts, deadline_at, "
                "changed_by, change_reason) VALUES ('charge', 'stripe', %s, repeat('f', 64), "
                "1000, 'usd', 'cus_old', 'pm_card_visa', '{}', 5, now() + interval '1 hour', "
                "'api', 'accepted')",
                (key,),
            )


@pytest.fixture(scope="module")
def readable_schema() -> Iterator[dict[str, Any]]:
    """The catalog schema.sql makes when applied whole to an empty database."""
    name = f"orchestrator_mig_{uuid.uuid4().hex[:10]}"
    create_database(TEST_DATABASE_URL, name)
    url = _with_database(TEST_DATABASE_URL, name)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(SCHEMA_PATH.read_text())  # type: ignore[arg-type]
        yield _catalog(url)
    finally:
        drop_database(TEST_DATABASE_URL, name)


def _catalog(url: str) -> dict[str, Any]:
    """What a schema is: columns, constraints, indexes, enums, functions and triggers."""
    queries = {
        "columns": "SELECT table_name, column_name, data_type, is_nullable, column_default "
        "FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1, 2",
        "constraints": "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) "
        "FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2",
        "indexes": "SELECT tablename, indexname, indexdef FROM pg_indexes "
        "WHERE schemaname = 'public' ORDER BY 1, 2",
        "enums": "SELECT t.typname, e.enumlabel FROM pg_enum e JOIN pg_type t "
        "ON t.oid = e.enumtypid ORDER BY 1, e.enumsortorder",
        "functions": "SELECT proname, md5(prosrc) FROM pg_proc "
        "WHERE pronamespace = 'public'::regnamespace ORDER BY 1",
        "triggers": "SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(oid) "
        "FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1, 2",
    }
    with psycopg.connect(url) as conn:
        return {name: conn.execute(sql).fetchall() for name, sql in queries.items()}  # type: ignore[call-overload]


def test_migrations_are_numbered_without_gaps() -> None:
    """Files run 0001, 0002, ... and migration 1 is the first release's schema."""
    found = migrations()
    assert [m.version for m in found] == list(range(1, len(found) + 1))
    assert found[0].name == "first_release" and len(found) >= 2


def test_a_new_database_gets_every_migration_recorded(fresh_db: str) -> None:
    """On an empty database every file runs, in order, each recorded with its checksum;
    a second migrate applies nothing and --check finds nothing pending."""
    assert pending_migrations(fresh_db) == migrations()
    applied = migrate(fresh_db)
    assert [m.version for m in applied] == [m.version for m in migrations()]
    with psycopg.connect(fresh_db) as conn:
        rows = conn.execute("SELECT version, checksum FROM schema_migrations").fetchall()
    assert [r[0] for r in rows] == [m.version for m in migrations()]
    assert all(r[1] for r in rows)
    assert migrate(fresh_db) == []
    assert pending_migrations(fresh_db) == []


def test_the_first_release_database_is_adopted_and_upgraded_with_its_jobs(
    fresh_db: str, readable_schema: dict[str, Any]
) -> None:
    """A database the first release made (no schema_migrations, jobs in it): migration 1 is
    adopted without running, the rest run on top, and every job is still there and usable."""
    _first_release_db(fresh_db)
    assert [m.version for m in pending_migrations(fresh_db)] == [
        m.version for m in migrations()[1:]
    ]
    applied = migrate(fresh_db)
    assert [m.version for m in applied] == [m.version for m in migrations()[1:]]
    with psycopg.connect(fresh_db) as conn:
        adopted = conn.execute(
            "SELECT name, checksum FROM schema_migrations WHERE version = 1"
        ).fetchone()
        keys = [r[0] for r in conn.execute("SELECT idempotency_key FROM jobs ORDER BY 1")]
        details = conn.execute("SELECT provider_details FROM jobs LIMIT 1").fetchone()
    assert adopted == ("first_release (adopted)", None)
    assert keys == ["old-1", "old-2"]
    assert details == (None,)
    assert _catalog(fresh_db) == readable_schema


def test_the_migrations_make_exactly_the_readable_schema(
    fresh_db: str, readable_schema: dict[str, Any]
) -> None:
    """schema.sql, applied whole, and the migrations, applied in order, make the same schema:
    the readable file never drifts from what deploys get."""
    migrate(fresh_db)
    assert _catalog(fresh_db) == readable_schema


def test_migrate_check_exits_1_listing_what_is_pending(
    fresh_db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`orchestrator migrate --check` changes nothing: exit 1 with the pending files listed,
    then 0 once `orchestrator migrate` has run."""
    from orchestrator.cli import main

    monkeypatch.setenv("DATABASE_URL", fresh_db)
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    assert main(["migrate", "--check"]) == 1
    out = capsys.readouterr().out
    assert "pending: 0001 first_release" in out
    assert pending_migrations(fresh_db) == migrations()
    assert main(["migrate"]) == 0
    capsys.readouterr()
    assert main(["migrate", "--check"]) == 0
