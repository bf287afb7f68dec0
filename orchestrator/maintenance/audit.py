"""The ledger audit: the provider's objects of a window compared with the jobs, drift recorded.

:func:`run_audit` (``orchestrator audit --since DURATION`` and the clock) reads, in this order:

1. the charge and refund jobs created since ``since`` (a job succeeded by now has its
   successful object made by now, so it is listed next);
2. through Stripe's consistent lists, every PaymentIntent and Refund naming a job created
   since ``since`` minus :data:`CREATED_SLACK_S` (clock skew between PostgreSQL and Stripe),
   for the platform account and each Connect account the window's jobs name;
3. the jobs those objects name, again, for their state after the listing;

then compares them (:func:`orchestrator.ops.ledger.compare`, pure) and records each finding in
``ledger_drift`` (source ``audit``; one found before adds nothing). Each run is a row of
``ledger_audits``.

:class:`LedgerAudit` is the clock's task: when its last audit started more than
``ORCHESTRATOR_AUDIT_INTERVAL_S`` ago (0: never), it audits from the start of its last
completed audit minus an overlap (an object whose job was still in flight then is compared
again), the first window capped at :data:`FIRST_WINDOW`. A failed audit is tried again after
:data:`RETRY_AFTER_FAILURE_S`. The audit runs inside the clock's pass: a large window delays
the pass's other tasks by as long as the listing takes.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from orchestrator.config import Settings
from orchestrator.db import OpsStore
from orchestrator.errors import ConfigError, ProviderUnavailable
from orchestrator.logs import get_logger
from orchestrator.ops.ledger import (
    DriftSource,
    Finding,
    LedgerJob,
    ProviderObject,
    compare,
)

if TYPE_CHECKING:
    from orchestrator.api import Orchestrator

log = get_logger(__name__)

PROVIDER = "stripe"
# Objects are listed from this long before the window: Stripe's clock is not ours.
CREATED_SLACK_S = 300
# The clock's first audit looks this far back; later ones start at the previous start.
FIRST_WINDOW = timedelta(days=2)
# Each clock audit starts this much before the previous one did (at most the interval), so
# every object is compared twice, once more after jobs in flight at the first audit ended.
MAX_OVERLAP = timedelta(days=1)
RETRY_AFTER_FAILURE_S = 900.0
MAX_ERROR_CHARS = 2000

# Lists a provider account's objects created since a time (None: the platform account).
Lister = Callable[[datetime, str | None], list[ProviderObject]]


@dataclass(frozen=True, slots=True)
class AuditReport:
    """What one audit compared and found (``new`` of the findings were not recorded before)."""

    since: datetime
    objects: int
    jobs: int
    findings: list[Finding] = field(default_factory=list)
    new: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat(),
            "checked": {"objects": self.objects, "jobs": self.jobs},
            "drift": [f.to_dict() for f in self.findings],
        }


def stripe_lister(orch: Orchestrator) -> Lister:
    """The configured Stripe provider's listing (ConfigError without ``STRIPE_API_KEY``)."""
    from orchestrator.providers.stripe import StripeProvider

    provider = orch.providers()[PROVIDER]
    if not isinstance(provider, StripeProvider):
        raise ConfigError("the stripe provider cannot list its objects")
    return provider.list_objects


def run_audit(ops_store: OpsStore, lister: Lister, since: datetime, ran_by: str) -> AuditReport:
    """Audit the window from ``since`` to now (see the module's docstring)."""
    audit = ops_store.start_audit(ran_by, since)
    try:
        report = _audit(ops_store, lister, since)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
        ops_store.finish_audit(
            audit["id"], {"objects": None, "jobs": None, "drift_count": None, "error": error}
        )
        log.warning("ledger.audit_failed", ran_by=ran_by, error=type(exc).__name__)
        raise
    ops_store.finish_audit(
        audit["id"],
        {
            "objects": report.objects,
            "jobs": report.jobs,
            "drift_count": len(report.findings),
            "error": None,
        },
    )
    level = log.error if report.findings else log.info
    level(
        "ledger.audited",
        ran_by=ran_by,
        since=since.isoformat(),
        objects=report.objects,
        jobs=report.jobs,
        drift=len(report.findings),
        new=report.new,
    )
    return report


def _audit(ops_store: OpsStore, lister: Lister, since: datetime) -> AuditReport:
    rows = ops_store.ledger_jobs_created_since(since, PROVIDER)
    window = [LedgerJob.from_row(r) for r in rows]
    accounts: set[str | None] = {None, *(r["stripe_account"] for r in rows)}
    listed_since = since - timedelta(seconds=CREATED_SLACK_S)
    objects: list[ProviderObject] = []
    for account in sorted(accounts, key=lambda a: a or ""):
        objects += lister(listed_since, account)
    named_ids = sorted({o.job_id for o in objects if _is_uuid(o.job_id)})
    named = {j.id: j for j in map(LedgerJob.from_row, ops_store.ledger_jobs_by_id(named_ids))}
    findings = compare(objects, window, named)
    new = ops_store.record_drift([f.row(DriftSource.AUDIT) for f in findings])
    return AuditReport(since, len(objects), len(window), findings, new)


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


@dataclass(slots=True)
class LedgerAudit:
    """The clock's audit: runs when due (module docstring); ``run_once`` returns 1 when it
    audited, ``preview`` 1 when an audit is due."""

    name: ClassVar[str] = "ledger_audits"
    ops_store: OpsStore
    settings: Settings
    lister: Callable[[], Lister]
    ran_by: ClassVar[str] = "clock"

    def run_once(self) -> int:
        since = self._due_since()
        if since is None:
            return 0
        try:
            run_audit(self.ops_store, self.lister(), since, self.ran_by)
        except ProviderUnavailable:  # recorded on its ledger_audits row and logged: try later
            return 0
        return 1

    def preview(self) -> int:
        return 0 if self._due_since() is None else 1

    def _due_since(self) -> datetime | None:
        """The window's start when an audit is due now, else None."""
        interval_s = self.settings.audit_interval_s
        if interval_s <= 0 or self.settings.stripe_api_key is None:
            return None
        now = self.ops_store.now()
        last = self.ops_store.last_audit(self.ran_by)
        if last is not None:
            failed = last["error"] is not None or last["finished_at"] is None
            wait_s = min(interval_s, RETRY_AFTER_FAILURE_S) if failed else interval_s
            if (now - last["started_at"]).total_seconds() < wait_s:
                return None
        done = self.ops_store.last_audit(self.ran_by, completed=True)
        if done is None:
            return now - FIRST_WINDOW
        overlap = min(timedelta(seconds=interval_s), MAX_OVERLAP)
        started: datetime = done["started_at"]
        return started - overlap
