"""The operator surface: list and inspect jobs, and replay or discard dead ones.

Shared by the CLI (``orchestrator jobs ...``, ``orchestrator dlq ...``) and the ops HTTP API.
Every state change is one audited statement that checks the state it expects
(``ops_replay_job``, ``ops_adopt_job``, ``ops_discard_job`` in ``sql/queries.sql``).

Replaying a dead job never risks a second provider-side effect. The provider idempotency key
stays the same unless the earlier outcome is *proven* not to be a success, because:

* if no call with the current key can have reached the provider's memory (every attempt with
  it was ``not_executed`` below HTTP 500, and no claim went unrecorded), the same key is safe
  and :func:`plan_replay` keeps it;
* otherwise the provider may have saved something against the key: a success (then the job
  is adopted as ``succeeded``, nothing is called), a pending object (the replay waits), or a
  5xx or decline that the same key would replay forever. Only when a lookup made after the
  search grace finds no successful object does the replay move to the next key generation.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, TypeVar

from psycopg.types.json import Jsonb

from orchestrator.api import Orchestrator
from orchestrator.errors import (
    InvalidOperation,
    JobNotFound,
    ProviderUnavailable,
    ValidationError,
)
from orchestrator.logs import get_logger
from orchestrator.models import (
    Attempt,
    AttemptOutcome,
    Job,
    JobKind,
    JobState,
    Transition,
    row_to_json,
)
from orchestrator.providers.base import Outcome, Provider
from orchestrator.store import Row, q

log = get_logger(__name__)
_E = TypeVar("_E", bound=enum.StrEnum)

# Pages hold at most this many jobs: enough for a screen, small enough to stay one index scan.
MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 50
# The schema caps max_attempts at 100 (jobs_attempts_bounded, the CHECK on max_attempts).
MAX_ATTEMPTS_CEILING = 100
# Bulk replays go at most this fast unless told otherwise: each may cost a provider lookup
# and certainly costs a provider call soon after, so a burst must not trip rate limits.
DEFAULT_REPLAY_RATE_PER_S = 10.0
MAX_REPLAY_RATE_PER_S = 1000.0
# Column limits of jobs.changed_by and jobs.change_reason.
MAX_ACTOR_CHARS = 200
MAX_REASON_CHARS = 500

# The first page's cursor: after every real (created_at, id).
_FIRST_CREATED_AT = "infinity"
_FIRST_ID = "ffffffff-ffff-ffff-ffff-ffffffffffff"


class ReplayAction(enum.StrEnum):
    REPLAY = "replay"  # dead -> pending, dispatched
    ADOPT = "adopt"  # dead -> succeeded: the provider already holds the success
    SKIP = "skip"  # left dead, with the reason


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


@dataclass(frozen=True, slots=True)
class JobDetail:
    job: Job
    attempts: list[Attempt]
    transitions: list[Transition]
    actions: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.job.to_dict(),
            "attempt_history": [row_to_json(a) for a in self.attempts],
            "transitions": [row_to_json(t) for t in self.transitions],
            "operator_actions": self.actions,
        }


@dataclass(frozen=True, slots=True)
class ReplayPlan:
    """What replaying one dead job does, decided by :func:`plan_replay`."""

    action: ReplayAction
    reason: str
    generation_step: int = 0
    found: Outcome | None = None


@dataclass(frozen=True, slots=True)
class ReplayResult:
    job_id: str
    action: ReplayAction
    reason: str
    state: str
    key_generation: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "action": str(self.action),
            "reason": self.reason,
            "state": self.state,
            "key_generation": self.key_generation,
        }


@dataclass(frozen=True, slots=True)
class BulkReport:
    dry_run: bool
    filter: dict[str, str]
    results: list[ReplayResult] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out = {str(a): 0 for a in ReplayAction}
        for r in self.results:
            out[str(r.action)] += 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "filter": self.filter,
            "counts": self.counts(),
            "results": [r.to_dict() for r in self.results],
        }


# -- decisions (pure) ----------------------------------------------------------------------


def key_may_be_saved(job: Job, attempts: list[Attempt]) -> bool:
    """Could the provider hold a saved response for the job's current key generation?

    Not when every recorded call with it provably did not execute (429, 409, refused
    connection: never saved) and every claim has its attempt row. A claim without a row is a
    worker that died mid-call: that call may have reached the provider.
    """
    recorded = max((a.attempt for a in attempts), default=0)
    if job.attempts > recorded:
        return True
    for a in attempts:
        if a.key_generation != job.key_generation:
            continue
        if a.outcome != AttemptOutcome.NOT_EXECUTED or (a.http_status or 0) >= 500:
            return True
    return False


def plan_replay(
    job: Job,
    *,
    key_saved: bool,
    found: Outcome | None,
    lookup_failed: bool,
    seconds_since_last_call: float,
    search_grace_s: float,
    honours_keys: bool,
    budget: int,
) -> ReplayPlan:
    """Decide how to replay a dead job (see the module docstring for why)."""
    if job.state is not JobState.DEAD:
        return ReplayPlan(ReplayAction.SKIP, f"job is {job.state}, not dead")
    if job.attempts + budget > MAX_ATTEMPTS_CEILING:
        return ReplayPlan(ReplayAction.SKIP, f"{job.attempts} attempts made: no budget left")
    if not honours_keys:
        return ReplayPlan(
            ReplayAction.REPLAY, "provider keeps no idempotency keys: replay as asked"
        )
    gen = job.key_generation
    if not key_saved:
        return ReplayPlan(
            ReplayAction.REPLAY, f"key g{gen} holds nothing at the provider; same key"
        )
    if lookup_failed:
        return ReplayPlan(ReplayAction.SKIP, "provider lookup failed: earlier outcome not proven")
    if found is not None and found.kind is AttemptOutcome.SUCCEEDED:
        return ReplayPlan(
            ReplayAction.ADOPT, f"provider holds a successful object {found.provider_ref}", 0, found
        )
    if found is not None and found.kind is AttemptOutcome.PENDING:
        return ReplayPlan(
            ReplayAction.SKIP, f"provider holds a pending object {found.provider_ref}"
        )
    if seconds_since_last_call < search_grace_s:
        wait_s = search_grace_s - seconds_since_last_call
        return ReplayPlan(ReplayAction.SKIP, f"search not conclusive yet: try in {wait_s:.0f}s")
    what = "only a failed object" if found is not None else "nothing"
    return ReplayPlan(
        ReplayAction.REPLAY, f"provider holds {what} for key g{gen}: key g{gen + 1}", 1, found
    )


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
        datetime.fromisoformat(created_at)
        return str(created_at), _uuid(job_id)
    except (ValueError, TypeError, binascii.Error, json.JSONDecodeError):
        raise ValidationError("cursor is malformed") from None


def page_size(limit: int | None) -> int:
    value = DEFAULT_PAGE_SIZE if limit is None else limit
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PAGE_SIZE:
        raise ValidationError(f"limit must be an integer from 1 to {MAX_PAGE_SIZE}")
    return value


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


def rate(value: float | None) -> float:
    if value is None:
        return DEFAULT_REPLAY_RATE_PER_S
    if not 0 < value <= MAX_REPLAY_RATE_PER_S:
        raise ValidationError(f"rate must be above 0 and at most {MAX_REPLAY_RATE_PER_S:g}/s")
    return value


def _uuid(value: object) -> str:
    import uuid

    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise ValidationError("job id must be a UUID") from None


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
    return parsed


# -- the operations ------------------------------------------------------------------------


class Operations:
    """Operator actions over one Orchestrator. ``sleep`` and ``monotonic`` pace bulk runs."""

    def __init__(
        self,
        orch: Orchestrator,
        *,
        providers: Mapping[str, Provider] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.orch = orch
        self._providers = providers
        self._sleep = sleep
        self._monotonic = monotonic

    def providers(self) -> Mapping[str, Provider]:
        if self._providers is None:
            self._providers = self.orch.providers()
        return self._providers

    # -- reading ---------------------------------------------------------------------------

    def list_jobs(
        self, flt: JobFilter, *, limit: int | None = None, cursor: str | None = None
    ) -> Page:
        name = "ops_list_dead" if flt.state is JobState.DEAD else "ops_list_jobs"
        return self._page(name, flt, limit, cursor)

    def list_dead(
        self, flt: JobFilter, *, limit: int | None = None, cursor: str | None = None
    ) -> Page:
        return self._page("ops_list_dead", replace(flt, state=JobState.DEAD), limit, cursor)

    def _page(self, name: str, flt: JobFilter, limit: int | None, cursor: str | None) -> Page:
        size = page_size(limit)
        created_at, job_id = decode_cursor(cursor)
        args = {
            **flt.args(),
            "cursor_created_at": created_at,
            "cursor_id": job_id,
            "limit": size + 1,  # one more tells whether a next page exists
        }
        rows = self._all(name, args)
        jobs = [Job.from_row(r) for r in rows[:size]]
        more = len(rows) > size
        return Page(jobs, encode_cursor(jobs[-1]) if more and jobs else None)

    def count_dead(self, flt: JobFilter) -> int:
        row = self._one("ops_count_dead", flt.args())
        return int(row["n"]) if row else 0

    def show(self, job_id: str) -> JobDetail:
        job = self._job(job_id)
        actions = [_action_json(r) for r in self._all("ops_actions_for_target", {"target": job.id})]
        return JobDetail(
            job, self.orch.store.attempts(job.id), self.orch.store.transitions(job.id), actions
        )

    def counts(self) -> dict[str, int]:
        counts = self.orch.store.count_by_state()
        return {str(s): counts.get(str(s), 0) for s in JobState}

    def attempts_per_minute(self, window_s: float) -> list[dict[str, Any]]:
        rows = self._all("ops_attempts_per_minute", {"window_s": window_s})
        return [
            {"minute": r["minute"].isoformat(), "outcome": r["outcome"], "count": int(r["n"])}
            for r in rows
        ]

    # -- replay ----------------------------------------------------------------------------

    def plan(self, job: Job) -> ReplayPlan:
        """Decide (asking the provider when the key may hold a saved response)."""
        attempts = self.orch.store.attempts(job.id)
        provider = self.providers().get(job.provider)
        honours = provider.honours_idempotency_keys if provider is not None else True
        key_saved = key_may_be_saved(job, attempts)
        found: Outcome | None = None
        failed = False
        if key_saved and honours and job.state is JobState.DEAD:
            if provider is None:
                failed = True
            else:
                try:
                    found = _find(provider, job)
                except ProviderUnavailable as exc:
                    log.warning("ops.lookup_failed", job_id=job.id, error=str(exc))
                    failed = True
        return plan_replay(
            job,
            key_saved=key_saved,
            found=found,
            lookup_failed=failed,
            seconds_since_last_call=self._since_last_call(job, attempts),
            search_grace_s=self.orch.settings.search_grace_s,
            honours_keys=honours,
            budget=self.orch.settings.max_attempts,
        )

    def replay(self, job_id: str, actor: str, *, reason: str | None = None) -> ReplayResult:
        """Replay one dead job (or adopt its provider-side success). Never raises for a skip."""
        job = self._job(job_id)
        return self._apply(
            job, self.plan(job), actor_name(actor), reason_text(reason, required=False)
        )

    def replay_matching(
        self,
        flt: JobFilter,
        actor: str,
        *,
        rate_per_s: float | None = None,
        dry_run: bool = False,
        limit: int | None = None,
        reason: str | None = None,
        on_result: Callable[[ReplayResult], None] | None = None,
    ) -> BulkReport:
        """Replay every dead job the filter selects, at most ``rate_per_s`` a second."""
        who = actor_name(actor)
        why = reason_text(reason, required=False)
        interval_s = 1.0 / rate(rate_per_s)
        report = BulkReport(dry_run, flt.describe())
        next_at = self._monotonic()
        for job in self._dead_matching(flt, limit):
            if dry_run:
                result = self._dry(job)
            else:
                wait_s = next_at - self._monotonic()
                if wait_s > 0:
                    self._sleep(wait_s)
                next_at = max(next_at, self._monotonic()) + interval_s
                result = self._apply(job, self.plan(job), who, why)
            report.results.append(result)
            if on_result is not None:
                on_result(result)
        self._audit(
            who,
            "dlq.replay_dry_run" if dry_run else "dlq.replay_bulk",
            json.dumps(report.filter, sort_keys=True),
            why,
            {"counts": report.counts(), "rate_per_s": 1.0 / interval_s},
        )
        log.info("ops.bulk_replayed", actor=who, dry_run=dry_run, **report.counts())
        return report

    def _dead_matching(self, flt: JobFilter, limit: int | None) -> Iterator[Job]:
        cursor: str | None = None
        taken = 0
        while True:
            page = self.list_dead(flt, limit=MAX_PAGE_SIZE, cursor=cursor)
            for job in page.jobs:
                if limit is not None and taken >= limit:
                    return
                taken += 1
                yield job
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def _dry(self, job: Job) -> ReplayResult:
        key_saved = key_may_be_saved(job, self.orch.store.attempts(job.id))
        why = "would ask the provider first" if key_saved else "would replay with the same key"
        return ReplayResult(
            job.id, ReplayAction.SKIP, f"dry run: {why}", str(job.state), job.key_generation
        )

    def _apply(self, job: Job, plan: ReplayPlan, actor: str, reason: str | None) -> ReplayResult:
        why = f"replay: {plan.reason}" + (f" ({reason})" if reason else "")
        details = Jsonb({"plan": plan.reason, "generation_step": plan.generation_step})
        args: dict[str, Any] = {
            "id": job.id,
            "actor": actor,
            "reason": why[:MAX_REASON_CHARS],
            "details": details,
        }
        if plan.action is ReplayAction.SKIP:
            log.info("ops.replay_skipped", job_id=job.id, reason=plan.reason)
            return ReplayResult(
                job.id, plan.action, plan.reason, str(job.state), job.key_generation
            )
        if plan.action is ReplayAction.ADOPT:
            assert plan.found is not None
            args |= {
                "provider_ref": plan.found.provider_ref,
                "provider_status": plan.found.provider_status,
            }
            row = self._one("ops_adopt_job", args)
        else:
            args |= {
                "generation_step": plan.generation_step,
                "expected_generation": job.key_generation,
                "budget": self.orch.settings.max_attempts,
                "horizon_s": self.orch.settings.retry_horizon_s,
            }
            row = self._one("ops_replay_job", args)
        if row is None:
            return ReplayResult(
                job.id,
                ReplayAction.SKIP,
                "changed meanwhile (no longer dead)",
                "?",
                job.key_generation,
            )
        moved = Job.from_row(row)
        if plan.action is ReplayAction.REPLAY:
            self._dispatch(moved.id)
        log.info(
            "ops.job_replayed" if plan.action is ReplayAction.REPLAY else "ops.job_adopted",
            job_id=moved.id,
            actor=actor,
            key_generation=moved.key_generation,
        )
        return ReplayResult(
            moved.id, plan.action, plan.reason, str(moved.state), moved.key_generation
        )

    def _dispatch(self, job_id: str) -> None:
        try:
            self.orch.dispatcher.send(job_id)
        except Exception as exc:  # committed as pending: the clock's sweep sends it
            log.warning("ops.dispatch_deferred", job_id=job_id, error=type(exc).__name__)

    # -- discard ---------------------------------------------------------------------------

    def discard(self, job_id: str, actor: str, reason: str) -> Job:
        """dead -> cancelled, with a mandatory reason."""
        why = reason_text(reason, required=True)
        who = actor_name(actor)
        job = self._job(job_id)
        args = {
            "id": job.id,
            "actor": who,
            "reason": f"discarded: {why}"[:MAX_REASON_CHARS],
            "details": Jsonb({"dead_reason": job.dead_reason}),
        }
        row = self._one("ops_discard_job", args)
        if row is None:
            raise InvalidOperation(f"job {job.id} is {self._job(job.id).state}, not dead")
        log.info("ops.job_discarded", job_id=job.id, actor=who)
        return Job.from_row(row)

    # -- plumbing --------------------------------------------------------------------------

    def _job(self, job_id: str) -> Job:
        job = self.orch.store.job(_uuid(job_id))
        if job is None:
            raise JobNotFound(f"no job with id {job_id}")
        return job

    def _since_last_call(self, job: Job, attempts: list[Attempt]) -> float:
        times = [a.finished_at for a in attempts]
        if job.last_attempt_at is not None:
            times.append(job.last_attempt_at)
        if not times:
            return float("inf")
        now = self._one("db_now", {})
        assert now is not None
        return float((now["db_now"] - max(times)).total_seconds())

    def _audit(
        self, actor: str, action: str, target: str, reason: str | None, details: dict[str, Any]
    ) -> None:
        args = {
            "actor": actor,
            "action": action,
            "target": target,
            "reason": reason,
            "details": Jsonb(details),
        }
        self._one("ops_audit", args)

    def _all(self, name: str, args: dict[str, Any]) -> list[Row]:
        with self.orch.store.connection() as conn:
            return conn.execute(q(name), args).fetchall()

    def _one(self, name: str, args: dict[str, Any]) -> Row | None:
        with self.orch.store.connection() as conn:
            return conn.execute(q(name), args).fetchone()


def _find(provider: Provider, job: Job) -> Outcome | None:
    """The job's best object at the provider: its known ref first, then a metadata search."""
    found = provider.lookup(job)
    if job.provider_ref and (found is None or found.kind is not AttemptOutcome.SUCCEEDED):
        searched = provider.lookup(replace(job, provider_ref=None))
        if searched is not None and (found is None or searched.kind is AttemptOutcome.SUCCEEDED):
            found = searched
    return found


def _action_json(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "at": row["at"].isoformat(),
        "actor": row["actor"],
        "action": row["action"],
        "reason": row["reason"],
        "details": row["details"],
    }
