"""Planning the replay of a dead job: pure decisions, no database, no provider.

Replaying a dead job never risks a second provider-side effect. The provider idempotency key
stays the same unless the earlier outcome is *proven* not to be a success, because:

* if no call with the current key can have reached the provider's memory (every attempt with
  it was ``not_executed`` below HTTP 500, and no claim went unrecorded), the same key is safe
  and :func:`plan_replay` keeps it;
* otherwise the provider may have saved something against the key: a success (then the job
  is adopted as ``succeeded``, nothing is called), a pending object (the replay waits), or a
  5xx or decline that the same key would replay forever. Only when a lookup made after the
  search grace finds no successful object does the replay move to the next key generation.

:class:`orchestrator.ops.service.Operations` gathers the facts (attempts, the provider's
lookup) and applies the plan.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any

from orchestrator.errors import ValidationError
from orchestrator.models import Attempt, AttemptOutcome, DeadReason, Job, JobState
from orchestrator.providers.base import Outcome

# The schema caps max_attempts at 100 (jobs_attempts_bounded, the CHECK on max_attempts).
MAX_ATTEMPTS_CEILING = 100
# Bulk replays go at most this fast unless told otherwise: each may cost a provider lookup
# and certainly costs a provider call soon after, so a burst must not trip rate limits.
DEFAULT_REPLAY_RATE_PER_S = 10.0
MAX_REPLAY_RATE_PER_S = 1000.0


class ReplayAction(enum.StrEnum):
    REPLAY = "replay"  # dead -> pending, dispatched
    ADOPT = "adopt"  # dead -> succeeded: the provider already holds the success
    SKIP = "skip"  # left dead, with the reason


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
        return {**asdict(self), "action": str(self.action)}


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
    consistent: bool = False,
    accept_duplicate_risk: bool = False,
) -> ReplayPlan:
    """Decide how to replay a dead job (see the module docstring for why). ``consistent``: the
    lookup read the provider's own records, so "nothing found" needs no search grace."""
    if job.state is not JobState.DEAD:
        return ReplayPlan(ReplayAction.SKIP, f"job is {job.state}, not dead")
    if job.attempts + budget > MAX_ATTEMPTS_CEILING:
        return ReplayPlan(ReplayAction.SKIP, f"{job.attempts} attempts made: no budget left")
    if job.dead_reason == DeadReason.AMBIGUOUS and not accept_duplicate_risk:
        # Decided by the job alone (not by whether this process has the provider configured):
        # a provider without idempotency keys may have delivered it already.
        return ReplayPlan(
            ReplayAction.SKIP,
            "the outcome was ambiguous and the provider keeps no keys: it may have been "
            "delivered; replay only with --accept-duplicate-risk",
        )
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
    if not consistent and seconds_since_last_call < search_grace_s:
        wait_s = search_grace_s - seconds_since_last_call
        return ReplayPlan(ReplayAction.SKIP, f"search not conclusive yet: try in {wait_s:.0f}s")
    what = "only a failed object" if found is not None else "nothing"
    return ReplayPlan(
        ReplayAction.REPLAY, f"provider holds {what} for key g{gen}: key g{gen + 1}", 1, found
    )


def replay_rate(value: float | None) -> float:
    """Replays per second for a bulk run: the default, or a checked positive rate."""
    if value is None:
        return DEFAULT_REPLAY_RATE_PER_S
    if not 0 < value <= MAX_REPLAY_RATE_PER_S:
        raise ValidationError(f"rate must be above 0 and at most {MAX_REPLAY_RATE_PER_S:g}/s")
    return value
