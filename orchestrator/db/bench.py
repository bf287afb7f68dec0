"""SQL of the benchmarks themselves: a bulk load of synthetic finished jobs, table sizes and
the shared buffers a named query touches (EXPLAIN) for ``history``; what PostgreSQL wrote for
``burndown``; the bare jobs of ``floor``. Kept here because only ``orchestrator/db/``
executes SQL; the queries the benchmarks measure are the orchestrator's own, by name."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from orchestrator.db.pool import q

# History: rows per INSERT statement (one transaction each), the span of created_at, one
# dead job in DEAD_EVERY.
LOAD_CHUNK = 250_000
LOADERS = 2
HISTORY_SPAN_DAYS = 365
# The newest finished job settled this long ago: history, not the present (outside the
# metrics window, the dispatch grace and every lease).
HISTORY_END_S = 3600
DEAD_EVERY = 4_000
TABLES = ("jobs", "job_transitions", "job_attempts")


# -- SQL of the benchmark itself (the orchestrator's own queries are measured by name) ------

_SECONDARY_INDEXES = """
SELECT i.indexrelid::regclass::text AS name, pg_get_indexdef(i.indexrelid) AS def
FROM pg_index i
WHERE i.indrelid = ANY(%s::regclass[])
  AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
ORDER BY 1
"""

# One chunk of history: jobs g = first..last of n, their transitions, their attempt when
# inside the retention window. Valid rows for every domain and CHECK of schema.sql.
_LOAD_CHUNK = """
WITH src AS (
    SELECT g,
           now() - make_interval(secs => %(end_s)s + (%(n)s - g)::float8 * %(step_s)s) AS at,
           (CASE WHEN g %% %(dead_every)s = 0 THEN 'dead'
                 WHEN g %% 100 < 90 THEN 'succeeded'
                 WHEN g %% 100 < 97 THEN 'failed'
                 ELSE 'cancelled' END)::job_state AS state
    FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS g
), ins AS (
    INSERT INTO jobs (kind, provider, state, idempotency_key, fingerprint, amount, currency,
                      customer, payment_method, params, attempts, max_attempts,
                      next_attempt_at, deadline_at, dispatched_at, last_attempt_at,
                      provider_ref, provider_status, last_error_code, last_error, dead_reason,
                      changed_by, change_reason, created_at, updated_at)
    SELECT 'charge', 'stripe', state, 'history-' || lpad(g::text, 12, '0'),
           md5(g::text) || md5((g + 1)::text), 100 + g %% 100000, 'usd',
           'cus_h' || (g %% 50000), 'pm_card_visa', jsonb_build_object('order', g),
           CASE WHEN state = 'cancelled' THEN 0 ELSE 1 END, 8,
           at, at + interval '20 hours', at,
           CASE WHEN state = 'cancelled' THEN NULL ELSE at + interval '100 ms' END,
           CASE WHEN state = 'succeeded' THEN 'pi_h' || lpad(g::text, 20, '0') END,
           CASE state WHEN 'succeeded' THEN 'succeeded'
                      WHEN 'failed' THEN 'requires_payment_method' END,
           CASE state WHEN 'failed' THEN 'card_declined' WHEN 'dead' THEN 'api_error' END,
           CASE state WHEN 'failed' THEN 'Your card was declined.'
                      WHEN 'dead' THEN 'An error occurred with our connection to Stripe.' END,
           CASE WHEN state = 'dead' THEN 'attempts_exhausted' END,
           CASE WHEN state = 'cancelled' THEN 'cli:ops' ELSE 'worker:history' END,
           CASE state WHEN 'succeeded' THEN 'provider reports succeeded'
                      WHEN 'failed' THEN 'card_declined'
                      WHEN 'dead' THEN 'attempts exhausted'
                      ELSE 'cancelled before it ran' END,
           at, at + interval '1 second'
    FROM src
    RETURNING id, state, created_at, provider_ref, last_error_code
), transitions AS (
    INSERT INTO job_transitions (job_id, from_state, to_state, changed_by, reason, at)
    SELECT ins.id, t.from_state, t.to_state, t.changed_by, t.reason, ins.created_at + t.after
    FROM ins CROSS JOIN LATERAL (VALUES
        (1, NULL::job_state, 'pending'::job_state, 'api', 'accepted', interval '0'),
        (2, 'pending', CASE WHEN ins.state = 'cancelled' THEN 'cancelled'::job_state
                            ELSE 'running' END,
            'worker:history', 'claimed for attempt 1', interval '100 ms'),
        (3, 'running', ins.state, 'worker:history', 'settled', interval '1 second')
    ) AS t(step, from_state, to_state, changed_by, reason, after)
    WHERE t.step < 3 OR ins.state <> 'cancelled'
), attempts AS (
    INSERT INTO job_attempts (job_id, attempt, key_generation, provider_key, worker, outcome,
                              error_class, error_code, http_status, provider_ref, duration_ms,
                              started_at, finished_at, provider)
    SELECT id, 1, 0, id::text || ':0', 'worker:history',
           (CASE state WHEN 'succeeded' THEN 'succeeded' WHEN 'failed' THEN 'permanent'
                       ELSE 'ambiguous' END)::attempt_outcome,
           CASE state WHEN 'failed' THEN 'CardError' WHEN 'dead' THEN 'APIError' END,
           last_error_code,
           CASE state WHEN 'succeeded' THEN 200 WHEN 'failed' THEN 402 ELSE 500 END,
           provider_ref, 350, created_at + interval '100 ms', created_at + interval '450 ms',
           'stripe'
    FROM ins
    WHERE state <> 'cancelled'
      AND created_at > now() - make_interval(days => %(retention_days)s)
)
SELECT count(*) AS n FROM ins
"""

# The present: dead jobs (newest first in the DLQ) with an attempt each in the metrics window.
SEED_PRESENT = """
WITH dead AS (
    INSERT INTO jobs (kind, provider, state, idempotency_key, fingerprint, amount, currency,
                      payment_method, attempts, max_attempts, deadline_at, dead_reason,
                      last_error_code, changed_by, change_reason, created_at)
    SELECT 'charge', 'stripe', 'dead', 'live-dead-' || %(tag)s || '-' || g,
           md5(g::text) || md5(%(tag)s), 1000, 'usd', 'pm_card_visa', 1, 8,
           now() + interval '20 hours', 'attempts_exhausted', 'api_error', 'bench', 'seeded',
           now() - g * interval '1 second'
    FROM generate_series(1, %(n)s) AS g
    RETURNING id
)
INSERT INTO job_attempts (job_id, attempt, key_generation, worker, outcome, error_code,
                          http_status, duration_ms, started_at, provider)
