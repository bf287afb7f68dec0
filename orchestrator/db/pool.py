"""PostgreSQL plumbing: connections, the pool, the named queries, the schema, advisory locks.

SQL text lives only in ``schema.sql`` and ``orchestrator/db/queries/*.sql`` (loaded once, by
name); the three modules of this package are the only code that executes it. Parameters are
always bound, never formatted in; the few statements that take an identifier (a database
name) quote it with :mod:`psycopg.sql`.
"""

from __future__ import annotations

import hashlib
import re
import select
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, LiteralString, TypeVar

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from orchestrator.errors import ConfigError
from orchestrator.logs import get_logger

# The whole schema, readable in one file (a copy ships in the wheel): what every migration
# applied in order makes; tests/integration/test_migrations.py holds the two equal.
SCHEMA_PATH = Path(__file__).resolve().parent / "schema.sql"
QUERIES_DIR = Path(__file__).resolve().parent / "queries"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Migration 1 is the first release's schema: such a database is adopted at this version.
BASELINE_VERSION = 1
# Serializes concurrent `migrate` runs (any constant unique to this application will do).
MIGRATE_LOCK_ID = 0x6F726368  # "orch"

log = get_logger(__name__)
T = TypeVar("T")
Row = dict[str, Any]
Conn = psycopg.Connection[Row]


@cache
def queries() -> dict[str, LiteralString]:
    """Parse every ``queries/*.sql`` into {name: sql}, once per process."""
    named: dict[str, LiteralString] = {}
    for path in sorted(QUERIES_DIR.glob("*.sql")):
        parts = re.split(r"^-- name: (\w+)\s*$", path.read_text(), flags=re.MULTILINE)
        for i in range(1, len(parts), 2):
            if parts[i] in named:
                raise ConfigError(f"query {parts[i]} is defined twice ({path.name})")
            named[parts[i]] = parts[i + 1].strip()
    return named


def q(name: str) -> LiteralString:
    return queries()[name]


def connect(url: str, *, autocommit: bool = False, **options: Any) -> Conn:
    return psycopg.connect(url, row_factory=dict_row, autocommit=autocommit, **options)


def make_pool(url: str, *, max_size: int, min_size: int = 1) -> ConnectionPool[Conn]:
    pool_ref: list[ConnectionPool[Conn]] = []

    def check(conn: Conn) -> None:
        """Check a connection on checkout; on failure, sweep every idle one at once.

        An idle connection has nothing to read: when the server closes one (a restart,
        ``pg_terminate_backend``, an idle timeout) its socket turns readable with the goodbye.
        Only then is the round trip of a real check spent, so the hot path pays a zero-timeout
        ``select`` instead. psycopg_pool backs off exponentially (1 s, 2 s, 4 s, ...) between
        failed checks, so after a server restart a client would wait out one back-off per dead
        connection: checking the whole pool on the first failure replaces them all at once.
        """
        if not _has_pending_input(conn):
            return
        try:
            ConnectionPool.check_connection(conn)
        except psycopg.Error:
            if pool_ref:
                pool_ref[0].check()
            raise

    pool: ConnectionPool[Conn] = ConnectionPool(
        url,
        min_size=min_size,
        max_size=max_size,
        open=True,
        # Autocommit: a one-statement method costs two round trips (the pool's check and the
        # statement), not four (check, BEGIN, statement, COMMIT). Multi-statement work goes
        # through Store.connection(), which opens an explicit transaction.
        kwargs={"row_factory": dict_row, "autocommit": True},
        connection_class=psycopg.Connection,
        check=check,
        name="orchestrator",
    )
    pool_ref.append(pool)
    return pool


def _has_pending_input(conn: Conn) -> bool:
    """True when the server sent something to an idle connection (or the socket is gone)."""
    if conn.closed or conn.broken:
        return True
    try:
        readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    except (OSError, ValueError, psycopg.OperationalError):
        return True
    return bool(readable)


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered file of ``migrations/``: ``NNNN_what_it_does.sql``."""

    version: int
    name: str
    path: Path

    @property
    def sql(self) -> LiteralString:
        text: LiteralString = self.path.read_text()  # a file of the package, not input
        return text

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def migrations() -> list[Migration]:
    """The package's migrations, in order; numbers must run 1, 2, 3, ... without a gap."""
    found = []
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        number, _, name = path.stem.partition("_")
        if not number.isdigit() or not name:
            raise ConfigError(f"migration file {path.name} is not named NNNN_name.sql")
        found.append(Migration(int(number), name, path))
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise ConfigError("migrations must be numbered 1, 2, 3, ... without gaps")
    return found


def pending_migrations(url: str) -> list[Migration]:
    """What ``migrate`` would apply now (``migrate --check``). A first-release database not
    yet adopted counts its baseline as applied."""
    with connect(url, autocommit=True) as conn:
        applied = _applied_versions(conn)
        if applied is None:
            applied = {BASELINE_VERSION} if _has_first_release(conn) else set()
    return [m for m in migrations() if m.version not in applied]


