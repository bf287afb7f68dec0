"""The ledger audit's pure parts: what drift is (the comparison of provider objects with jobs),
the --since DURATION, and when the clock's audit is due and which window it covers."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from orchestrator.maintenance.audit import FIRST_WINDOW, RETRY_AFTER_FAILURE_S, LedgerAudit
from orchestrator.models import JobKind, JobState
from orchestrator.ops.ledger import (
    MAX_DETAIL_CHARS,
    DriftKind,
    DriftSource,
    Finding,
    LedgerJob,
    ProviderObject,
    compare,
    parse_duration,
)

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
JOB = "00000000-0000-4000-8000-000000000001"


def _job(
    state: JobState = JobState.SUCCEEDED,
    ref: str | None = "pi_1",
    *,
    job_id: str = JOB,
    kind: JobKind = JobKind.CHARGE,
    amount: int = 1000,
    currency: str = "usd",
) -> LedgerJob:
    return LedgerJob(job_id, kind, state, amount, currency, ref)


def _obj(
    ref: str = "pi_1",
    status: str = "succeeded",
    *,
    job_id: str = JOB,
    kind: JobKind = JobKind.CHARGE,
    amount: int = 1000,
    currency: str = "usd",
    created: int = 1,
) -> ProviderObject:
    successful = (
        status in {"succeeded", "requires_capture"}
        if kind is JobKind.CHARGE
        else (status == "succeeded")
    )
    return ProviderObject(
        "stripe", kind, ref, job_id, amount, currency, status, successful, created
    )


def _kinds(findings: list[Finding]) -> list[tuple[DriftKind, str | None, str | None]]:
    return [(f.kind, f.job_id, f.provider_ref) for f in findings]


def test_a_succeeded_job_with_its_successful_intent_is_no_drift() -> None:
    """The ledger and the provider agree: nothing is reported."""
    assert compare([_obj()], [_job()]) == []


def test_an_authorized_intent_backs_a_succeeded_charge() -> None:
    """requires_capture holds the money: it counts as the charge's success."""
    assert compare([_obj(status="requires_capture")], [_job()]) == []


@pytest.mark.parametrize("state", [JobState.FAILED, JobState.DEAD, JobState.CANCELLED])
def test_a_success_for_a_job_that_ended_otherwise_is_drift(state: JobState) -> None:
    """The provider took money for a job the ledger says failed, is dead or was cancelled."""
    findings = compare([_obj()], [_job(state, ref=None)])
    assert _kinds(findings) == [(DriftKind.SUCCESS_WITHOUT_SUCCEEDED_JOB, JOB, "pi_1")]
    assert str(state) in findings[0].detail


@pytest.mark.parametrize(
    "state",
    [JobState.PENDING, JobState.RUNNING, JobState.RETRYING, JobState.UNKNOWN, JobState.PROCESSING],
)
def test_a_success_for_a_job_in_flight_is_not_drift(state: JobState) -> None:
    """A job not yet final is on its way to the success the provider already has."""
    assert compare([_obj()], [_job(state, ref=None)]) == []


def test_a_success_naming_a_job_we_never_had_is_drift() -> None:
    """An object whose metadata names a job id with no job of ours."""
    findings = compare([_obj(job_id="not-a-job")], [], {})
    assert _kinds(findings) == [(DriftKind.SUCCESS_WITHOUT_SUCCEEDED_JOB, "not-a-job", "pi_1")]
    assert "no charge job not-a-job exists" in findings[0].detail


def test_a_success_naming_a_job_of_another_kind_is_drift() -> None:
    """A Refund naming a charge job's id names no refund job of ours."""
    refund = _obj("re_1", kind=JobKind.REFUND)
    assert _kinds(compare([_obj(), refund], [_job()])) == [
        (DriftKind.SUCCESS_WITHOUT_SUCCEEDED_JOB, JOB, "re_1")
    ]