SELECT id, 1, 0, 'worker:bench', 'ambiguous', 'api_error', 500, 420, now(), 'stripe'
FROM dead
"""

_SIZES = """
SELECT c.relname AS name, c.reltuples::bigint AS tuples,
       pg_relation_size(c.oid) AS heap, pg_indexes_size(c.oid) AS indexes,
       pg_total_relation_size(c.oid) AS total
FROM pg_class c WHERE c.oid = ANY(%s::regclass[])
ORDER BY total DESC
"""


@dataclass(frozen=True, slots=True)
class Load:
    jobs: int
    insert_s: float
    index_s: float
    vacuum_s: float
    sizes: list[tuple[str, int, int, int, int]]

    @property
    def total_s(self) -> float:
        return self.insert_s + self.index_s + self.vacuum_s


def buffers(conn: psycopg.Connection[Any], name: str, args: dict[str, Any]) -> int:
    """Shared buffers (hit + read) the execution of the named query touched, from EXPLAIN
    (ANALYZE, BUFFERS); run in a transaction rolled back, so a modifying query changes
    nothing."""
    try:
        row = conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + q(name), args).fetchone()
    finally:
        conn.rollback()
    if row is None:
        raise RuntimeError(f"EXPLAIN of {name} returned nothing")
    plan = row[0][0]["Plan"]
    return int(plan["Shared Hit Blocks"]) + int(plan["Shared Read Blocks"])


def load_history(
    url: str, n: int, retention_days: int, progress: Callable[[str], object] = print
) -> Load:
    """N finished jobs with their transitions and recent attempts, as a bulk load would make
    them: secondary indexes dropped first and built after, triggers off, then VACUUM ANALYZE."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET maintenance_work_mem = '1GB'")
        for table in TABLES:
            conn.execute(
                sql.SQL("ALTER TABLE {} SET (autovacuum_enabled = false)").format(
                    sql.Identifier(table)
                )
            )
        indexes = conn.execute(_SECONDARY_INDEXES, (list(TABLES),)).fetchall()
        for name, _ in indexes:
            conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
        started = time.perf_counter()
        chunks = [(first, min(first + LOAD_CHUNK - 1, n)) for first in range(1, n + 1, LOAD_CHUNK)]
        step_s = HISTORY_SPAN_DAYS * 86400 / n

        def load_chunk(chunk: tuple[int, int]) -> int:
            args = {
                "n": n,
                "first": chunk[0],
                "last": chunk[1],
                "step_s": step_s,
                "end_s": HISTORY_END_S,
                "dead_every": DEAD_EVERY,
                "retention_days": retention_days,
            }
            with psycopg.connect(url, autocommit=True) as loader:
                loader.execute("SET session_replication_role = replica")
                loader.execute("SET synchronous_commit = off")
                loader.execute(_LOAD_CHUNK, args)
            return chunk[1]

        # One loader a core: each statement runs in one backend.
        with ThreadPoolExecutor(max_workers=LOADERS) as pool:
            for last in pool.map(load_chunk, chunks):
                if n > LOAD_CHUNK:
                    progress(f"   {last:,} jobs in {time.perf_counter() - started:.0f}s")
        insert_s = time.perf_counter() - started
        started = time.perf_counter()
        for _, definition in indexes:
            conn.execute(definition)
        index_s = time.perf_counter() - started
        started = time.perf_counter()
        for table in TABLES:
            ident = sql.Identifier(table)
            conn.execute(sql.SQL("ALTER TABLE {} RESET (autovacuum_enabled)").format(ident))
            conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(ident))
        # The load dirtied gigabytes of shared buffers: written out now, so no checkpoint
        # flushes them while the second run measures.
        conn.execute("CHECKPOINT")
        vacuum_s = time.perf_counter() - started
        sizes = [
            (str(r[0]), int(r[1]), int(r[2]), int(r[3]), int(r[4]))
            for r in conn.execute(_SIZES, (list(TABLES),)).fetchall()
        ]
    return Load(n, insert_s, index_s, vacuum_s, sizes)