def migrate(url: str) -> list[Migration]:
    """Apply the pending migrations in order, each in its own transaction with its row in
    ``schema_migrations``, serialized by an advisory lock; returns what was applied.

    A database of the first release (its ``jobs`` table, no ``schema_migrations``) is adopted:
    migration 1 (that release's schema) is recorded as applied without running, and the rest
    run on top, every job kept.
    """
    plan = migrations()
    applied_now: list[Migration] = []
    with connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATE_LOCK_ID,))
        try:
            adopt = _applied_versions(conn) is None and _has_first_release(conn)
            conn.execute(q("create_schema_migrations"))
            if adopt:
                conn.execute(q("adopt_baseline"), {"version": BASELINE_VERSION})
                log.info("migrate.baseline_adopted", version=BASELINE_VERSION)
            done = _applied_versions(conn) or set()
            for migration in plan:
                if migration.version in done:
                    continue
                with conn.transaction():
                    conn.execute(migration.sql)
                    conn.execute(
                        q("record_migration"),
                        {
                            "version": migration.version,
                            "name": migration.name,
                            "checksum": migration.checksum,
                        },
                    )
                log.info("migrate.applied", version=migration.version, name=migration.name)
                applied_now.append(migration)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATE_LOCK_ID,))
    return applied_now


def _applied_versions(conn: Conn) -> set[int] | None:
    """The versions recorded in ``schema_migrations``; None when the table does not exist."""
    row = conn.execute(q("schema_migrations_exists")).fetchone()
    if not row or not row["present"]:
        return None
    return {int(r["version"]) for r in conn.execute(q("applied_migrations")).fetchall()}


def _has_first_release(conn: Conn) -> bool:
    row = conn.execute(q("first_release_present")).fetchone()
    return bool(row and row["present"])


def try_advisory_lock(conn: Conn, lock_id: int) -> bool:
    """Take a session-level advisory lock if it is free; it lasts as long as ``conn``."""
    row = conn.execute("SELECT pg_try_advisory_lock(%s) AS ok", (lock_id,)).fetchone()
    return bool(row and row["ok"])


def holds_advisory_lock(conn: Conn, lock_id: int) -> bool:
    """Whether ``conn``'s session still holds the advisory lock ``lock_id`` (a 32-bit id, taken
    with :func:`try_advisory_lock`). A round trip on the lock's own connection: after a network
    partition PostgreSQL may have ended that session while the client, idle, never noticed."""
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory'"
        " AND pid = pg_backend_pid() AND classid = 0 AND objid = %s AND objsubid = 1"
        " AND granted) AS held",
        (lock_id,),
    ).fetchone()
    return bool(row and row["held"])


# A connection that must notice a dead peer (the clock's lock): TCP keepalives and a cap on
# unacknowledged data, so a silent network fails a read or write in about 10 s instead of
# the kernel's default of many minutes.
KEEPALIVE_OPTIONS: dict[str, int] = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
}


def listen(conn: Conn, channel: LiteralString) -> None:
    """Subscribe an autocommit ``conn`` to NOTIFY on ``channel`` (delivered at commit only)."""
    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))


def create_database(admin_url: str, name: str, *, replace: bool = False) -> None:
    """Create database ``name`` on the server of ``admin_url`` (dropping it first with
    ``replace``); an existing one is kept otherwise."""
    with connect(admin_url, autocommit=True) as admin:
        if replace:
            drop_database(admin_url, name, conn=admin)
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database(admin_url: str, name: str, *, conn: Conn | None = None) -> None:
    """Drop database ``name`` if it exists, closing its sessions."""
    stmt = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    if conn is not None:
        conn.execute(stmt)
        return
    with connect(admin_url, autocommit=True) as admin:
        admin.execute(stmt)


def server_version(url: str) -> str:
    with connect(url) as conn:
        row = conn.execute("SELECT current_setting('server_version') AS v").fetchone()
    return str(row["v"]) if row else "?"


class Queries:
    """Named queries over a pool: the base of :class:`~orchestrator.db.store.Store` and
    :class:`~orchestrator.db.ops.OpsStore`, which share one pool."""

    def __init__(self, pool: ConnectionPool[Conn]) -> None:
        self.pool = pool

    @contextmanager
    def connection(self) -> Iterator[Conn]:
        """A pooled connection inside one transaction: committed at exit, rolled back on error."""
        with self.pool.connection() as conn, conn.transaction():
            yield conn

    def retrying(self, work: Callable[[Conn], T]) -> T:
        """Run ``work`` on an autocommit connection; if that connection turns out to be broken
        (the server killed it between the checkout check and the statement), run it again on
        another.

        Only for work that is safe to repeat: single compare-and-set statements and
        insert-or-get. A statement that fails on a broken connection almost always never ran;
        if it did commit, the repeat finds its row gone from the expected state (or the key
        taken) and says so, exactly as a lost race would.
        """
        for _ in range(self.pool.max_size):
            with self.pool.connection() as conn:
                try:
                    return work(conn)
                except psycopg.OperationalError:
                    if not conn.broken:
                        raise
                    log.warning("store.connection_broken", action="retrying on another")
        with self.pool.connection() as conn:
            return work(conn)

    # -- one statement, retried on a broken connection -------------------------------------

    def _one(self, name: str, args: dict[str, Any] | None = None) -> Row | None:
        return self.retrying(lambda conn: conn.execute(q(name), args or {}).fetchone())

    def _all(self, name: str, args: dict[str, Any] | None = None) -> list[Row]:
        return self.retrying(lambda conn: conn.execute(q(name), args or {}).fetchall())

    def _rowcount(self, name: str, args: dict[str, Any]) -> int:
        return self.retrying(lambda conn: conn.execute(q(name), args).rowcount)

    def _count(self, name: str, args: dict[str, Any] | None = None) -> int:
        row = self._one(name, args)
        return int(row["n"]) if row else 0
