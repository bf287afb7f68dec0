"""The operators' store: listings, replay / adopt / discard, the audit trail, metrics' reads,
broker dead letters and the demo's read-outs (``queries/ops.sql``), and the ledger audit's
jobs, drift and runs (``queries/ledger.sql``). Shares the job store's pool.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from orchestrator.db.pool import Queries, Row, connect, q
from orchestrator.models import LIVE_STATES, Job


class OpsStore(Queries):
    """One named statement a method; listings page by keyset on (created_at, id)."""

    # -- listings --------------------------------------------------------------------------

    def page_jobs(self, args: dict[str, Any], *, dead_only: bool) -> list[Job]:
        rows = self._all("ops_list_dead" if dead_only else "ops_list_jobs", args)
        return [Job.from_row(r) for r in rows]

    def count_dead(self, args: dict[str, Any]) -> int:
        return self._count("ops_count_dead", args)

    def actions_for(self, target: str) -> list[Row]:
        """The audit trail of one target (a job id or a provider name), oldest first."""
        return self._all("ops_actions_for_target", {"target": target})

    def attempts_per_minute(self, window_s: float) -> list[Row]:
        return self._all("ops_attempts_per_minute", {"window_s": window_s})

    def now(self) -> datetime:
        row = self._one("db_now")
        assert row is not None
        now: datetime = row["db_now"]
        return now

    # -- moves, each audited in the same statement ----------------------------------------

    def adopt(self, args: dict[str, Any]) -> Job | None:
        return _job(self._one("ops_adopt_job", _json(args, "details")))

    def replay(self, args: dict[str, Any]) -> Job | None:
        return _job(self._one("ops_replay_job", _json(args, "details")))

    def discard(self, args: dict[str, Any]) -> Job | None:
        return _job(self._one("ops_discard_job", _json(args, "details")))

    def audit(
        self, actor: str, action: str, target: str, reason: str | None, details: dict[str, Any]
    ) -> None:
        self._one("ops_audit", _audit_args(actor, action, target, reason, details))

    # -- metrics and broker dead letters ---------------------------------------------------

    def attempt_outcomes(self, window_s: float) -> list[Row]:
        return self._all("metrics_attempt_outcomes", {"window_s": window_s})

    def attempt_latency(self, window_s: float, bounds_ms: list[int]) -> list[Row]:
        return self._all("metrics_attempt_latency", {"window_s": window_s, "bounds_ms": bounds_ms})

    def dead_letters_by_action(self) -> dict[str, int]:
        return {r["action"]: int(r["n"]) for r in self._all("broker_dead_letters_by_action")}

    def recent_dead_letters(self, limit: int) -> list[Row]:
        return self._all("broker_dead_letters_recent", {"limit": limit})

    # -- the ledger checked against the provider (queries/ledger.sql) ------------------------

    def ledger_jobs_created_since(self, since: datetime, provider: str) -> list[Row]:
        return self._all("ledger_jobs_created_since", {"since": since, "provider": provider})

    def ledger_jobs_by_id(self, ids: list[str]) -> list[Row]:
        return self._all("ledger_jobs_by_id", {"ids": ids}) if ids else []

    def record_drift(self, rows: list[dict[str, Any]]) -> int:
        """Record findings (``ledger_drift`` rows); returns how many were new."""
        if not rows:
            return 0
        columns = ("provider", "kind", "job_id", "provider_ref", "detail", "source")
        args = {c: [r[c] for r in rows] for c in columns}
        return len(self._all("ledger_drift_insert", args))

    def recent_drift(self, limit: int) -> list[Row]:
        return self._all("ledger_drift_recent", {"limit": limit})

    def drift_by_kind(self) -> dict[str, int]:
        return {r["kind"]: int(r["n"]) for r in self._all("ledger_drift_by_kind")}

    def start_audit(self, ran_by: str, since: datetime) -> Row:
        row = self._one("ledger_audit_start", {"ran_by": ran_by, "since": since})
        assert row is not None
        return row

    def finish_audit(self, audit_id: int, args: dict[str, Any]) -> Row | None:
        return self._one("ledger_audit_finish", {"id": audit_id, **args})

    def last_audit(self, ran_by: str, *, completed: bool = False) -> Row | None:
        return self._one("ledger_audit_last", {"ran_by": ran_by, "completed": completed})

    # -- the demo's read-outs --------------------------------------------------------------

    def demo_states(self, ids: list[str]) -> list[Row]:
        return self._all("demo_states", {"ids": ids})

    def demo_jobs(self, ids: list[str]) -> list[Row]:
        return self._all("demo_jobs", {"ids": ids})

    # -- /metrics: reads whose cost follows what is live, not the history -----------------

    def live_jobs_by_state(self) -> dict[str, int]:
        """Jobs in each of :data:`~orchestrator.models.LIVE_STATES` (an index range each over
        live rows only), 0 when none."""
        rows = self._all("metrics_live_jobs", {"states": [str(s) for s in LIVE_STATES]})
        found = {r["state"]: int(r["n"]) for r in rows}
        return {str(s): found.get(str(s), 0) for s in LIVE_STATES}

    def dlq_size(self) -> int:
        """Jobs in ``dead``, over the DLQ's partial index."""
        return self._count("metrics_dlq_size")

    def settled_totals(self) -> list[Row]:
        """Settles ever, one row per (kind, provider, state) with its count ``n``: the drained
        ``job_settled_totals`` plus the ``job_settlements`` outbox, read in one snapshot."""
        return self._all("metrics_settled_totals")


def _job(row: Row | None) -> Job | None:
    return Job.from_row(row) if row else None


def _json(args: dict[str, Any], name: str) -> dict[str, Any]:
    return {**args, name: Jsonb(args[name])}


def _audit_args(
    actor: str, action: str, target: str, reason: str | None, details: dict[str, Any]
) -> dict[str, Any]:
    """The parameters of ``ops_audit``: one ``operator_actions`` row."""
    return {
        "actor": actor,
        "action": action,
        "target": target,
        "reason": reason,
        "details": Jsonb(details),
    }


@contextmanager
def audited(
    url: str, actor: str, action: str, target: str, reason: str, details: dict[str, Any]
) -> Iterator[None]:
    """Record an operator's action and do it: the audit row commits only if the body returns
    (for actions outside PostgreSQL, such as a breaker override in Redis)."""
    with connect(url) as conn:
        conn.execute(q("ops_audit"), _audit_args(actor, action, target, reason, details))
        yield