def test_the_job_state_after_the_listing_decides() -> None:
    """A job running when the window was read but failed by the time its objects were listed:
    the fresher state (named_jobs) is the one compared."""
    findings = compare([_obj()], [_job(JobState.RUNNING, None)], {JOB: _job(JobState.FAILED)})
    assert _kinds(findings) == [(DriftKind.SUCCESS_WITHOUT_SUCCEEDED_JOB, JOB, "pi_1")]


@pytest.mark.parametrize(
    "objects",
    [[], [_obj(status="canceled")], [_obj(status="processing")]],
    ids=["no object", "canceled", "processing"],
)
def test_a_succeeded_job_without_a_successful_object_is_drift(
    objects: list[ProviderObject],
) -> None:
    """The ledger says succeeded; the provider holds no successful object for the job."""
    findings = compare(objects, [_job()])
    assert _kinds(findings) == [(DriftKind.SUCCEEDED_WITHOUT_OBJECT, JOB, "pi_1")]


def test_a_succeeded_job_naming_another_object_than_the_successful_one_is_drift() -> None:
    """The job's provider_ref is not the object that succeeded: the ledger points elsewhere."""
    findings = compare([_obj("pi_2")], [_job(ref="pi_1")])
    assert _kinds(findings) == [(DriftKind.SUCCEEDED_WITHOUT_OBJECT, JOB, "pi_1")]
    assert "successful: pi_2" in findings[0].detail


def test_a_succeeded_refund_needs_a_succeeded_refund_object() -> None:
    """A pending refund is in flight, not a success: a succeeded refund job needs more."""
    refund_job = _job(ref="re_1", kind=JobKind.REFUND)
    pending = _obj("re_1", "pending", kind=JobKind.REFUND)
    assert _kinds(compare([pending], [refund_job])) == [
        (DriftKind.SUCCEEDED_WITHOUT_OBJECT, JOB, "re_1")
    ]
    assert compare([_obj("re_1", kind=JobKind.REFUND)], [refund_job]) == []


@pytest.mark.parametrize(("amount", "currency"), [(1500, "usd"), (1000, "eur")])
def test_an_amount_or_currency_that_differs_is_drift(amount: int, currency: str) -> None:
    """The successful object moved another sum than the job asked for."""
    findings = compare([_obj(amount=amount, currency=currency)], [_job()])
    assert _kinds(findings) == [(DriftKind.AMOUNT_MISMATCH, JOB, "pi_1")]
    assert f"{amount} {currency}" in findings[0].detail


def test_two_successes_for_one_job_are_a_duplicate_of_the_one_it_refers_to() -> None:
    """Two successful intents for one job: the one the job does not refer to is the duplicate,
    even when it is the older one."""
    objects = [_obj("pi_old", created=1), _obj("pi_new", created=2)]
    findings = compare(objects, [_job(ref="pi_new")])
    assert _kinds(findings) == [(DriftKind.DUPLICATE_SUCCESS, JOB, "pi_old")]
    assert "pi_old besides pi_new" in findings[0].detail


def test_duplicates_of_a_job_that_failed_are_both_kinds_of_drift() -> None:
    """A failed job with two successful intents: each is a success the ledger lacks, and the
    newer one is a duplicate of the older."""
    objects = [_obj("pi_a", created=1), _obj("pi_b", created=2)]
    assert _kinds(compare(objects, [_job(JobState.FAILED, None)])) == [
        (DriftKind.DUPLICATE_SUCCESS, JOB, "pi_b"),
        (DriftKind.SUCCESS_WITHOUT_SUCCEEDED_JOB, JOB, "pi_a"),
        (DriftKind.SUCCESS_WITHOUT_SUCCEEDED_JOB, JOB, "pi_b"),
    ]


def test_failed_objects_never_count() -> None:
    """A declined intent of a failed job moved no money: no drift either way."""
    objects = [_obj(status="requires_payment_method")]
    assert compare(objects, [_job(JobState.FAILED, "pi_1")]) == []


