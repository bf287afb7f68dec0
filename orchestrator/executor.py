"""Executing one job: claim, call the provider alone, classify, record, schedule.

The request runs as phases between recovery points (PostgreSQL commits):

1. claim      one compare-and-set UPDATE moves the job to ``running`` under a lease;
2. call       the provider SDK with the job's deterministic idempotency key, no transaction
              or row lock held;
3. settle     one statement records the attempt and moves the job on, checking that the
              lease is still ours;
4. schedule   retries and lookups are due again at ``next_attempt_at``: within the broker's
              delay window they get a short delayed message; later ones get none, and the
              clock dispatches them when due (PostgreSQL owns the schedule; the clock also
              re-sends lost messages).

``unknown`` and ``processing`` jobs are settled by :meth:`Executor.resolve`, which asks the
provider instead of calling it again. Every decision is made by :func:`decide` and
:func:`decide_lookup`, pure functions of the job, the outcome and the database clock.
"""

from __future__ import annotations

import os
import random
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog

from orchestrator.breaker import (
    Breaker,
    Permit,
    SharedBreaker,
    Signal,
    signal_of,
    signal_of_lookup_failure,
)
from orchestrator.broker import PROCESS_ACTOR, Dispatcher
from orchestrator.config import Settings
from orchestrator.db.store import Store
from orchestrator.errors import ProviderUnavailable
from orchestrator.logs import get_logger, redact_text
from orchestrator.models import AttemptOutcome, DeadReason, Job, JobState
from orchestrator.providers import failover
from orchestrator.providers.base import NO_RESPONSE, Outcome, Provider

log = get_logger(__name__)

# A pending object is never polled less often than this, however old it is.
MAX_PROCESSING_POLL_S = 3600.0
# A job whose success event waits to be processed is looked at again after this long (the
# event's processing settles it well before, as a rule).
SUCCESS_EVENT_FIRST_S = 5.0
# A lookup that could not reach the provider is tried again after this long.
LOOKUP_RETRY_S = 5.0
# A job for a provider this worker has no credentials for (e.g. SENDGRID_API_KEY unset) goes
# dead at once (DeadReason.PROVIDER_UNCONFIGURED): no call was made, so replaying it once the
# provider is configured is safe, and the DLQ shows the misconfiguration now instead of after
# a whole retry horizon. An unknown/processing job of such a provider is looked at again after
# this long.
UNCONFIGURED_RECHECK_S = 300.0
# The reason of a retry with the same key after an attempt got no response: the provider may
# hold that attempt's result under the key, so such a job is not cancelled (queries:
# cancel_job) until it has run again.
SAME_KEY_RESEND = "resend with the same key after no response"


