"""What operators select and say, checked: job filters, pages and their cursors, job ids,
actor names and reasons. Pure: nothing here reads a database or calls a provider."""

from __future__ import annotations

import base64
import binascii
import enum
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from orchestrator.errors import ValidationError
from orchestrator.models import Job, JobKind, JobState

_E = TypeVar("_E", bound=enum.StrEnum)

# Pages hold at most this many jobs: enough for a screen, small enough to stay one index scan.
MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 50
# Column limits of jobs.changed_by and jobs.change_reason.
MAX_ACTOR_CHARS = 200
MAX_REASON_CHARS = 500

# The first page's cursor: after every real (created_at, id).
_FIRST_CREATED_AT = "infinity"
_FIRST_ID = "ffffffff-ffff-ffff-ffff-ffffffffffff"


@dataclass(frozen=True, slots=True)
class JobFilter:
    """What a listing or a bulk replay selects. Build from user input with :meth:`parse`."""

    state: JobState | None = None
    kind: JobKind | None = None
    provider: str | None = None
    error_code: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None

    @classmethod
    def parse(
        cls,
        *,
        state: str | None = None,
        kind: str | None = None,
        provider: str | None = None,
        error_code: str | None = None,
        created_after: str | datetime | None = None,
        created_before: str | datetime | None = None,
    ) -> JobFilter:
        return cls(
            state=_enum(JobState, "state", state),
            kind=_enum(JobKind, "kind", kind),
            provider=_word("provider", provider),
            error_code=_word("error_code", error_code),
            created_after=_when("since", created_after),
            created_before=_when("until", created_before),
        )

    def args(self) -> dict[str, Any]:
        return {
            "state": str(self.state) if self.state else None,
            "kind": str(self.kind) if self.kind else None,
            "provider": self.provider,
            "error_code": self.error_code,
            "created_after": self.created_after.isoformat() if self.created_after else "-infinity",
            "created_before": self.created_before.isoformat()
            if self.created_before
            else "infinity",
        }

    def describe(self) -> dict[str, str]:
        """The filter's set fields, for audit rows and reports."""
        out: dict[str, str] = {}
        for name in ("state", "kind", "provider", "error_code"):
            value = getattr(self, name)
            if value is not None:
                out[name] = str(value)
        if self.created_after:
            out["since"] = self.created_after.isoformat()
        if self.created_before:
            out["until"] = self.created_before.isoformat()
        return out


@dataclass(frozen=True, slots=True)
class Page:
    jobs: list[Job]
    next_cursor: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"jobs": [j.to_dict() for j in self.jobs], "next_cursor": self.next_cursor}


# -- cursors and input ---------------------------------------------------------------------


def encode_cursor(job: Job) -> str:
    raw = json.dumps([job.created_at.isoformat(), job.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> tuple[str, str]:
    if not cursor:
        return _FIRST_CREATED_AT, _FIRST_ID
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created_at, job_id = json.loads(base64.urlsafe_b64decode(padded.encode()))
        # Normalized: Python reads forms PostgreSQL does not (ISO weeks such as 2024-W01-1,
        # offsets past PostgreSQL's +-15:59).
        return _utc(datetime.fromisoformat(created_at)).isoformat(), job_uuid(job_id)
    except (ValueError, TypeError, OverflowError, binascii.Error, json.JSONDecodeError):
        raise ValidationError("cursor is malformed") from None


def page_size(limit: int | None) -> int:
    value = DEFAULT_PAGE_SIZE if limit is None else limit
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PAGE_SIZE:
        raise ValidationError(f"limit must be an integer from 1 to {MAX_PAGE_SIZE}")
    return value


def job_uuid(value: object) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise ValidationError("job id must be a UUID") from None


def actor_name(value: str) -> str:
    value = value.strip()
    if not value or len(value) > MAX_ACTOR_CHARS or not value.isprintable():
        raise ValidationError(f"actor must be 1 to {MAX_ACTOR_CHARS} printable characters")
    return value


def reason_text(value: str | None, *, required: bool) -> str | None:
    text = (value or "").strip()
    if not text:
        if required:
            raise ValidationError("reason is required")
        return None
    if len(text) > MAX_REASON_CHARS or not text.isprintable():
        raise ValidationError(f"reason must be at most {MAX_REASON_CHARS} printable characters")
    return text


def _enum(cls: type[_E], name: str, value: str | None) -> _E | None:
    if value is None or value == "":
        return None
    try:
        return cls(value)
    except ValueError:
        allowed = ", ".join(str(m) for m in cls)
        raise ValidationError(f"{name} must be one of: {allowed}") from None


def _word(name: str, value: str | None) -> str | None:
    if value is None or value == "":
        return None
    if len(value) > 100 or not value.replace("_", "").replace("-", "").isalnum():
        raise ValidationError(f"{name} must be letters, digits, '_' or '-' (at most 100)")
    return value


def _when(name: str, value: str | datetime | None) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        parsed = value
    else:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ValidationError(f"{name} must be an ISO 8601 date or time") from None
    if parsed.tzinfo is None:
        raise ValidationError(f"{name} must carry a time zone (e.g. 2024-05-01T00:00:00Z)")
    try:
        return _utc(parsed)
    except OverflowError:
        raise ValidationError(f"{name} is out of range") from None


def _utc(moment: datetime) -> datetime:
    """``moment`` in UTC: PostgreSQL refuses UTC offsets past +-15:59, which Python accepts
    (up to +-23:59); a naive moment is taken as UTC."""
    return moment.astimezone(UTC) if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
