"""What receiving and processing provider webhooks pass around, shared by every provider.

A provider's module (``orchestrator.providers.<name>.webhooks``) turns a delivery into an
:class:`IncomingEvent` (or refuses it with :class:`WebhookRejected`) and, when the stored
event is processed, says what it means (:data:`Meaning`); ``orchestrator.webhooks`` does the
rest the same way for every provider.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

from orchestrator.errors import ValidationError
from orchestrator.models import EventStatus, JobKind
from orchestrator.providers.base import Outcome


class WebhookRejected(ValidationError):
    """A delivery refused before anything was stored; ``status`` is the HTTP answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def json_event(payload: bytes) -> dict[str, Any]:
    """A verified body as the JSON object every provider's event is; 400 otherwise."""
    try:
        data = json.loads(payload)
    except ValueError:
        raise WebhookRejected(400, "body is not JSON") from None
    if not isinstance(data, dict):
        raise WebhookRejected(400, "body is not an event object")
    return data


@dataclass(frozen=True, slots=True)
class IncomingEvent:
    """A verified delivery, parsed just enough to store it."""

    event_id: str
    type: str
    object_id: str | None
    payload: dict[str, Any]
    # The job named in the object's metadata, and whether the event reports that job's
    # success: a claim looks for such an event before it lets a new attempt call out.
    subject_job_id: str | None = None
    reports_success: bool = False


@dataclass(frozen=True, slots=True)
class Stored:
    row_id: int | None
    duplicate: bool


@dataclass(frozen=True, slots=True)
class Result:
    """What processing decided for one event."""

    status: EventStatus  # processed | ignored | failed
    note: str
    job_id: str | None = None


@dataclass(frozen=True, slots=True)
class ObjectReport:
    """The event reports the state of a provider object one of our jobs may have made."""

    label: str  # what the provider calls the object, for notes ("PaymentIntent")
    ref: str  # the object's provider id
    job_kind: JobKind  # only a job of this kind makes such objects
    job_id: str | None  # the job named in the object's metadata, if any
    amount: object  # as the object states them: checked against the job's
    currency: object
    # What the payload says the object's state means; None when order matters and the
    # object is looked up at the provider instead (its current state, not the sent one).
    read_outcome: Callable[[], Outcome] | None
    # The key generation of the request that made the object (from its metadata), if known:
    # a failure of an older generation says nothing about the job's current attempt.
    generation: int | None = None


@dataclass(frozen=True, slots=True)
class NoteReport:
    """The event is recorded on the event row, tied to its job, which keeps its state."""

    job_id: str | None  # the job named in the object's metadata, if any
    ref: str | None  # the provider id of the object the job made
    subject: str  # the object, as named when no job of ours matches
    note: str


# What a stored event means; a Result when it is decided without looking at any job.
Meaning: TypeAlias = ObjectReport | NoteReport | Result
