"""The job store: every statement the hot path runs (enqueue, claim, settle, sweeps, refunds'
reservation, webhook events), one named query each (``queries/jobs.sql``, ``webhooks.sql``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, NamedTuple

from psycopg import Transaction
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from orchestrator.db.pool import Conn, Queries, Row, q
from orchestrator.models import Attempt, EventStatus, Job, JobState, Transition, WebhookEvent


class Settled(NamedTuple):
    """What a settle left: the job's new state and its latest error code."""

    state: JobState
    last_error_code: str | None


_SETTLE_DEFAULTS: dict[str, Any] = {
    "refund_attempt": 0,
    "broker_carries": False,
    "attempt_provider": None,
    "switch_provider": None,
    "switch_customer": None,
    "switch_payment_method": None,
}


class Store(Queries):
    """The named queries over a pool; each method is one statement (one round trip)."""

    def close(self) -> None:
        self.pool.close()

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
        # Only a breaker denial gives the attempt back. A caller that does not say whether the
        # broker carries the job's next message leaves it to the clock's due dispatch. Only a
        # failover (orchestrator.providers.failover) switches the job's provider.
        args = {**_SETTLE_DEFAULTS, **args}
        details = args.get("provider_details")
        args["provider_details"] = Jsonb(details) if details is not None else None
        row = self._one("settle_job", args)
        return Settled(JobState(row["state"]), row["last_error_code"]) if row else None

    def release_lease(
        self, job_id: str, owner: str, delay_s: float, broker_carries: bool = False
    ) -> Job | None:
        """Give a leased unknown/processing job back for ``delay_s``; ``broker_carries``: the
        caller sends it a delayed message (else the clock dispatches it when due)."""
        args = {
            "id": job_id,
            "owner": owner,
            "delay_s": delay_s,
            "broker_carries": broker_carries,
        }
        row = self._one("release_lease", args)
        return Job.from_row(row) if row else None

    def expire_leases(self, owner: str, limit: int) -> list[str]:
        rows = self._all("expire_leases", {"owner": owner, "limit": limit})
        return [str(r["id"]) for r in rows]

    def due_for_dispatch(self, grace_s: float, limit: int) -> list[str]:
        rows = self._all("due_for_dispatch", {"grace_s": grace_s, "limit": limit})
        return [str(r["id"]) for r in rows]

    def dispatch_due(self, limit: int, lead_s: float = 0.0) -> list[tuple[str, float]]:
        """Jobs scheduled in PostgreSQL due within ``lead_s``, oldest first, marked dispatched
        in the same statement (queries: dispatch_due), each with the delay its message is sent
        with (0 for a job due already)."""
        rows = self._all("dispatch_due", {"limit": limit, "lead_s": lead_s})
        return [(str(r["id"]), float(r["delay_s"])) for r in rows]

    def next_scheduled_due(self) -> float | None:
        """Seconds until the earliest job scheduled in PostgreSQL is due (<= 0: due now);
        None if none is scheduled."""
        row = self._one("next_scheduled_due")
        return float(row["due_in_s"]) if row else None

    # -- maintenance -----------------------------------------------------------------------

    def count_expired_leases(self) -> int:
        return self._count("count_expired_leases")

    def count_due_for_dispatch(self, grace_s: float) -> int:
        return self._count("count_due_for_dispatch", {"grace_s": grace_s})

    def count_scheduled_due(self) -> int:
        return self._count("count_scheduled_due")

    def count_old_attempts(self, days: int) -> int:
        return self._count("count_old_attempts", {"days": days})

    def delete_old_attempts(self, days: int, limit: int) -> int:
        return self._rowcount("delete_old_attempts", {"days": days, "limit": limit})

    # -- refunds (inside orch.refund()'s transaction) --------------------------------------

    # (``conn`` may be the application's own connection: rows are read as dicts whatever its
    # row factory, as in insert_job.)

    def lock_charge_for_refund(self, conn: Conn, charge_id: str) -> Job | None:
        return _job_on(conn, "lock_charge_for_refund", {"id": charge_id})

    def reserve_refund(self, conn: Conn, charge_id: str, amount: int) -> Job | None:
        return _job_on(conn, "reserve_refund", {"id": charge_id, "amount": amount})

    # -- captures, voids and cancels (inside orch.capture()'s and orch.cancel()'s transaction) --

    def reserve_capture(self, conn: Conn, charge_id: str, amount: int) -> Job | None:
        """Reserve ``amount`` for the charge's one capture (queries: reserve_capture); None
        when the charge is not an uncaptured authorization within its deadline, the amount is
        over the authorized one, or a capture or void of it is live or succeeded."""
        return _job_on(conn, "reserve_capture", {"id": charge_id, "amount": amount})

    def live_settler(self, conn: Conn, charge_id: str) -> Job | None:
        """The charge's capture or void job that is live or succeeded, if any."""
        return _job_on(conn, "live_settler", {"id": charge_id})

    def count_voids(self, conn: Conn, charge_id: str) -> int:
        cursor = conn.cursor(row_factory=dict_row)
        row = cursor.execute(q("count_voids"), {"id": charge_id}).fetchone()
        return int(row["n"]) if row else 0

    def cancel_job(
        self, conn: Conn, job_id: str, *, actor: str, reason: str, same_key_reason: str
    ) -> Job | None:
        """Compare-and-set ``pending``/``retrying`` -> ``cancelled`` (queries: cancel_job); None
        when the job is in another state or the provider may hold a result for its key."""
        args = {"id": job_id, "actor": actor, "reason": reason, "same_key_reason": same_key_reason}
        return _job_on(conn, "cancel_job", args)

    # -- provider webhook events -----------------------------------------------------------

    def insert_webhook_event(self, args: dict[str, Any]) -> int | None:
        """Store a verified event once; None when (provider, event id) is already stored."""
        row = self._one("insert_webhook_event", {**args, "payload": Jsonb(args["payload"])})
        return int(row["id"]) if row else None

    def webhook_event(self, row_id: int) -> WebhookEvent | None:
        return _event(self._one("webhook_event_by_id", {"id": row_id}))

    def webhook_event_by_event_id(self, provider: str, event_id: str) -> WebhookEvent | None:
        args = {"provider": provider, "event_id": event_id}
        return _event(self._one("webhook_event_by_event_id", args))

    def claim_webhook_event(self, row_id: int, lease_s: float) -> WebhookEvent | None:
        return _event(self._one("claim_webhook_event", {"id": row_id, "lease_s": lease_s}))

    def finish_webhook_event(
        self, row_id: int, status: EventStatus, job_id: str | None, note: str
    ) -> WebhookEvent | None:
        args = {"id": row_id, "status": str(status), "job_id": job_id, "note": note}
        return _event(self._one("finish_webhook_event", args))

    def release_webhook_event(
        self, row_id: int, error: str, max_attempts: int
    ) -> WebhookEvent | None:
        args = {"id": row_id, "error": error, "max_attempts": max_attempts}
        return _event(self._one("release_webhook_event", args))

    def stale_webhook_events(self, grace_s: float, limit: int) -> list[int]:
        rows = self._all("stale_webhook_events", {"grace_s": grace_s, "limit": limit})
        return [int(r["id"]) for r in rows]

    def count_stale_webhook_events(self, grace_s: float) -> int:
        return self._count("count_stale_webhook_events", {"grace_s": grace_s})

    def list_webhook_events(self, args: dict[str, Any]) -> list[WebhookEvent]:
        return [WebhookEvent.from_row(r) for r in self._all("list_webhook_events", args)]

    def count_old_webhook_events(self, days: int) -> int:
        return self._count("count_old_webhook_events", {"days": days})

    def delete_old_webhook_events(self, days: int, limit: int) -> int:
        return self._rowcount("delete_old_webhook_events", {"days": days, "limit": limit})

    def job_by_provider_ref(self, provider: str, provider_ref: str) -> Job | None:
        args = {"provider": provider, "provider_ref": provider_ref}
        row = self._one("job_by_provider_ref", args)
        return Job.from_row(row) if row else None

    def settle_job_from_webhook(self, args: dict[str, Any]) -> bool:
        """Move a job forward on a verified event (queries: settle_job_from_webhook); False
        when the job was in none of ``args["from_states"]``."""
        return self._one("settle_job_from_webhook", args) is not None

    # -- broker dead letters ----------------------------------------------------------------

    def insert_broker_dead_letter(self, args: dict[str, Any]) -> bool:
        """Record a broker dead letter once; False when its message id was already recorded."""
        row = self._one("broker_dead_letter_insert", {**args, "message": Jsonb(args["message"])})
        return row is not None

    # -- settlements (orchestrator.maintenance.settlements) ----------------------------------

    def drain_settlements(
        self, limit: int, deliver: Callable[[list[tuple[str, str]]], object]
    ) -> int:
        """Take up to ``limit`` settles from the outbox as (job id, state), oldest first, and
        hand them to ``deliver`` before committing: if it raises, they stay for the next drain
        (so every settle is delivered at least once). Returns how many were taken."""
        with self.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            rows = cursor.execute(q("take_settlements"), {"limit": limit}).fetchall()
            if rows:
                deliver([(row["job_id"], row["state"]) for row in rows])
        return len(rows)

    def count_settlements(self) -> int:
        row = self._one("count_settlements")
        return int(row["n"]) if row else 0

    def due_in_s(self, job_id: str) -> float | None:
        """Seconds until a pending or retrying job is due (database clock); None otherwise."""
        row = self._one("due_in", {"id": job_id})
        return float(row["s"]) if row else None

    def job_state(self, job_id: str) -> str | None:
        """Only the state of a job (``wait()``'s cheap re-read); None when there is none."""
        row = self._one("job_state", {"id": job_id})
        return str(row["state"]) if row else None

    def add_waiter(self, job_id: str, waiter: str) -> str | None:
        """Register a waiter for the job's settle announcement (queries: add_waiter); the
        job's state, None when there is no such job."""
        row = self._one("add_waiter", {"id": job_id, "waiter": waiter})
        return str(row["state"]) if row else None

    def remove_waiter(self, job_id: str, waiter: str) -> None:
        self._rowcount("remove_waiter", {"id": job_id, "waiter": waiter})


