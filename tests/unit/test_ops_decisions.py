"""Pure decisions of the operator surface: when a replay keeps, moves or skips the provider key,
cursors, rates, and the dashboard's session and CSRF tokens."""

from __future__ import annotations

import argparse
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from orchestrator.cli.dlq import parse_rate
from orchestrator.errors import ValidationError
from orchestrator.models import Attempt, AttemptOutcome, Job, JobState
from orchestrator.ops.auth import SESSION_TTL_S, OpsAuth
from orchestrator.ops.dashboard import attempts_chart
from orchestrator.ops.filters import JobFilter, decode_cursor, encode_cursor
from orchestrator.ops.replay import ReplayAction, key_may_be_saved, plan_replay
from orchestrator.providers.base import Outcome
from tests.unit.test_decisions import make_job

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def _job(**kw: Any) -> Job:
    """A dead charge by default (the DLQ's subject); fields as given."""
    defaults: dict[str, Any] = {
        "state": JobState.DEAD,
        "max_attempts": 1,
        "deadline_at": NOW,
        "lease_owner": None,
        "lease_expires_at": None,
        "dispatched_at": None,
        "dead_reason": "attempts_exhausted",
    }
    return make_job(now=NOW, **{**defaults, **kw})


def _attempt(n: int, outcome: str, status: int | None, generation: int = 0) -> Attempt:
    return Attempt(
        n, "j", n, generation, "key", "w", outcome, None, None, status, None, None, 5, NOW, NOW
    )


def test_unsaved_failures_leave_nothing_against_the_key() -> None:
    """429s (not executed) save nothing; a 5xx, a decline or an unrecorded claim may have."""
    job = _job(attempts=2)
    assert not key_may_be_saved(
        job, [_attempt(1, "not_executed", 429), _attempt(2, "not_executed", 409)]
    )
    assert key_may_be_saved(job, [_attempt(1, "not_executed", 429), _attempt(2, "ambiguous", 500)])
    assert key_may_be_saved(
        job, [_attempt(1, "not_executed", 503), _attempt(2, "not_executed", 429)]
    )
    assert key_may_be_saved(job, [_attempt(1, "permanent", 402), _attempt(2, "not_executed", 429)])
    assert key_may_be_saved(job, [_attempt(1, "not_executed", 429)])  # claim 2 left no row
    older = [_attempt(1, "ambiguous", 500, generation=0), _attempt(2, "not_executed", 429, 1)]
    assert not key_may_be_saved(_job(attempts=2, key_generation=1), older)


def _plan(job: Job, **kw: object) -> tuple[ReplayAction, int]:
    args: dict[str, object] = dict(
        key_saved=True,
        found=None,
        lookup_failed=False,
        seconds_since_last_call=600.0,
        search_grace_s=60.0,
        honours_keys=True,
        budget=8,
    )
    args.update(kw)
    plan = plan_replay(job, **args)  # type: ignore[arg-type]
    return plan.action, plan.generation_step


def test_replay_plans() -> None:
    """Same key when nothing is saved; adopt a success; wait on pending, failed lookups and a
    fresh last call; otherwise the next generation. Never replay a job that is not dead."""
    success = Outcome(AttemptOutcome.SUCCEEDED, provider_ref="pi_1", provider_status="succeeded")
    pending = Outcome(AttemptOutcome.PENDING, provider_ref="pi_1", provider_status="processing")
    failed = Outcome(AttemptOutcome.PERMANENT, provider_ref="pi_1")
    job = _job()
    assert _plan(job, key_saved=False) == (ReplayAction.REPLAY, 0)
    assert _plan(job, found=success) == (ReplayAction.ADOPT, 0)
    assert _plan(job, found=pending) == (ReplayAction.SKIP, 0)
    assert _plan(job, lookup_failed=True) == (ReplayAction.SKIP, 0)
    assert _plan(job, seconds_since_last_call=5.0) == (ReplayAction.SKIP, 0)
    assert _plan(job) == (ReplayAction.REPLAY, 1)
    assert _plan(job, found=failed) == (ReplayAction.REPLAY, 1)
    assert _plan(job, honours_keys=False) == (ReplayAction.REPLAY, 0)
    assert _plan(replace(job, state=JobState.SUCCEEDED), key_saved=False)[0] is ReplayAction.SKIP
    assert _plan(replace(job, attempts=95), key_saved=False)[0] is ReplayAction.SKIP


def test_cursor_round_trip_and_garbage() -> None:
    """A cursor decodes to the job's (created_at, id); anything else is a ValidationError."""
    job = _job()
    assert decode_cursor(encode_cursor(job)) == (NOW.isoformat(), job.id)
    assert decode_cursor(None) == ("infinity", "ffffffff-ffff-ffff-ffff-ffffffffffff")
    for bad in ["x", "e30", encode_cursor(job)[:-3] + "???"]:
        with pytest.raises(ValidationError):
            decode_cursor(bad)


def test_filter_parsing_rejects_bad_input() -> None:
    """States and kinds are closed sets; times need a zone; codes are words."""
    assert (
        JobFilter.parse(state="dead", created_after="2024-05-01T00:00:00+00:00").state
        is JobState.DEAD
    )
    for bad in [
        {"state": "zombie"},
        {"kind": "wire"},
        {"created_after": "2024-05-01"},
        {"error_code": "a b"},
    ]:
        with pytest.raises(ValidationError):
            JobFilter.parse(**bad)


def test_rates() -> None:
    """--rate accepts N, N/s and N/min; anything else is a usage error."""
    assert parse_rate("5") == 5.0 and parse_rate("20/s") == 20.0 and parse_rate("120/min") == 2.0
    for bad in ["0", "-1/s", "fast", "10/h"]:
        with pytest.raises(argparse.ArgumentTypeError):
            parse_rate(bad)


def test_sessions_are_derived_signed_and_expire() -> None:
    """The session cookie never holds the token, is bound to it, and expires; CSRF tokens are
    per session; with no token configured nothing is accepted."""
    clock = [1_000_000.0]
    auth = OpsAuth("s3cret-token", now=lambda: clock[0])
    cookie = auth.new_session()
    assert "s3cret-token" not in cookie and auth.session_ok(cookie)
    assert not OpsAuth("other-token", now=lambda: clock[0]).session_ok(cookie)
    assert not auth.session_ok(cookie[:-1] + ("0" if cookie[-1] != "0" else "1"))
    assert auth.csrf_ok(cookie, auth.csrf_for(cookie)) and not auth.csrf_ok(cookie, "x" * 32)
    clock[0] += SESSION_TTL_S + 1
    assert not auth.session_ok(cookie)
    assert not OpsAuth(None).token_ok("") and not OpsAuth(None).session_ok(cookie)


def test_attempts_chart_draws_one_line_per_outcome() -> None:
    """The SVG has a polyline per outcome, scaled to the busiest minute, and escapes labels."""
    minute = (NOW - timedelta(minutes=1)).isoformat()
    points = [
        {"minute": minute, "outcome": "succeeded", "count": 4},
        {"minute": minute, "outcome": "ambiguous", "count": 2},
        {"minute": (NOW - timedelta(hours=3)).isoformat(), "outcome": "<x>", "count": 9},
    ]
    svg = attempts_chart(points, NOW)
    assert svg.count("<polyline") == 2
    assert "max 4/min" in svg and "<x>" not in svg