def test_a_finding_is_recorded_with_its_detail_clipped() -> None:
    """A ledger_drift row: every column named, the detail within the schema's 500 chars."""
    finding = Finding(DriftKind.AMOUNT_MISMATCH, JOB, "pi_1", "x" * 900)
    row = finding.row(DriftSource.AUDIT)
    assert row["source"] == "audit" and row["kind"] == "amount_mismatch"
    assert len(row["detail"]) == MAX_DETAIL_CHARS
    assert finding.to_dict() == {
        "job_id": JOB,
        "kind": "amount_mismatch",
        "provider_ref": "pi_1",
        "detail": "x" * 900,
    }


@pytest.mark.parametrize(
    ("text", "seconds"), [("90m", 5400), ("24h", 86400), ("7d", 604800), ("3600s", 3600)]
)
def test_durations_read_as_a_number_and_a_unit(text: str, seconds: int) -> None:
    """--since takes s, m, h or d."""
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "h", "1", "1w", "-1h", "1.5h", "0s", "99999d", "1h30m"])
def test_bad_durations_are_refused(text: str) -> None:
    """Anything but one positive whole number and a unit (at most 10 years) is refused."""
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


# -- when the clock audits -------------------------------------------------------------------


@dataclass
class _Settings:
    audit_interval_s: float = 3600.0
    stripe_api_key: object = "sk_test"


@dataclass
class _AuditRows:
    """The audit task's reads of ledger_audits, in memory."""

    rows: list[dict[str, Any]] = field(default_factory=list)

    def now(self) -> datetime:
        return NOW

    def last_audit(self, ran_by: str, *, completed: bool = False) -> dict[str, Any] | None:
        rows = [r for r in self.rows if not completed or (r["finished_at"] and not r["error"])]
        return max(rows, key=lambda r: r["started_at"], default=None)


def _task(rows: list[dict[str, Any]], interval_s: float = 3600.0, key: object = "k") -> Any:
    store: Any = _AuditRows(rows)
    settings: Any = _Settings(interval_s, key)
    return LedgerAudit(store, settings, lambda: lambda since, account: [])


def _row(ago: timedelta, error: str | None = None, finished: bool = True) -> dict[str, Any]:
    started = NOW - ago
    return {"started_at": started, "finished_at": started if finished else None, "error": error}


def test_the_first_audit_covers_the_first_window() -> None:
    """No audit yet: one is due, over the last FIRST_WINDOW."""
    assert _task([])._due_since() == NOW - FIRST_WINDOW


def test_no_audit_within_the_interval() -> None:
    """The last audit started less than the interval ago: nothing is due."""
    assert _task([_row(timedelta(minutes=59))])._due_since() is None
    assert _task([_row(timedelta(minutes=59))]).preview() == 0


def test_the_next_window_starts_before_the_previous_audit_did() -> None:
    """Past the interval, the window starts at the previous start minus the overlap (at most
    the interval)."""
    task = _task([_row(timedelta(minutes=61))])
    assert task._due_since() == NOW - timedelta(minutes=61) - timedelta(hours=1)
    assert task.preview() == 1


def test_a_failed_audit_is_tried_again_sooner_from_the_last_completed_one() -> None:
    """A failure is retried after RETRY_AFTER_FAILURE_S (not a whole interval), from the last
    audit that completed."""
    done = _row(timedelta(hours=30))
    failed = _row(timedelta(seconds=RETRY_AFTER_FAILURE_S - 1), error="ProviderUnavailable")
    assert _task([done, failed], interval_s=86400)._due_since() is None
    failed = _row(timedelta(seconds=RETRY_AFTER_FAILURE_S + 1), error="ProviderUnavailable")
    since = _task([done, failed], interval_s=86400)._due_since()
    assert since == NOW - timedelta(hours=30) - timedelta(days=1)


@pytest.mark.parametrize(("interval_s", "key"), [(0, "k"), (3600, None)])
def test_no_audit_when_disabled_or_without_a_stripe_key(interval_s: float, key: object) -> None:
    """ORCHESTRATOR_AUDIT_INTERVAL_S=0 turns the audit off; without a Stripe key there is
    nothing to list."""
    task = _task([], interval_s=interval_s, key=key)
    assert task.run_once() == 0 and task.preview() == 0
