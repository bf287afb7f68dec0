"""Rows as frozen dataclasses, and the SQL enums mirrored as Python enums."""

from __future__ import annotations

import enum
import operator
import uuid
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, ClassVar, NamedTuple, Self, TypeAlias


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

# The states a job stays in for a while, each few rows at any time (dead until an operator
# acts): counting them reads only live rows. succeeded, failed and cancelled only grow with
# history, so they are reported as settles ever (job_settled_totals), never counted.
LIVE_STATES = (
    JobState.PENDING,
    JobState.RUNNING,
    JobState.RETRYING,
    JobState.UNKNOWN,
    JobState.PROCESSING,
    JobState.DEAD,
)


class JobKind(enum.StrEnum):
    CHARGE = "charge"
    REFUND = "refund"
    EMAIL = "email"
    CAPTURE = "capture"  # capture an authorized charge (charge(..., capture=False))
    VOID = "void"  # cancel an authorized, uncaptured charge at the provider


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


# Columns read as text that a row class holds as enums: column name -> enum.
_Enums: TypeAlias = dict[str, type[enum.StrEnum]]


class _Row:
    """Base of the row dataclasses: :meth:`from_row` reads one from a database row."""

    __slots__ = ()
    _enums: ClassVar[_Enums] = {}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Self:
        """An instance from a row: its own columns only, UUIDs as strings, enums as enums."""
        layout = _layout(cls)
        try:
            values = list(layout.getter(row))
        except KeyError:  # a row without some defaulted field: by name
            names = _field_names(cls)
            by_name = {k: v for k, v in row.items() if k in names}
            for name, kind in cls._enums.items():
                by_name[name] = kind(by_name[name])
            return cls(**{k: str(v) if type(v) is uuid.UUID else v for k, v in by_name.items()})
        for i, v in enumerate(values):
            if type(v) is uuid.UUID:
                values[i] = str(v)
        for i, kind in layout.enums:
            values[i] = kind(values[i])
        return cls(*values)


class _Layout(NamedTuple):
    """How :meth:`_Row.from_row` reads a class's fields from a row, in declaration order."""

    getter: Callable[[dict[str, Any]], tuple[Any, ...]]
    enums: tuple[tuple[int, type[enum.StrEnum]], ...]


_LAYOUTS: dict[type[Any], _Layout] = {}


def _layout(cls: type[_Row]) -> _Layout:
    layout = _LAYOUTS.get(cls)
    if layout is None:
        order = [f.name for f in fields(cls)]  # type: ignore[arg-type]
        getter = operator.itemgetter(*order)
        layout = _LAYOUTS[cls] = _Layout(
            getter if len(order) > 1 else lambda row: (getter(row),),
            tuple((order.index(name), kind) for name, kind in cls._enums.items()),
        )
    return layout


@dataclass(frozen=True, slots=True)
class Job(_Row):
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
    # On-session charges that need the customer: the PaymentIntent's next_action and
    # client_secret (schema.sql, provider_details). None otherwise.
    provider_details: dict[str, Any] | None = None
    # Authorize now, capture later (charge(..., capture=False); schema.sql, captured_amount):
    # None for a charge captured when it succeeded (or not succeeded yet), 0 for an
    # authorization waiting for its capture, the amount captured once its capture succeeded.
    captured_amount: int | None = None
    # When the provider voids an uncaptured authorization; no capture is accepted from then on.
    capture_before: datetime | None = None
    # The amount of the charge's live or succeeded capture job (schema.sql, capture_reserved).
    capture_reserved: int = 0

    _enums: ClassVar[_Enums] = {"state": JobState, "kind": JobKind}

    @property
    def metadata(self) -> dict[str, str]:
        meta: dict[str, str] = self.params.get("metadata") or {}
        return meta

    @property
    def captured(self) -> bool:
        """Whether this is a charge whose money is taken: succeeded, and captured when it
        succeeded or by its capture job since. False for an authorization not captured yet."""
        return (
            self.kind is JobKind.CHARGE
            and self.state is JobState.SUCCEEDED
            and (self.captured_amount is None or self.captured_amount > 0)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **row_to_json(self),
            "state": str(self.state),
            "kind": str(self.kind),
            "captured": self.captured,
        }


@dataclass(frozen=True, slots=True)
class Attempt(_Row):
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
    # The provider called; None on attempts recorded before failover existed (the job's).
    provider: str | None = None


@dataclass(frozen=True, slots=True)
class Transition(_Row):
    id: int
    job_id: str
    from_state: str | None
    to_state: str
    changed_by: str
    reason: str
    at: datetime


@dataclass(frozen=True, slots=True)
class WebhookEvent(_Row):
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

    _enums: ClassVar[_Enums] = {"status": EventStatus}

    def to_dict(self) -> dict[str, Any]:
        return row_to_json(self)


def row_to_json(obj: Job | Attempt | Transition | WebhookEvent) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        out[f.name] = value.isoformat() if isinstance(value, datetime) else value
    return out
