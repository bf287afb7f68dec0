"""Processing stored provider events (the worker's ``process_webhook_event`` actor).

:func:`process_event` claims the row (compare-and-set on ``status = 'received'`` plus a
lease), asks the provider's registry entry what the event means (:func:`reader_of`), finds
the job by the id in the object's metadata or by provider object id, moves it forward with
one UPDATE naming the states it may leave, and records what happened on the row. A failure
releases the row for the clock's sweep to send again, until ``MAX_PROCESS_ATTEMPTS`` parks it
as ``failed``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from orchestrator.errors import ProviderUnavailable, ValidationError
from orchestrator.logs import get_logger
from orchestrator.models import AttemptOutcome, EventStatus, Job, JobState, WebhookEvent
from orchestrator.ops.ledger import ENDED_UNSUCCESSFUL, DriftKind, DriftSource, Finding
from orchestrator.providers.base import Outcome, Provider
from orchestrator.providers.registry import spec
from orchestrator.webhooks.events import Meaning, NoteReport, ObjectReport, Result

if TYPE_CHECKING:
    from orchestrator.api import Orchestrator

log = get_logger(__name__)

# An event whose processing failed this many times is parked as `failed` for an operator.
MAX_PROCESS_ATTEMPTS = 10
MAX_NOTE_CHARS = 500
MAX_ERROR_CHARS = 2000


def reader_of(provider: str) -> Callable[[WebhookEvent], Meaning] | None:
    """What a stored event of ``provider`` means, read by the provider's registry entry."""
    try:
        found = spec(provider)
    except ValidationError:
        return None
    return found.webhooks.meaning if found.webhooks is not None else None


# Which states a provider event may move a job out of, by the state it proves.
# Never backwards: succeeded, failed and cancelled are final, dead waits for an operator.
# running -> processing/failed is left to the worker, which hears the same answer itself;
# a retrying job's last attempt provably did not execute, so only a success can concern it.
SETTLE_FROM: dict[JobState, tuple[JobState, ...]] = {
    # dead -> succeeded: the provider holds the money, so the ledger adopts it (audited as a
    # transition by the webhook); a success for a failed or cancelled job is drift, logged.
    JobState.SUCCEEDED: (
        JobState.RUNNING,
        JobState.RETRYING,
        JobState.UNKNOWN,
        JobState.PROCESSING,
        JobState.DEAD,
    ),
    JobState.PROCESSING: (JobState.UNKNOWN,),
    JobState.FAILED: (JobState.UNKNOWN, JobState.PROCESSING),
}
_TARGET_OF: dict[AttemptOutcome, JobState] = {
    AttemptOutcome.SUCCEEDED: JobState.SUCCEEDED,
    AttemptOutcome.PENDING: JobState.PROCESSING,
    AttemptOutcome.PERMANENT: JobState.FAILED,
}


def process_event(
    orch: Orchestrator,
    row_id: int,
    *,
    providers: Callable[[], Mapping[str, Provider]] | None = None,
) -> WebhookEvent | None:
    """Apply one stored event to its job; None when another processor holds it or it is done.

    ``providers`` gives the providers that look objects up (a worker passes its own, built
    once); by default ``orch.providers()``.
    """
    event = orch.store.claim_webhook_event(row_id, orch.settings.lease_s)
    if event is None:
        log.debug("webhook.claim_lost", row_id=row_id)
        return None
    try:
        provider = (providers or orch.providers)()[event.provider]
        result = apply_event(orch, provider, event)
    except Exception as exc:  # a lookup failed, or a bug: try again later, then park it
        error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
        released = orch.store.release_webhook_event(row_id, error, MAX_PROCESS_ATTEMPTS)
        level = log.warning if isinstance(exc, ProviderUnavailable) else log.error
        level(
            "webhook.processing_failed",
            event_id=event.event_id,
            type=event.type,
            attempts=event.attempts,
            error=type(exc).__name__,
        )
        return released
    done = orch.store.finish_webhook_event(row_id, result.status, result.job_id, result.note)
    log.info(
        "webhook.processed",
        event_id=event.event_id,
        type=event.type,
        status=result.status,
        job_id=result.job_id,
        note=result.note,
    )
    return done


def apply_event(orch: Orchestrator, provider: Provider, event: WebhookEvent) -> Result:
    """Decide and apply what one event means for its job."""
    read = reader_of(event.provider)
    if read is None:
        return Result(EventStatus.IGNORED, f"events of provider {event.provider} are not read")
    meaning = read(event)
    if isinstance(meaning, ObjectReport):
        return _apply_report(orch, provider, event, meaning)
    if isinstance(meaning, NoteReport):
        return _apply_note(orch, event, meaning)
    return meaning


def _apply_report(
    orch: Orchestrator, provider: Provider, event: WebhookEvent, report: ObjectReport
) -> Result:
    ref = report.ref
    job = find_job(orch, event.provider, report.job_id, ref)
    if job is None or job.kind is not report.job_kind or job.provider != event.provider:
        return Result(
            EventStatus.IGNORED, f"no {report.job_kind} job of ours for {report.label} {ref}"
        )
    if report.amount != job.amount or report.currency != job.currency:
        log.error("webhook.amount_mismatch", event_id=event.event_id, job_id=job.id)
        return Result(
            EventStatus.FAILED, "amount or currency differ from the job's: not applied", job.id
        )
    if report.read_outcome is None:
        # Order matters here: act on the object as it is now, not as it was when sent.
        found = provider.lookup(dataclasses.replace(job, provider_ref=ref))
        if found is None:
            raise ProviderUnavailable(f"{report.label} {ref} not found at the provider")
        outcome = found
    else:
        outcome = report.read_outcome()
    return _settle(orch, event, job, outcome, report)


