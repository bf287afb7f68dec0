"""Rows as frozen dataclasses, and the SQL enums mirrored as Python enums."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any


class JobState(enum.StrEnum):
    """Mirror of the ``job_state`` SQL enum (``schema.sql`` explains each)."""

    PENDING = "pending"
    RUNNING = "running"
    RETRYING = "retrying"
    UNKNOWN = "unknown"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD = "dead"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.DEAD, JobState.CANCELLED})


class JobKind(enum.StrEnum):
    CHARGE = "charge"
    REFUND = "refund"
    EMAIL = "email"


class DeadReason(enum.StrEnum):
    """Why a job is ``dead`` (``jobs.dead_reason``): what an operator must weigh before a replay."""

    ATTEMPTS_EXHAUSTED = "attempts_exhausted"
    RETRY_HORIZON = "retry_horizon"
    AMBIGUOUS = "ambiguous"  # a provider without idempotency keys may have executed it
    STUCK_PENDING = "stuck_pending"
    UNRESOLVED = "unresolved"  # an unknown outcome could not be looked up before the horizon
    PROVIDER_UNCONFIGURED = "provider_unconfigured"  # no credentials for its provider


class EventStatus(enum.StrEnum):
    """Mirror of the ``webhook_status`` SQL enum: where a stored provider event stands."""

    RECEIVED = "received"
    PROCESSED = "processed"
    IGNORED = "ignored"
    FAILED = "failed"


class AttemptOutcome(enum.StrEnum):
    """Mirror of ``attempt_outcome``: how one provider call ended."""

    SUCCEEDED = "succeeded"
    PENDING = "pending"
    PERMANENT = "permanent"
    NOT_EXECUTED = "not_executed"
    AMBIGUOUS = "ambiguous"


_FIELD_NAMES: dict[type[Any], frozenset[str]] = {}


def _field_names(cls: type[Any]) -> frozenset[str]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = frozenset(f.name for f in fields(cls))
    return names


def _from_row(cls: type[Any], row: dict[str, Any]) -> Any:
    """``cls`` from a row: its own columns only, UUIDs as strings."""
    names = _field_names(cls)
    values = {k: str(v) if isinstance(v, uuid.UUID) else v for k, v in row.items() if k in names}
    return cls(**values)


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    kind: JobKind
    provider: str
    state: JobState
    idempotency_key: str
    fingerprint: str
    amount: int | None
    currency: str | None
    customer: str | None
    payment_method: str | None
    parent_job_id: str | None
    params: dict[str, Any]
    key_generation: int
    attempts: int
    max_attempts: int
    next_attempt_at: datetime
    deadline_at: datetime
    lease_owner: str | None
    lease_expires_at: datetime | None
    unknown_cause: str | None
    last_attempt_at: datetime | None
    dispatched_at: datetime | None
    provider_ref: str | None
    provider_status: str | None
    last_error_code: str | None
    last_error: str | None
    dead_reason: str | None
    changed_by: str
    change_reason: str
    created_at: datetime
    updated_at: datetime
    # Charges only: refunds reserved against this charge (schema.sql, jobs_refunds_within_amount).
    refunded_amount: int = 0

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Job:
        job: Job = _from_row(cls, row)
        object.__setattr__(job, "state", JobState(job.state))
        object.__setattr__(job, "kind", JobKind(job.kind))
        return job

    @property
    def metadata(self) -> dict[str, str]:
        meta: dict[str, str] = self.params.get("metadata") or {}
        return meta

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.isoformat() if isinstance(value, datetime) else value
        out["state"] = str(self.state)
        out["kind"] = str(self.kind)
        return out


@dataclass(frozen=True, slots=True)
class Attempt:
    id: int
    job_id: str
    attempt: int
    key_generation: int
    provider_key: str | None
    worker: str
    outcome: str
    error_class: str | None
    error_code: str | None
    http_status: int | None
    provider_request_id: str | None
    provider_ref: str | None
    duration_ms: int
    started_at: datetime
    finished_at: datetime

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Attempt:
        attempt: Attempt = _from_row(cls, row)
        return attempt


@dataclass(frozen=True, slots=True)
class Transition:
    id: int
    job_id: str
    from_state: str | None
    to_state: str
    changed_by: str
    reason: str
    at: datetime

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Transition:
        transition: Transition = _from_row(cls, row)
        return transition


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """A row of ``webhook_events`` (``payload`` only when read one at a time)."""

    id: int
    provider: str
    event_id: str
    type: str
    object_id: str | None
    job_id: str | None
    status: EventStatus
    attempts: int
    note: str | None
    last_error: str | None
    received_at: datetime
    processed_at: datetime | None
    payload: dict[str, Any] | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> WebhookEvent:
        event: WebhookEvent = _from_row(cls, row)
        object.__setattr__(event, "status", EventStatus(event.status))
        return event

    def to_dict(self) -> dict[str, Any]:
        return row_to_json(self)


def row_to_json(obj: Attempt | Transition | WebhookEvent) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        out[f.name] = value.isoformat() if isinstance(value, datetime) else value
    return out
