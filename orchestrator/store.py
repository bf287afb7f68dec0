"""PostgreSQL access: the schema, the named queries of ``sql/queries.sql``, a connection pool.

Every function here runs one named query. SQL text lives only in ``schema.sql`` and
``orchestrator/sql/queries.sql``; this module never builds SQL from strings.
"""

from __future__ import annotations

import re
import select
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any, LiteralString, NamedTuple, TypeVar, cast

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from orchestrator.errors import ConfigError
from orchestrator.logs import get_logger
from orchestrator.models import Attempt, Job, JobState, Transition

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schema.sql"
QUERIES_PATH = Path(__file__).resolve().parent / "sql" / "queries.sql"
# Serializes concurrent `migrate` runs (any constant unique to this application will do).
MIGRATE_LOCK_ID = 0x6F726368  # "orch"

log = get_logger(__name__)
T = TypeVar("T")
Row = dict[str, Any]
Conn = psycopg.Connection[Row]


@cache
def queries() -> dict[str, LiteralString]:
    """Parse ``queries.sql`` into {name: sql}, once per process."""
    text = QUERIES_PATH.read_text()
    parts = re.split(r"^-- name: (\w+)\s*$", text, flags=re.MULTILINE)
    named = {parts[i]: parts[i + 1].strip() for i in range(1, len(parts), 2)}
    return cast(dict[str, LiteralString], named)


def q(name: str) -> LiteralString:
    return queries()[name]


def connect(url: str, *, autocommit: bool = False) -> Conn:
    return psycopg.connect(url, row_factory=dict_row, autocommit=autocommit)


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


def migrate(url: str) -> None:
    """Apply ``schema.sql`` (idempotent), serialized by an advisory lock."""
    if not SCHEMA_PATH.exists():
        raise ConfigError(f"schema file not found at {SCHEMA_PATH}")
    schema: LiteralString = SCHEMA_PATH.read_text()
    with connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATE_LOCK_ID,))
        try:
            with conn.transaction():
                conn.execute(schema)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATE_LOCK_ID,))


class Settled(NamedTuple):
    """What a settle left: the job's new state and its latest error code."""

    state: JobState
    last_error_code: str | None


