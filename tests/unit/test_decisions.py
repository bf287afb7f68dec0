"""The executor's decisions: pure functions of the job, the outcome and the clock."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from orchestrator.executor import (
    Decision,
    RetryPolicy,
    decide,
    decide_lookup,
    provider_key,
)
from orchestrator.models import AttemptOutcome, Job, JobKind, JobState
from orchestrator.providers.base import NO_RESPONSE, SERVER_ERROR, Outcome

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
POLICY = RetryPolicy(base_s=1.0, max_s=60.0)


def make_job(now: datetime = NOW, **fields: Any) -> Job:
    """A running charge at ``now`` (attempt 1 of 5); fields as given."""
    base = Job(
        id="00000000-0000-0000-0000-000000000001",
        kind=JobKind.CHARGE,
        provider="stripe",
        state=JobState.RUNNING,
        idempotency_key="k",
        fingerprint="0" * 64,
        amount=100,
        currency="usd",
        customer=None,
        payment_method="pm_card_visa",
        parent_job_id=None,
        params={},
        key_generation=0,
        attempts=1,
        max_attempts=5,
        next_attempt_at=now,
        deadline_at=now + timedelta(hours=1),
        lease_owner="w",
        lease_expires_at=now,
        unknown_cause=None,
        last_attempt_at=now,
        dispatched_at=now,
        provider_ref=None,
        provider_status=None,
        last_error_code=None,
        last_error=None,
        dead_reason=None,
        changed_by="w",
        change_reason="r",
        created_at=now,
        updated_at=now,
    )
    return replace(base, **fields)


def run(job: Job, outcome: Outcome, honours_keys: bool = True) -> Decision:
    return decide(
        job,
        outcome,
        NOW,
        policy=POLICY,
        rng=random.Random(1),
        honours_keys=honours_keys,
        processing_poll_s=5.0,
    )


def lookup(
    job: Job, found: Outcome | None, now: datetime = NOW, honours_keys: bool = True
) -> Decision | float:
    return decide_lookup(
        job, found, now, search_grace_s=60.0, honours_keys=honours_keys, processing_poll_s=5.0
    )


def test_provider_key_is_deterministic_per_generation() -> None:
    """The same job and generation always give the same key; a new generation another."""
    job = make_job()
    assert provider_key(job) == provider_key(job) == f"orch-{job.id}-g0"
    assert provider_key(replace(job, key_generation=1)) != provider_key(job)


def test_backoff_grows_is_capped_and_jittered() -> None:
    """Delays double per attempt within 50-100 % of the ceiling and never pass the cap."""
    rng = random.Random(3)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (10, 60.0)]:
        delay = POLICY.delay_s(attempt, rng)
        assert ceiling / 2 <= delay <= ceiling
    assert POLICY.delay_s(1, rng, retry_after_s=7.0) == 7.0


@pytest.mark.parametrize(
    ("kind", "state"),
    [
        (AttemptOutcome.SUCCEEDED, JobState.SUCCEEDED),
        (AttemptOutcome.PENDING, JobState.PROCESSING),
        (AttemptOutcome.PERMANENT, JobState.FAILED),
        (AttemptOutcome.NOT_EXECUTED, JobState.RETRYING),
        (AttemptOutcome.AMBIGUOUS, JobState.UNKNOWN),
    ],
)
def test_each_outcome_maps_to_its_state(kind: AttemptOutcome, state: JobState) -> None:
    """Success, pending, permanent, not executed and ambiguous each have one next state."""
    assert run(make_job(), Outcome(kind, error_class="X")).to_state is state


def test_not_executed_on_last_attempt_is_dead() -> None:
    """No attempt left: `dead` with reason attempts_exhausted, never another retry."""
    d = run(
        make_job(attempts=5), Outcome(AttemptOutcome.NOT_EXECUTED, error_class="RateLimitError")
    )
    assert (d.to_state, d.dead_reason) == (JobState.DEAD, "attempts_exhausted")


def test_retry_past_the_horizon_is_dead() -> None:
    """A retry that would land after the deadline is not scheduled: `dead` (retry_horizon)."""
    job = make_job(attempts=4, deadline_at=NOW + timedelta(seconds=1))
    d = run(job, Outcome(AttemptOutcome.NOT_EXECUTED, error_class="APIError"))
    assert (d.to_state, d.dead_reason) == (JobState.DEAD, "retry_horizon")


def test_ambiguous_without_idempotency_is_dead_unless_opted_in() -> None:
    """A provider without keys never gets a blind retry after an ambiguous outcome."""
    out = Outcome(AttemptOutcome.AMBIGUOUS, error_class="APIConnectionError")
    assert run(make_job(), out, honours_keys=False).dead_reason == "ambiguous"
    opted = make_job(params={"at_least_once": True})
    assert run(opted, out, honours_keys=False).to_state is JobState.RETRYING


def test_lookup_adopts_what_it_finds() -> None:
    """A found success or pending object settles an unknown job without a new call."""
    job = make_job(state=JobState.UNKNOWN, unknown_cause=SERVER_ERROR)
    found = lookup(job, Outcome(AttemptOutcome.SUCCEEDED, provider_ref="pi_1"))
    assert isinstance(found, Decision) and found.to_state is JobState.SUCCEEDED
    pending = lookup(job, Outcome(AttemptOutcome.PENDING, provider_ref="pi_1"))
    assert isinstance(pending, Decision) and pending.to_state is JobState.PROCESSING


def test_no_response_resends_the_same_key_at_once() -> None:
    """Nothing came back, nothing found: resend with the same key (the provider dedups)."""
    job = make_job(state=JobState.UNKNOWN, unknown_cause=NO_RESPONSE)
    d = lookup(job, None)
    assert isinstance(d, Decision)
    assert (d.to_state, d.generation_step) == (JobState.RETRYING, 0)


def test_server_error_waits_for_the_grace_then_moves_to_a_new_key() -> None:
    """A saved 5xx: absence counts only after the search grace; then a new key generation."""
    job = make_job(state=JobState.UNKNOWN, unknown_cause=SERVER_ERROR, last_attempt_at=NOW)
    wait = lookup(job, None, NOW + timedelta(seconds=10))
    assert isinstance(wait, float) and 50 <= wait <= 51
    d = lookup(job, None, NOW + timedelta(seconds=61))
    assert isinstance(d, Decision)
    assert (d.to_state, d.generation_step) == (JobState.RETRYING, 1)


def test_unknown_with_nothing_left_is_dead_only_once_absence_is_proven() -> None:
    """No attempts left and nothing found: wait out the grace, then `dead`."""
    job = make_job(state=JobState.UNKNOWN, unknown_cause=NO_RESPONSE, attempts=5)
    assert isinstance(lookup(job, None, NOW), float)
    d = lookup(job, None, NOW + timedelta(seconds=61))
    assert isinstance(d, Decision) and d.dead_reason == "attempts_exhausted"