def _settle(
    orch: Orchestrator, event: WebhookEvent, job: Job, outcome: Outcome, report: ObjectReport
) -> Result:
    label, ref = report.label, report.ref
    target = _TARGET_OF.get(outcome.kind)
    if target is None:
        return Result(EventStatus.IGNORED, f"{label} status {outcome.provider_status} says nothing")
    if job.provider_ref not in (None, ref):
        if target is JobState.SUCCEEDED:  # a second successful object for one job
            log.error("webhook.second_charge_detected", job_id=job.id, event_id=event.event_id)
            _record_second_success(orch, event, job, report)
        return Result(EventStatus.PROCESSED, f"job refers to {job.provider_ref}, not {ref}", job.id)
    if (
        target is JobState.FAILED
        and report.generation is not None
        and report.generation < job.key_generation
    ):
        return Result(
            EventStatus.PROCESSED,
            f"{label} {ref} failed under key generation {report.generation}; the job is on "
            f"{job.key_generation}: no change",
            job.id,
        )
    delay_s = orch.settings.processing_poll_s if target is JobState.PROCESSING else 0.0
    args = {
        "id": job.id,
        "to_state": str(target),
        "from_states": [str(s) for s in SETTLE_FROM[target]],
        "provider_ref": ref,
        "provider_status": outcome.provider_status,
        "error_code": outcome.error_code,
        "delay_s": delay_s,
        # A processing job is polled: by a short broker delay within the window, else by the
        # clock's due dispatch (PostgreSQL owns the schedule).
        "broker_carries": target is JobState.PROCESSING and orch.dispatcher.carries(delay_s),
        "changed_by": f"webhook:{event.event_id}"[:200],
        "reason": f"{event.type}: {label} {ref} is {outcome.provider_status}"[:500],
    }
    if not orch.store.settle_job_from_webhook(args):
        current = orch.store.job(job.id)
        state = current.state if current else job.state
        if target is JobState.SUCCEEDED and state in (JobState.FAILED, JobState.CANCELLED):
            # The provider took money the ledger says it did not: never dropped as "no change".
            log.error(
                "ledger.drift_detected",
                job_id=job.id,
                state=str(state),
                provider_ref=ref,
                event_id=event.event_id,
            )
            note = f"drift: {label} {ref} succeeded but the job is {state}"
            _record_drift(orch, event, job, DriftKind.SUCCESS_WITHOUT_SUCCEEDED_JOB, ref, note)
            return Result(EventStatus.PROCESSED, note, job.id)
        return Result(
            EventStatus.PROCESSED, f"job is {state}: no change ({outcome.provider_status})", job.id
        )
    if target is JobState.PROCESSING:
        orch.dispatcher.schedule(job.id, delay_s)  # polled until final, like any processing job
    log.info("job.settled_by_webhook", job_id=job.id, state=str(target), event_id=event.event_id)
    return Result(EventStatus.PROCESSED, f"job {job.state} -> {target}", job.id)


def _record_second_success(
    orch: Orchestrator, event: WebhookEvent, job: Job, report: ObjectReport
) -> None:
    """A success for an object other than the one the job refers to: a duplicate when the job
    succeeded, a success the ledger lacks when it ended otherwise; in flight, the job may yet
    settle either way (the audit compares once it has)."""
    if job.state is JobState.SUCCEEDED:
        kind = DriftKind.DUPLICATE_SUCCESS
    elif job.state in ENDED_UNSUCCESSFUL:
        kind = DriftKind.SUCCESS_WITHOUT_SUCCEEDED_JOB
    else:
        return
    note = f"{report.label} {report.ref} succeeded; the {job.state} job has {job.provider_ref}"
    _record_drift(orch, event, job, kind, report.ref, note)


def _record_drift(
    orch: Orchestrator, event: WebhookEvent, job: Job, kind: DriftKind, ref: str, note: str
) -> None:
    """Record the drift in ``ledger_drift`` (once; a failure here fails the event's processing,
    which is retried: drift is never dropped)."""
    finding = Finding(kind, job.id, ref, f"{event.type} {event.event_id}: {note}", event.provider)
    orch.ops_store.record_drift([finding.row(DriftSource.WEBHOOK)])


def _apply_note(orch: Orchestrator, event: WebhookEvent, report: NoteReport) -> Result:
    """Refunds and disputes are recorded on the event row; the job keeps its state."""
    job = find_job(orch, event.provider, report.job_id, report.ref)
    if job is None:
        return Result(EventStatus.IGNORED, f"no job of ours for {report.subject}")
    return Result(EventStatus.PROCESSED, report.note[:MAX_NOTE_CHARS], job.id)


def find_job(
    orch: Orchestrator, provider: str, job_id: str | None, provider_ref: str | None
) -> Job | None:
    """The job named in the object's metadata, else the job holding that provider id."""
    if job_id is not None:
        job = orch.store.job(job_id)
        if job is not None:
            return job
    if not provider_ref:
        return None
    return orch.store.job_by_provider_ref(provider, provider_ref)
