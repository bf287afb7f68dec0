"""The job store: every statement the hot path runs (enqueue, claim, settle, sweeps, refunds'
reservation, webhook events), one named query each (``queries/jobs.sql``, ``webhooks.sql``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from orchestrator.db.pool import Conn, Queries, Row, q
from orchestrator.models import Attempt, EventStatus, Job, JobState, Transition, WebhookEvent


class Settled(NamedTuple):
    """What a settle left: the job's new state and its latest error code."""

    state: JobState
    last_error_code: str | None


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
        args = {"refund_attempt": 0, **args}  # only a breaker denial gives the attempt back
        details = args.get("provider_details")
        args["provider_details"] = Jsonb(details) if details is not None else None
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

    def count_expired_leases(self) -> int:
        return self._count("count_expired_leases")

    def count_due_for_dispatch(self, grace_s: float) -> int:
        return self._count("count_due_for_dispatch", {"grace_s": grace_s})

    def count_old_attempts(self, days: int) -> int:
        return self._count("count_old_attempts", {"days": days})

    def delete_old_attempts(self, days: int, limit: int) -> int:
        return self._rowcount("delete_old_attempts", {"days": days, "limit": limit})

    # -- refunds (inside orch.refund()'s transaction) --------------------------------------

    def lock_charge_for_refund(self, conn: Conn, charge_id: str) -> Job | None:
        row = conn.execute(q("lock_charge_for_refund"), {"id": charge_id}).fetchone()
        return Job.from_row(row) if row else None

    def reserve_refund(self, conn: Conn, charge_id: str, amount: int) -> Job | None:
        row = conn.execute(q("reserve_refund"), {"id": charge_id, "amount": amount}).fetchone()
        return Job.from_row(row) if row else None

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


def _event(row: Row | None) -> WebhookEvent | None:
    return WebhookEvent.from_row(row) if row else None