def _event(row: Row | None) -> WebhookEvent | None:
    return WebhookEvent.from_row(row) if row else None


def _job_on(conn: Conn, name: str, args: dict[str, Any]) -> Job | None:
    """One job row (or None) from the named query run on ``conn``, read as a dict."""
    row = conn.cursor(row_factory=dict_row).execute(q(name), args).fetchone()
    return Job.from_row(row) if row else None


# -- bulk enqueue (orchestrator.app.bulk: Orchestrator.charge_many) -------------------------


def insert_jobs_bulk(
    conn: Conn, rows: Sequence[dict[str, Any]], defaults: dict[str, Any]
) -> list[Job]:
    """Insert a batch in one statement (queries: insert_jobs_bulk): ``rows`` job rows with
    distinct keys, ``defaults`` the batch's max_attempts, horizon_s and changed_by. Returns the
    jobs created; a key already taken is skipped (read it with :func:`jobs_by_keys`).

    Every row of one statement gets the same defaults (``now()`` is the transaction's time):
    only its id and what was sent differ. So one created row is read back whole and the
    others are that row with their own id and columns, instead of 10,000 rows sent back and
    parsed (tests/integration/test_charge_many.py compares them with the stored rows)."""
    batch = json.dumps([{name: row[name] for name in _BULK_COLUMNS} for row in rows])
    cursor = conn.cursor(row_factory=dict_row)
    cursor.execute(q("insert_jobs_bulk"), {**defaults, "batch": batch})
    created = cursor.fetchall()
    if not created:
        return []
    template = cursor.execute(q("job_by_id"), {"id": created[0]["id"]}).fetchone()
    assert template is not None  # inserted by this transaction
    sent = {row["idempotency_key"]: row for row in rows}
    jobs = []
    for new in created:
        mine = sent[new["idempotency_key"]]
        values = {**template, **{name: mine[name] for name in _BULK_COLUMNS}, "id": new["id"]}
        jobs.append(Job.from_row(values))
    return jobs


