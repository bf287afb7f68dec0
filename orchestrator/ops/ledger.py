"""The ledger checked against the provider: what drift is, and the pure comparison.

The provider's objects (every PaymentIntent and Refund carrying
``metadata.orchestrator_job_id``, listed by :mod:`orchestrator.providers.stripe.audit`) are
compared with the jobs by :func:`compare`, with no IO. Each disagreement is a
:class:`Finding` of one :class:`DriftKind`:

* ``success_without_succeeded_job``: the provider holds a successful object whose metadata
  names a job that is missing (or of another kind), or that ended ``failed``, ``dead`` or
  ``cancelled``. A job still in flight (pending, running, retrying, unknown, processing)
  is not drift: its outcome is on its way.
* ``succeeded_without_object``: a succeeded charge or refund job whose ``provider_ref`` is not
  among the provider's successful objects for it.
* ``amount_mismatch``: a successful object whose amount or currency differ from its job's.
* ``duplicate_success``: more than one successful object for one job (one finding for each
  object beyond the one the job refers to, or the oldest).

A PaymentIntent is successful when ``succeeded`` or ``requires_capture`` (money taken or
held); a Refund when ``succeeded`` (a pending refund is in flight).

The orchestration (listing, reading jobs, recording findings in ``ledger_drift``) is
:mod:`orchestrator.maintenance.audit`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from orchestrator.models import JobKind, JobState

# ledger_drift.detail is at most this long (schema.sql).
MAX_DETAIL_CHARS = 500
# A DURATION of the audit's --since: a whole number and a unit.
_DURATION_RE = re.compile(r"^\s*(\d{1,9})\s*([smhd])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_DURATION = timedelta(days=3650)
# Job states whose outcome is final and not a success: a provider success for them is drift.
ENDED_UNSUCCESSFUL = frozenset({JobState.FAILED, JobState.DEAD, JobState.CANCELLED})
# What a provider object of each job kind is called in a finding's detail.
OBJECT_LABEL = {JobKind.CHARGE: "payment_intent", JobKind.REFUND: "refund"}


class DriftKind(StrEnum):
    SUCCESS_WITHOUT_SUCCEEDED_JOB = "success_without_succeeded_job"
    SUCCEEDED_WITHOUT_OBJECT = "succeeded_without_object"
    AMOUNT_MISMATCH = "amount_mismatch"
    DUPLICATE_SUCCESS = "duplicate_success"


class DriftSource(StrEnum):
    WEBHOOK = "webhook"
    AUDIT = "audit"


@dataclass(frozen=True, slots=True)
class ProviderObject:
    """One provider object that names a job: a PaymentIntent (``kind`` charge) or a Refund."""

    provider: str
    kind: JobKind
    ref: str
    job_id: str
    amount: int | None
    currency: str | None
    status: str
    successful: bool
    created: int  # unix seconds, the provider's clock
    account: str | None = None

    @property
    def label(self) -> str:
        return f"{OBJECT_LABEL[self.kind]} {self.ref}"


@dataclass(frozen=True, slots=True)
class LedgerJob:
    """What the comparison needs of a charge or refund job."""

    id: str
    kind: JobKind
    state: JobState
    amount: int | None
    currency: str | None
    provider_ref: str | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> LedgerJob:
        return cls(
            id=str(row["id"]),
            kind=JobKind(row["kind"]),
            state=JobState(row["state"]),
            amount=row["amount"],
            currency=row["currency"],
            provider_ref=row["provider_ref"],
        )


@dataclass(frozen=True, slots=True)
class Finding:
    """One disagreement between the ledger and the provider."""

    kind: DriftKind
    job_id: str | None
    provider_ref: str | None
    detail: str
    provider: str = "stripe"

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "kind": str(self.kind),
            "provider_ref": self.provider_ref,
            "detail": self.detail,
        }

    def row(self, source: DriftSource) -> dict[str, Any]:
        """The ``ledger_drift`` row that records it."""
        return {
            "provider": self.provider,
            "kind": str(self.kind),
            "job_id": self.job_id,
            "provider_ref": self.provider_ref,
            "detail": self.detail[:MAX_DETAIL_CHARS],
            "source": str(source),
        }


def parse_duration(text: str) -> timedelta:
    """``90m``, ``24h``, ``7d``, ``3600s`` as a timedelta; ValueError naming the problem."""
    match = _DURATION_RE.match(text)
    if match is None:
        raise ValueError(f"expected a duration like 90m, 24h, 7d or 3600s, got {text!r}")
    seconds = int(match.group(1)) * _UNIT_S[match.group(2)]
    if seconds <= 0:
        raise ValueError("the duration must be positive")
    if seconds > MAX_DURATION.total_seconds():
        raise ValueError(f"the duration must be at most {MAX_DURATION.days}d")
    return timedelta(seconds=seconds)


def compare(
    objects: Iterable[ProviderObject],
    window_jobs: Iterable[LedgerJob],
    named_jobs: Mapping[str, LedgerJob] | None = None,
) -> list[Finding]:
    """Every disagreement between the provider's ``objects`` and the ledger.

    ``window_jobs`` are the charge and refund jobs created in the audited window, read
    *before* the objects were listed: a job succeeded then has its successful object listed.
    ``named_jobs`` are the jobs the objects name, by id, read *after* the listing (their
    freshest state; an id absent from it names no job of ours); by default the window jobs.
    """
    window = list(window_jobs)
    named = {j.id: j for j in window} if named_jobs is None else dict(named_jobs)
    successes: dict[tuple[str, JobKind], list[ProviderObject]] = {}
    for obj in objects:
        if obj.successful:
            successes.setdefault((obj.job_id, obj.kind), []).append(obj)
    findings: list[Finding] = []
    for (job_id, kind), found in successes.items():
        found.sort(key=lambda o: (o.created, o.ref))
        job = named.get(job_id)
        if job is not None and job.kind is not kind:
            job = None  # an object naming a job of another kind names no job of its kind
        findings += _successes_for(job_id, kind, job, found)
    for job in window:
        if job.state is JobState.SUCCEEDED and job.kind in OBJECT_LABEL:
            finding = _unbacked(job, successes.get((job.id, job.kind), []))
            if finding is not None:
                findings.append(finding)
    unique = {(f.kind, f.job_id, f.provider_ref): f for f in findings}
    return sorted(unique.values(), key=lambda f: (f.job_id or "", f.kind, f.provider_ref or ""))


def _successes_for(
    job_id: str, kind: JobKind, job: LedgerJob | None, found: Sequence[ProviderObject]
) -> list[Finding]:
    """What the successful objects of one kind (oldest first) naming ``job_id`` say."""
    findings: list[Finding] = []
    for obj in found:
        if job is None:
            detail = f"{obj.label} is {obj.status} but no {kind} job {job_id} exists"
            findings.append(_finding(DriftKind.SUCCESS_WITHOUT_SUCCEEDED_JOB, job_id, obj, detail))
            continue
        if job.state in ENDED_UNSUCCESSFUL:
            detail = f"{obj.label} is {obj.status} but the job is {job.state}"
            findings.append(_finding(DriftKind.SUCCESS_WITHOUT_SUCCEEDED_JOB, job_id, obj, detail))
        if obj.amount != job.amount or (obj.currency or "").lower() != (job.currency or ""):
            detail = (
                f"{obj.label} is {obj.amount} {obj.currency}, the job {job.amount} {job.currency}"
            )
            findings.append(_finding(DriftKind.AMOUNT_MISMATCH, job_id, obj, detail))
    if len(found) > 1:
        refs = [o.ref for o in found]
        kept = job.provider_ref if job is not None and job.provider_ref in refs else refs[0]
        for obj in found:
            if obj.ref != kept:
                detail = (
                    f"{len(found)} successful {OBJECT_LABEL[kind]}s for one job: "
                    f"{obj.ref} besides {kept}"
                )
                findings.append(_finding(DriftKind.DUPLICATE_SUCCESS, job_id, obj, detail))
    return findings


def _unbacked(job: LedgerJob, found: Sequence[ProviderObject]) -> Finding | None:
    """A succeeded job whose own object is not among its successful ones: drift."""
    if job.provider_ref is not None and job.provider_ref in {o.ref for o in found}:
        return None
    label = OBJECT_LABEL[job.kind]
    detail = f"the job succeeded with {job.provider_ref or 'no reference'}"
    detail += f" but the provider holds no successful {label} for it"
    if found:
        detail = f"the job succeeded with {job.provider_ref or 'no reference'}, which is not a "
        detail += f"successful {label} (successful: {', '.join(o.ref for o in found)})"
    return Finding(DriftKind.SUCCEEDED_WITHOUT_OBJECT, job.id, job.provider_ref, detail)


def _finding(kind: DriftKind, job_id: str, obj: ProviderObject, detail: str) -> Finding:
    return Finding(kind, job_id, obj.ref, detail, obj.provider)


def drift_to_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """A ``ledger_drift`` row, JSON-ready."""
    found_at = row["found_at"]
    return {
        "id": int(row["id"]),
        "found_at": found_at.isoformat() if isinstance(found_at, datetime) else found_at,
        "provider": row["provider"],
        "kind": row["kind"],
        "job_id": row["job_id"],
        "provider_ref": row["provider_ref"],
        "source": row["source"],
        "detail": row["detail"],
    }