def provider_key(job: Job, generation: int | None = None) -> str:
    """The idempotency key sent to the provider: one per (job, key generation), never random."""
    gen = job.key_generation if generation is None else generation
    return f"orch-{job.id}-g{gen}"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with equal jitter: min(base * 2**(n-1), max) * uniform(0.5, 1)."""

    base_s: float
    max_s: float

    def delay_s(
        self, attempt: int, rng: random.Random, retry_after_s: float | None = None
    ) -> float:
        ceiling = min(self.base_s * 2 ** max(attempt - 1, 0), self.max_s)
        delay: float = ceiling * rng.uniform(0.5, 1.0)
        return max(delay, retry_after_s or 0.0)


@dataclass(frozen=True, slots=True)
class Decision:
    """Where a job goes next and why; ``delay_s`` is when it is looked at again."""

    to_state: JobState
    reason: str
    delay_s: float = 0.0
    generation_step: int = 0
    unknown_cause: str | None = None
    dead_reason: DeadReason | None = None
    # A call the breaker or rate limiter denied: the claim's attempt is given back.
    refund_attempt: bool = False
    # A charge moving to its failover provider (orchestrator.providers.failover).
    failover: Mapping[str, Any] | None = None

    @property
    def needs_message(self) -> bool:
        return self.to_state in {JobState.RETRYING, JobState.UNKNOWN, JobState.PROCESSING}


def decide(
    job: Job,
    outcome: Outcome,
    now: datetime,
    *,
    policy: RetryPolicy,
    rng: random.Random,
    honours_keys: bool,
    processing_poll_s: float,
) -> Decision:
    """What to do after an attempt (``job`` is the claimed row: attempts counts this one)."""
    kind = outcome.kind
    summary = outcome.error_summary or ""
    if kind is AttemptOutcome.SUCCEEDED:
        return Decision(JobState.SUCCEEDED, "provider reported success")
    if kind is AttemptOutcome.PENDING:
        return Decision(JobState.PROCESSING, "provider reported a pending state", processing_poll_s)
    if kind is AttemptOutcome.PERMANENT:
        return Decision(JobState.FAILED, f"permanent error: {summary}"[:500])
    if kind is AttemptOutcome.AMBIGUOUS:
        if honours_keys:
            cause = outcome.unknown_cause or NO_RESPONSE
            return Decision(
                JobState.UNKNOWN, f"ambiguous outcome ({cause})", 0.0, unknown_cause=cause
            )
        if job.params.get("at_least_once"):
            return _retry_or_dead(
                job, now, policy, rng, None, f"ambiguous, at-least-once: {summary}"
            )
        return Decision(
            JobState.DEAD,
            f"ambiguous outcome, no idempotency: {summary}"[:500],
            dead_reason=DeadReason.AMBIGUOUS,
        )
    return _retry_or_dead(job, now, policy, rng, outcome.retry_after_s, f"not executed: {summary}")


def _retry_or_dead(
    job: Job,
    now: datetime,
    policy: RetryPolicy,
    rng: random.Random,
    retry_after_s: float | None,
    why: str,
    generation_step: int = 0,
) -> Decision:
    if job.attempts >= job.max_attempts:
        return Decision(
            JobState.DEAD,
            f"{job.attempts} attempts exhausted; {why}"[:500],
            dead_reason=DeadReason.ATTEMPTS_EXHAUSTED,
        )
    delay = policy.delay_s(job.attempts, rng, retry_after_s)
    if now + timedelta(seconds=delay) > job.deadline_at:
        return Decision(
            JobState.DEAD,
            f"next attempt would pass the retry horizon; {why}"[:500],
            dead_reason=DeadReason.RETRY_HORIZON,
        )
    return Decision(
        JobState.RETRYING,
        f"{why}; retry in {delay:.1f}s"[:500],
        delay,
        generation_step=generation_step,
    )


def decide_lookup(
    job: Job,
    found: Outcome | None,
    now: datetime,
    *,
    search_grace_s: float,
    honours_keys: bool,
    processing_poll_s: float,
    stuck_pending_s: float = float("inf"),
    consistent: bool = False,
    last_finished_at: datetime | None = None,
) -> Decision | float:
    """Settle an ``unknown`` or ``processing`` job from a lookup, or return seconds to wait.

    ``consistent``: the lookup read the provider's own records (a retrieve or a list), so
    "nothing found" is proof now. Otherwise (an eventually consistent search) absence is
    concluded only ``search_grace_s`` after the last attempt *finished* (``last_finished_at``):
    an object made by a call that ended later than it started is not missed.
    """
    if found is not None:
        if found.kind is AttemptOutcome.SUCCEEDED:
            return Decision(JobState.SUCCEEDED, "lookup found a successful object")
        if found.kind is AttemptOutcome.PENDING:
            return _still_pending(job, now, processing_poll_s, stuck_pending_s)
        return Decision(JobState.FAILED, f"lookup found a failed object ({found.provider_status})")
    if job.state is JobState.PROCESSING:
        # The object we hold a reference to must come back; keep polling, within the age cap.
        return _still_pending(job, now, processing_poll_s, stuck_pending_s)
    can_attempt = job.attempts < job.max_attempts and now < job.deadline_at
    if job.unknown_cause != "server_error" and honours_keys and can_attempt:
        # Nothing came back, so nothing was saved against the key: the same key either
        # replays the stored result or executes for the first time. Safe without proof.
        return Decision(JobState.RETRYING, SAME_KEY_RESEND)
    last = last_finished_at or job.last_attempt_at or job.updated_at
    waited = (now - last).total_seconds()
    if not consistent and waited < search_grace_s:
        return search_grace_s - waited + 0.5
    if not honours_keys and not job.params.get("at_least_once"):
        return Decision(
            JobState.DEAD, "outcome unknown and not provable", dead_reason=DeadReason.AMBIGUOUS
        )
    if can_attempt:
        return Decision(
            JobState.RETRYING,
            f"absent at the provider after {waited:.0f}s; next key generation",
            generation_step=1,
        )
    reason = (
        DeadReason.ATTEMPTS_EXHAUSTED
        if job.attempts >= job.max_attempts
        else DeadReason.RETRY_HORIZON
    )
    return Decision(JobState.DEAD, "absent at the provider and no attempt left", dead_reason=reason)


def _still_pending(
    job: Job, now: datetime, poll_s: float, stuck_pending_s: float
) -> Decision | float:
    """Poll a pending object with backoff (a tenth of its age), until it is too old."""
    age_s = (now - (job.last_attempt_at or job.created_at)).total_seconds()
    if age_s >= stuck_pending_s:
        return Decision(
            JobState.DEAD, f"still pending after {age_s:.0f}s", dead_reason=DeadReason.STUCK_PENDING
        )
    delay = min(max(poll_s, age_s / 10), MAX_PROCESSING_POLL_S)
    if job.state is JobState.PROCESSING:
        return delay
    return Decision(JobState.PROCESSING, "lookup found a pending object", delay)


# A job denied by the breaker or the rate limiter waits for the next probe time plus a
# jitter of this share of the wait (at least the minimum, at most the maximum), so the jobs
# parked by one outage do not all come back in the same millisecond.
DEFERRAL_JITTER_SHARE = 0.25
DEFERRAL_JITTER_MIN_S = 0.05
DEFERRAL_JITTER_MAX_S = 10.0


def deferral_delay_s(permit: Permit, rng: random.Random) -> float:
    """How long a call the breaker or the rate limiter denied waits: at least until the next
    probe (or token), plus jitter, and never zero (a denial never spins)."""
    spread = min(
        max(permit.wait_s * DEFERRAL_JITTER_SHARE, DEFERRAL_JITTER_MIN_S), DEFERRAL_JITTER_MAX_S
    )
    return max(permit.wait_s, DEFERRAL_JITTER_MIN_S) + rng.uniform(0, spread)


def decide_deferral(job: Job, now: datetime, permit: Permit, rng: random.Random) -> Decision:
    """A claimed job whose call was denied: back to ``retrying`` with its attempt refunded."""
    delay = deferral_delay_s(permit, rng)
    if now + timedelta(seconds=delay) > job.deadline_at:
        return Decision(
            JobState.DEAD,
            f"{permit.reason}; next attempt would pass the retry horizon"[:500],
            dead_reason=DeadReason.RETRY_HORIZON,
            refund_attempt=True,
        )
    return Decision(
        JobState.RETRYING,
        f"{permit.reason}; no attempt made, next try in {delay:.1f}s"[:500],
        delay,
        refund_attempt=True,
    )


def _lookups_given_up(
    job: Job, now: datetime, stuck_pending_s: float, exc: Exception
) -> Decision | None:
    """A job whose lookups keep failing goes dead once it is past its deadline (unknown) or
    older than the stuck-pending age (processing: a pending object may legitimately outlive
    the horizon while it can still be looked up)."""
    if job.state is JobState.UNKNOWN and now >= job.deadline_at:
        return Decision(
            JobState.DEAD,
            f"unresolved past the retry horizon: {exc}"[:500],
            dead_reason=DeadReason.UNRESOLVED,
        )
    age_s = (now - (job.last_attempt_at or job.created_at)).total_seconds()
    if job.state is JobState.PROCESSING and age_s >= stuck_pending_s:
        return Decision(
            JobState.DEAD,
            f"pending for {age_s:.0f}s and the provider cannot be asked: {exc}"[:500],
            dead_reason=DeadReason.STUCK_PENDING,
        )
    return None


def _unconfigured(job: Job) -> Decision:
    return Decision(
        JobState.DEAD,
        f"provider {job.provider!r} is not configured in this worker; no call was made",
        dead_reason=DeadReason.PROVIDER_UNCONFIGURED,
        refund_attempt=True,
    )


class Executor:
    """Runs jobs for one process. Thread-safe: every call makes its own lease owner."""

    def __init__(
        self,
        store: Store,
        providers: Mapping[str, Provider],
        dispatcher: Dispatcher,
        settings: Settings,
        *,
        rng: random.Random | None = None,
        breaker: Breaker | None = None,
    ) -> None:
        self.store = store
        self.providers = providers
        self.dispatcher = dispatcher
        self.settings = settings
        self.policy = RetryPolicy(settings.backoff_base_s, settings.backoff_max_s)
        self.rng = rng or random.Random()
        self.breaker = breaker or SharedBreaker.from_settings(settings)
        self._host = f"{socket.gethostname()}:{os.getpid()}"
        # Claims of these providers' jobs may commit asynchronously (Store.claim).
        self.keyed_providers = tuple(
            name for name, p in providers.items() if p.honours_idempotency_keys
        )

    def _owner(self) -> str:
        return f"worker:{self._host}:{uuid.uuid4().hex[:8]}"

    def run(self, job_id: str) -> JobState | None:
        """Handle one message for ``job_id``; returns the job's new state, or None if idle.

        Nearly every message is for a due ``pending`` or ``retrying`` job, so the claim
        comes first: one statement, instead of reading the job and then claiming it.
        """
        owner = self._owner()
        row = self.store.claim(job_id, owner, self.settings.lease_s, self.keyed_providers)
        if row is not None and row["state"] == JobState.DEAD:
            log.warning("job.claim_refused", job_id=job_id, reason=DeadReason.RETRY_HORIZON)
            return JobState.DEAD
        if row is not None:
            return self._attempt_claimed(row, owner)
        job = self.store.job(job_id)
        if job is None:
            log.warning("job.not_found", job_id=job_id)
            return None
        if job.state in (JobState.UNKNOWN, JobState.PROCESSING):
            return self.resolve(job_id)
        if job.state in (JobState.PENDING, JobState.RETRYING):
            self._reschedule_early(job_id)
            return None
        log.debug("job.message_ignored", job_id=job_id, state=str(job.state))
        return None

    def _reschedule_early(self, job_id: str) -> None:
        """A message that came before its job is due (hosts' clocks differ a little, or the
        clock sent it ahead with a broker delay): sent again for when it is due, if the broker
        carries that delay; otherwise the clock's due dispatch sends it then."""
        due_in_s = self.store.due_in_s(job_id)
        if due_in_s is not None and due_in_s > 0 and self.dispatcher.schedule(job_id, due_in_s):
            log.debug("job.early_message_rescheduled", job_id=job_id, due_in_s=round(due_in_s, 3))
            return
        log.debug("job.message_ignored", job_id=job_id, due_in_s=due_in_s)

    # -- one attempt -----------------------------------------------------------------------

    def _attempt_claimed(self, row: dict[str, Any], owner: str) -> JobState | None:
        job = Job.from_row(row)
        now: datetime = row["db_now"]
        provider = self.providers.get(job.provider)
        if provider is None:
            return self._settle(job, owner, _unconfigured(job), None, None)
        if row.get("unprocessed_success_event") is not None:
            return self._process_success_first(job, owner, int(row["unprocessed_success_event"]))
        # Bound for this attempt only: callers outside an actor keep a clean context.
        with structlog.contextvars.bound_contextvars(
            job_id=job.id, kind=str(job.kind), provider=job.provider, attempt=job.attempts
        ):
            return self._attempt_bound(job, owner, now, provider)

    def _process_success_first(self, job: Job, owner: str, event_row_id: int) -> JobState | None:
        """A verified success event for the job is stored: no new call goes out. The job goes
        back to ``retrying`` with its attempt given back, and the event is processed (it settles
        the job when it matches; if it does not, the next attempt calls out as usual)."""
        log.info("job.success_event_first", job_id=job.id, event_row_id=event_row_id)
        decision = Decision(
            JobState.RETRYING,
            "a stored success event is processed before any new attempt",
            SUCCESS_EVENT_FIRST_S,
            refund_attempt=True,
        )
        state = self._settle(job, owner, decision, None, None)
        self.dispatcher.send_to(PROCESS_ACTOR, event_row_id)
        return state

    def _attempt_bound(
        self, job: Job, owner: str, now: datetime, provider: Provider
    ) -> JobState | None:
        key = provider_key(job)
        permit = self.breaker.acquire(job.provider)
        if not permit.allowed:
            log.info("job.attempt_deferred", verdict=permit.verdict, wait_s=permit.wait_s)
            decision = with_failover(job, None, decide_deferral(job, now, permit, self.rng))
            return self._settle(job, owner, decision, None, None)
        log.info("job.attempt_started", key_generation=job.key_generation)
        started = time.perf_counter()
        outcome = provider.execute(job, key)
        duration_ms = int((time.perf_counter() - started) * 1000)
        self.breaker.record(permit, signal_of(outcome), outcome.retry_after_s)
        decision = decide(
            job,
            outcome,
            now + timedelta(milliseconds=duration_ms),
            policy=self.policy,
            rng=self.rng,
            honours_keys=provider.honours_idempotency_keys,
            processing_poll_s=self.settings.processing_poll_s,
        )
        decision = with_failover(job, outcome, decision)
        attempt = {
            "attempt": job.attempts,
            "attempt_provider": job.provider,
            "attempt_generation": job.key_generation,
            "provider_key": key,
            "outcome": str(outcome.kind),
            "error_class": outcome.error_class,
            "error_code": outcome.error_code,
            "http_status": outcome.http_status,
            "provider_request_id": outcome.request_id,
            "duration_ms": duration_ms,
            "started_at": now,
        }
        return self._settle(job, owner, decision, outcome, attempt)

    # -- resolving unknown and processing jobs ---------------------------------------------

    def resolve(self, job_id: str) -> JobState | None:
        owner = self._owner()
        row = self.store.lease_for_lookup(job_id, owner, self.settings.lease_s)
        if row is None:
            return None
        job = Job.from_row(row)
        now: datetime = row["db_now"]
        provider = self.providers.get(job.provider)
        if provider is None:  # nothing can be looked up here; stay visibly unresolved
            log.warning("job.provider_unconfigured", provider=job.provider)
            self._release(job, owner, UNCONFIGURED_RECHECK_S)
            return job.state
        permit = self.breaker.acquire(job.provider)
        if not permit.allowed:
            # A lookup is a provider call too: it waits for the breaker like an attempt, past
            # the deadline too (a lookup sends no key, and waiting never spins).
            self._release(job, owner, deferral_delay_s(permit, self.rng))
            return job.state
        try:
            found = provider.lookup(job)
        except ProviderUnavailable as exc:
            self.breaker.record(permit, signal_of_lookup_failure(exc))
            log.warning("job.lookup_failed", error=str(exc))
            given_up = _lookups_given_up(job, now, self.settings.stuck_pending_s, exc)
            if given_up is not None:
                # The provider still cannot answer: an operator settles it by hand (dlq show
                # has the attempt history; a replay adopts whatever the provider holds).
                return self._settle(job, owner, given_up, None, None)
            self._release(job, owner, LOOKUP_RETRY_S)
            return job.state
        self.breaker.record(permit, Signal.SUCCESS)
        decision = decide_lookup(
            job,
            found,
            now,
            search_grace_s=self.settings.search_grace_s,
            honours_keys=provider.honours_idempotency_keys,
            processing_poll_s=self.settings.processing_poll_s,
            stuck_pending_s=self.settings.stuck_pending_s,
            consistent=provider.lookup_is_consistent(job),
            last_finished_at=self._last_finished_at(job),
        )
        if isinstance(decision, float):
            self._release(job, owner, decision)
            return job.state
        return self._settle(job, owner, decision, found, None)

    def _last_finished_at(self, job: Job) -> datetime | None:
        finished = [a.finished_at for a in self.store.attempts(job.id)]
        return max(finished) if finished else None

    # -- recording -------------------------------------------------------------------------

    def _release(self, job: Job, owner: str, delay_s: float) -> None:
        carried = self.dispatcher.carries(delay_s)
        if self.store.release_lease(job.id, owner, delay_s, carried) is not None and carried:
            self.dispatcher.schedule(job.id, delay_s)

    def _settle(
        self,
        job: Job,
        owner: str,
        decision: Decision,
        outcome: Outcome | None,
        attempt: dict[str, Any] | None,
    ) -> JobState | None:
        args: dict[str, Any] = {
            **_NO_ATTEMPT,
            **(attempt or {}),
            "id": job.id,
            "owner": owner,
            "lease_owner": owner,
            "from_state": str(job.state),
            "to_state": str(decision.to_state),
            "reason": decision.reason,
            "delay_s": decision.delay_s,
            "dispatching": decision.needs_message,
            # The broker carries only what is due within its delay window; the row says so in
            # the same statement, else the clock dispatches the job when due.
            "broker_carries": self.dispatcher.carries(decision.delay_s),
            "generation_step": decision.generation_step,
            "reset_attempts": False,
            "refund_attempt": int(decision.refund_attempt),
            "provider_ref": outcome.provider_ref if outcome else None,
            "provider_status": outcome.provider_status if outcome else None,
            "provider_details": dict(outcome.details) if outcome and outcome.details else None,
            "error_code": outcome.error_code if outcome else None,
            # A provider's message may quote what it was sent: card-like digit runs never
            # reach the row (nor, through it, the dashboard).
            "error": redact_text(outcome.error_summary or "") or None if outcome else None,
            "unknown_cause": decision.unknown_cause,
            "dead_reason": None if decision.dead_reason is None else str(decision.dead_reason),
            **failover.row_changes(decision.failover),
        }
        settled = self.store.settle(args)
        if settled is None:
            log.warning("job.lease_lost", to_state=str(decision.to_state))
            return None
        event = "job.settled" if decision.to_state.is_terminal else "job.rescheduled"
        log.info(
            event,
            state=str(settled.state),
            reason=decision.reason,
            error_code=settled.last_error_code if outcome and outcome.error_class else None,
        )
        if decision.needs_message:
            self.dispatcher.schedule(job.id, decision.delay_s)
        return settled.state


def with_failover(job: Job, outcome: Outcome | None, decision: Decision) -> Decision:
    """``decision``, or a move to the charge's failover provider when the call provably never
    executed (``outcome`` None: denied before any call) and the job would wait for a retry."""
    if decision.to_state is not JobState.RETRYING:
        return decision
    target = failover.failover_target(job, outcome)
    if target is None:
        return decision
    why = outcome.error_code if outcome is not None else "denied before any call"
    return Decision(
        JobState.RETRYING,
        failover.reason(job, target, str(why)),
        refund_attempt=decision.refund_attempt,
        failover=target,
    )


_NO_ATTEMPT: dict[str, Any] = {
    "attempt": None,
    "attempt_provider": None,
    "attempt_generation": None,
    "provider_key": None,
    "outcome": None,
    "error_class": None,
    "error_code": None,
    "http_status": None,
    "provider_request_id": None,
    "duration_ms": None,
    "started_at": None,
}