# The columns of a row that insert_jobs_bulk sends (the rest are the batch's defaults).
_BULK_COLUMNS = (
    "kind",
    "provider",
    "idempotency_key",
    "fingerprint",
    "amount",
    "currency",
    "customer",
    "payment_method",
    "parent_job_id",
    "params",
)


def jobs_by_keys(conn: Conn, keys: Sequence[str]) -> list[Job]:
    cursor = conn.cursor(row_factory=dict_row)
    return [Job.from_row(r) for r in cursor.execute(q("jobs_by_keys"), {"keys": keys})]


def notify_dispatch_many(conn: Conn, job_ids: Sequence[str]) -> None:
    """``notify_dispatch`` for each job, in one statement (delivered at the caller's commit)."""
    conn.execute(q("notify_dispatch_many"), {"ids": list(job_ids)})


def savepoint(conn: Conn) -> AbstractContextManager[Transaction]:
    """``with savepoint(conn):`` work on the caller's ``conn`` as one unit: a savepoint of its
    open transaction (rolled back alone on error, committed with the caller's transaction). A
    connection in autocommit gets a transaction of its own; one not in autocommit but idle
    first has its implicit transaction opened (queries: open_transaction), left for the caller
    to commit, where ``conn.transaction()`` alone would commit it at the end of the block."""
    if not conn.autocommit and conn.info.transaction_status == TransactionStatus.IDLE:
        conn.execute(q("open_transaction"))
    return conn.transaction()