def execute(url: str, statement: str, args: dict[str, Any] | None = None) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement, args)


# -- burn-down: what PostgreSQL wrote (scripts/bench --only burndown) -------------------------

# Rows inserted, updated (HOT among them) and deleted per table since the statistics were
# reset, and the WAL position: two snapshots give what a phase wrote. Backends report their
# counts at the end of a transaction (at most once a second) and when they exit, so the second
# snapshot is taken once the workers have stopped.
_TABLE_WRITES = """
SELECT relname AS name, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del
FROM pg_stat_user_tables
"""
_WAL_POSITION = "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint AS wal"


@dataclass(frozen=True, slots=True)
class Writes:
    """A snapshot of what PostgreSQL has written: WAL bytes so far and, per table, rows
    (inserted, updated, of which HOT, deleted)."""

    wal_bytes: int
    tables: dict[str, tuple[int, int, int, int]]

    def since(self, earlier: Writes) -> Writes:
        """What was written between ``earlier`` and this snapshot (tables that wrote only)."""
        tables = {}
        for name, now in self.tables.items():
            before = earlier.tables.get(name, (0, 0, 0, 0))
            delta = (
                now[0] - before[0],
                now[1] - before[1],
                now[2] - before[2],
                now[3] - before[3],
            )
            if any(delta):
                tables[name] = delta
        return Writes(self.wal_bytes - earlier.wal_bytes, tables)

    @property
    def rows(self) -> int:
        """Rows inserted, updated and deleted (a HOT update counts once, as an update)."""
        return sum(ins + upd + dele for ins, upd, _, dele in self.tables.values())