class Store:
    """The named queries over a pool; each method is one statement (one round trip)."""

    def __init__(self, pool: ConnectionPool[Conn]) -> None:
        self.pool = pool

    @contextmanager
    def connection(self) -> Iterator[Conn]:
        """A pooled connection inside one transaction: committed at exit, rolled back on error."""
        with self.pool.connection() as conn, conn.transaction():
            yield conn

    @contextmanager
    def autocommit_connection(self) -> Iterator[Conn]:
        """A pooled connection on which every statement commits by itself (no BEGIN/COMMIT)."""
        with self.pool.connection() as conn:
            yield conn

    def close(self) -> None:
        self.pool.close()

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

    # -- inserting -------------------------------------------------------------------------

    def insert_job(self, conn: Conn, params: dict[str, Any]) -> Job | None:
        """``conn`` may be the application's own connection (``charge(conn=...)``), whatever
        its row factory: the statements it is given here read rows as dicts."""
        row = (
            conn.cursor(row_factory=dict_row)
            .execute(q("insert_job"), {**params, "params": Jsonb(params["params"])})
            .fetchone()
        )
        return Job.from_row(row) if row else None

    def job_by_key(self, conn: Conn, key: str) -> Job | None:
        cursor = conn.cursor(row_factory=dict_row)
        row = cursor.execute(q("job_by_key"), {"idempotency_key": key}).fetchone()
        return Job.from_row(row) if row else None

    def notify_dispatch(self, conn: Conn, job_id: str) -> None:
        conn.execute(q("notify_dispatch"), {"id": job_id})

    # -- reading ---------------------------------------------------------------------------

    def job(self, job_id: str) -> Job | None:
        row = self._one("job_by_id", {"id": job_id})
        return Job.from_row(row) if row else None

    def attempts(self, job_id: str) -> list[Attempt]:
        rows = self._all("job_attempts", {"id": job_id})
        return [Attempt.from_row(r) for r in rows]

    def transitions(self, job_id: str) -> list[Transition]:
        rows = self._all("job_transitions", {"id": job_id})
        return [Transition.from_row(r) for r in rows]

    def list_jobs(
        self,
        *,
        state: str | None = None,
        kind: str | None = None,
        provider: str | None = None,
        limit: int = 50,
    ) -> list[Job]:
        args = {"state": state, "kind": kind, "provider": provider, "limit": limit}
        rows = self._all("list_jobs", args)
        return [Job.from_row(r) for r in rows]

    def count_by_state(self) -> dict[str, int]:
        rows = self._all("count_by_state")
        return {r["state"]: int(r["n"]) for r in rows}

    # -- moving jobs -----------------------------------------------------------------------

    def claim(
        self, job_id: str, owner: str, lease_s: float, keyed_providers: Sequence[str] = ()
    ) -> Row | None:
        """Claim a due job; for ``keyed_providers`` (they honour idempotency keys) the claim
        commits without waiting for the WAL flush (queries.sql, claim_job, says why)."""
        args = {
            "id": job_id,
            "owner": owner,
            "lease_s": lease_s,
            "keyed_providers": list(keyed_providers),
        }
        return self._one("claim_job", args)

    def lease_for_lookup(self, job_id: str, owner: str, lease_s: float) -> Row | None:
        args = {"id": job_id, "owner": owner, "lease_s": lease_s}
        return self._one("lease_for_lookup", args)

    def settle(self, args: dict[str, Any]) -> Settled | None:
        """Move a job held under ``args["lease_owner"]`` on (queries.sql, settle_job); None
        when the lease was lost meanwhile."""
        args = {"refund_attempt": 0, **args}  # only a breaker denial gives the attempt back
        row = self._one("settle_job", args)
        return Settled(JobState(row["state"]), row["last_error_code"]) if row else None

    def release_lease(self, job_id: str, owner: str, delay_s: float) -> Job | None:
        args = {"id": job_id, "owner": owner, "delay_s": delay_s}
        row = self._one("release_lease", args)
        return Job.from_row(row) if row else None

    def expire_leases(self, owner: str, limit: int) -> list[str]:
        rows = self._all("expire_leases", {"owner": owner, "limit": limit})
        return [str(r["id"]) for r in rows]

    def due_for_dispatch(self, grace_s: float, limit: int) -> list[str]:
        rows = self._all("due_for_dispatch", {"grace_s": grace_s, "limit": limit})
        return [str(r["id"]) for r in rows]

    # -- maintenance -----------------------------------------------------------------------

    def _count(self, name: str, args: dict[str, Any] | None = None) -> int:
        row = self._one(name, args)
        return int(row["n"]) if row else 0

    def count_expired_leases(self) -> int:
        return self._count("count_expired_leases")

    def count_due_for_dispatch(self, grace_s: float) -> int:
        return self._count("count_due_for_dispatch", {"grace_s": grace_s})

    def count_old_attempts(self, days: int) -> int:
        return self._count("count_old_attempts", {"days": days})

    def count_old_webhook_events(self, days: int) -> int:
        return self._count("count_old_webhook_events", {"days": days})

    def delete_old_webhook_events(self, days: int, limit: int) -> int:
        return self._rowcount("delete_old_webhook_events", {"days": days, "limit": limit})

    def delete_old_attempts(self, days: int, limit: int) -> int:
        return self._rowcount("delete_old_attempts", {"days": days, "limit": limit})

    # -- refunds (inside orch.refund()'s transaction) --------------------------------------

    def lock_charge_for_refund(self, conn: Conn, charge_id: str) -> Job | None:
        row = conn.execute(q("lock_charge_for_refund"), {"id": charge_id}).fetchone()
        return Job.from_row(row) if row else None

    def reserve_refund(self, conn: Conn, charge_id: str, amount: int) -> Job | None:
        row = conn.execute(q("reserve_refund"), {"id": charge_id, "amount": amount}).fetchone()
        return Job.from_row(row) if row else None