def writes(url: str) -> Writes:
    """The current :class:`Writes` of the database at ``url``."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(_TABLE_WRITES).fetchall()
        wal_row = conn.execute(_WAL_POSITION).fetchone()
    wal = int(wal_row[0]) if wal_row else 0
    tables = {str(r[0]): (int(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in rows}
    return Writes(wal, tables)


# -- the durability floor (scripts/bench --only floor) ----------------------------------------

# A job's three commits and nothing else: a bare row whose key is unique, inserted with the
# WAL flush, then claimed and settled by primary key with asynchronous commits, as the
# orchestrator commits a keyed provider's claim and settle. No trigger, history or other index.
_FLOOR_TABLE = """
CREATE TABLE IF NOT EXISTS bench_floor_jobs (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    idempotency_key text NOT NULL UNIQUE,
    state           text NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    lease_owner     text
)
"""
_FLOOR_INSERT = """
INSERT INTO bench_floor_jobs (idempotency_key, state) VALUES (%s, 'pending') RETURNING id
"""
_FLOOR_CLAIM = """
UPDATE bench_floor_jobs SET state = 'running', attempts = attempts + 1, lease_owner = %s
WHERE id = %s AND state = 'pending'
  AND set_config('synchronous_commit', 'off', true) = 'off'
RETURNING id
"""
_FLOOR_SETTLE = """
UPDATE bench_floor_jobs SET state = 'succeeded', lease_owner = NULL
WHERE id = %s AND state = 'running' AND lease_owner = %s
  AND set_config('synchronous_commit', 'off', true) = 'off'
RETURNING id
"""
_FLOOR_SETTLED = "SELECT count(*) FROM bench_floor_jobs WHERE state = 'succeeded'"


def create_floor_table(conn: psycopg.Connection[Any]) -> None:
    """The floor's own table (if it is not there yet)."""
    conn.execute(_FLOOR_TABLE)


def floor_insert(conn: psycopg.Connection[Any], key: str) -> int:
    """Accept one floor job (the WAL flush at commit); its id."""
    inserted = conn.execute(_FLOOR_INSERT, (key,), prepare=True).fetchone()
    if inserted is None:
        raise RuntimeError(f"the floor's insert of {key} returned nothing")
    return int(inserted[0])


def floor_claim(conn: psycopg.Connection[Any], job_id: int, owner: str) -> None:
    """Claim a pending floor job for ``owner`` (an asynchronous commit)."""
    if conn.execute(_FLOOR_CLAIM, (owner, job_id), prepare=True).fetchone() is None:
        raise RuntimeError(f"the floor's job {job_id} was not claimed")


def floor_settle(conn: psycopg.Connection[Any], job_id: int, owner: str) -> None:
    """Settle a floor job held by ``owner`` (an asynchronous commit)."""
    if conn.execute(_FLOOR_SETTLE, (job_id, owner), prepare=True).fetchone() is None:
        raise RuntimeError(f"the floor's job {job_id} was not settled")


def count_floor_settled(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(_FLOOR_SETTLED).fetchone()
    return int(row[0]) if row else 0


class FloorJobs:
    """The floor's jobs, one after another on one autocommit connection (its own table)."""

    def __init__(self, url: str) -> None:
        self._conn = psycopg.connect(url, autocommit=True)
        create_floor_table(self._conn)

    def run(self, key: str, owner: str) -> None:
        """Insert, claim and settle one job: three statements, three commits."""
        job_id = floor_insert(self._conn, key)
        floor_claim(self._conn, job_id, owner)
        floor_settle(self._conn, job_id, owner)

    def wal_bytes(self) -> int:
        """The WAL position so far, in bytes."""
        row = self._conn.execute(_WAL_POSITION).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        self._conn.close()
