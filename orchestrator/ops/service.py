"""The operator surface: list and inspect jobs, and replay or discard dead ones.

Shared by the CLI (``orchestrator jobs ...``, ``orchestrator dlq ...``) and the ops HTTP API.
Every state change is one audited statement that checks the state it expects
(:class:`orchestrator.db.OpsStore`'s ``replay``, ``adopt`` and ``discard``). What a replay
does is decided by :func:`orchestrator.ops.replay.plan_replay`; this module gathers its facts
and applies it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from orchestrator.broker import Dispatcher
from orchestrator.config import Settings
from orchestrator.db import OpsStore, Row, Store
from orchestrator.errors import InvalidOperation, JobNotFound, ProviderUnavailable
from orchestrator.logs import get_logger
from orchestrator.models import (
    Attempt,
    AttemptOutcome,
    DeadReason,
    Job,
    JobKind,
    JobState,
    Transition,
    row_to_json,
)
from orchestrator.ops.filters import (
    MAX_PAGE_SIZE,
    MAX_REASON_CHARS,
    JobFilter,
    Page,
    actor_name,
    decode_cursor,
    encode_cursor,
    job_uuid,
    page_size,
    reason_text,
)
from orchestrator.ops.ledger import DriftKind, drift_to_json
from orchestrator.ops.replay import (
    BulkReport,
    ReplayAction,
    ReplayPlan,
    ReplayResult,
    key_may_be_saved,
    plan_replay,
    replay_rate,
)
from orchestrator.providers.base import Outcome, Provider

if TYPE_CHECKING:
    from orchestrator.api import Orchestrator

log = get_logger(__name__)


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
class JobCounts:
    """What the dashboard and ``/ops/api/counts`` show, read at a cost that follows the live
    jobs and never the history: ``live`` counts the jobs in each of
    :data:`~orchestrator.models.LIVE_STATES` (dead included: the DLQ); ``settled`` the settles
    ever into each terminal state (a replayed job that settles again counts again), as
    ``orchestrator_jobs_settled_total`` reports them."""

    live: dict[str, int]
    settled: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {"jobs_by_state": self.live, "settled_total": self.settled}


class Operations:
    """Operator actions over the stores. ``providers`` is called once, when a replay first
    needs a provider lookup (building them wants the provider keys, listing does not);
    ``sleep`` and ``monotonic`` pace bulk runs."""

    def __init__(
        self,
        store: Store,
        ops_store: OpsStore,
        dispatcher: Dispatcher,
        settings: Settings,
        *,
        providers: Callable[[], Mapping[str, Provider]],
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.ops_store = ops_store
        self.dispatcher = dispatcher
        self.settings = settings
        self._make_providers = providers
        self._providers: Mapping[str, Provider] | None = None
        self._sleep = sleep
        self._monotonic = monotonic

    @classmethod
    def from_orchestrator(cls, orch: Orchestrator) -> Operations:
        """Over ``orch``'s stores, dispatcher and settings, with its providers (built lazily)."""
        return cls(
            orch.store, orch.ops_store, orch.dispatcher, orch.settings, providers=orch.providers
        )

    def providers(self) -> Mapping[str, Provider]:
        if self._providers is None:
            self._providers = self._make_providers()
        return self._providers

    # -- reading ---------------------------------------------------------------------------

    def list_jobs(
        self, flt: JobFilter, *, limit: int | None = None, cursor: str | None = None
    ) -> Page:
        return self._page(flt, limit, cursor, dead_only=flt.state is JobState.DEAD)

    def list_dead(
        self, flt: JobFilter, *, limit: int | None = None, cursor: str | None = None
    ) -> Page:
        return self._page(replace(flt, state=JobState.DEAD), limit, cursor, dead_only=True)

    def _page(
        self, flt: JobFilter, limit: int | None, cursor: str | None, *, dead_only: bool
    ) -> Page:
        size = page_size(limit)
        created_at, job_id = decode_cursor(cursor)
        args = {
            **flt.args(),
            "cursor_created_at": created_at,
            "cursor_id": job_id,
            "limit": size + 1,  # one more tells whether a next page exists
        }
        rows = self.ops_store.page_jobs(args, dead_only=dead_only)
        jobs = rows[:size]
        more = len(rows) > size
        return Page(jobs, encode_cursor(jobs[-1]) if more and jobs else None)

    def count_dead(self, flt: JobFilter) -> int:
        return self.ops_store.count_dead(flt.args())

    def show(self, job_id: str) -> JobDetail:
        """The job with its attempts, transitions and operator actions (any state)."""
        job = self._job(job_id)
        actions = [_action_json(r) for r in self.ops_store.actions_for(job.id)]
        return JobDetail(job, self.store.attempts(job.id), self.store.transitions(job.id), actions)

    def counts(self) -> JobCounts:
        live = self.ops_store.live_jobs_by_state()
        settled = dict.fromkeys((str(s) for s in JobState if s.is_terminal), 0)
        for r in self.ops_store.settled_totals():
            settled[r["state"]] = settled.get(r["state"], 0) + int(r["n"])
        return JobCounts(live, settled)

    def attempts_per_minute(self, window_s: float) -> list[dict[str, Any]]:
        rows = self.ops_store.attempts_per_minute(window_s)
        return [
            {"minute": r["minute"].isoformat(), "outcome": r["outcome"], "count": int(r["n"])}
            for r in rows
        ]

    def drift(self, limit: int) -> dict[str, Any]:
        """Recorded ledger drift: rows by kind (every kind) and the newest ``limit`` rows."""
        by_kind = self.ops_store.drift_by_kind()
        return {
            "counts": {str(k): by_kind.get(str(k), 0) for k in DriftKind},
            "drift": [drift_to_json(r) for r in self.ops_store.recent_drift(limit)],
        }

    # -- replay ----------------------------------------------------------------------------

    def plan(self, job: Job, *, accept_duplicate_risk: bool = False) -> ReplayPlan:
        """Decide (asking the provider when the key may hold a saved response)."""
        attempts = self.store.attempts(job.id)
        provider = self.providers().get(job.provider)
        # Without the provider configured here, the job itself tells: only a provider that
        # keeps no idempotency keys leaves a job dead as ambiguous.
        honours = (
            provider.honours_idempotency_keys
            if provider is not None
            else job.dead_reason != DeadReason.AMBIGUOUS
        )
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
            search_grace_s=self.settings.search_grace_s,
            honours_keys=honours,
            budget=self.settings.max_attempts,
            consistent=provider is not None and provider.lookup_is_consistent(job),
            accept_duplicate_risk=accept_duplicate_risk,
        )

    def replay(
        self,
        job_id: str,
        actor: str,
        *,
        reason: str | None = None,
        accept_duplicate_risk: bool = False,
    ) -> ReplayResult:
        """Replay one dead job (or adopt its provider-side success). Never raises for a skip.
        A dead ``ambiguous`` job (a send that may have been delivered) is replayed only with
        ``accept_duplicate_risk``, which is audited."""
        job = self._job(job_id)
        plan = self.plan(job, accept_duplicate_risk=accept_duplicate_risk)
        why = reason_text(reason, required=False)
        return self._apply(job, plan, actor_name(actor), why, accept_duplicate_risk)

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
        accept_duplicate_risk: bool = False,
    ) -> BulkReport:
        """Replay every dead job the filter selects, at most ``rate_per_s`` a second."""
        who = actor_name(actor)
        why = reason_text(reason, required=False)
        interval_s = 1.0 / replay_rate(rate_per_s)
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
                plan = self.plan(job, accept_duplicate_risk=accept_duplicate_risk)
                result = self._apply(job, plan, who, why, accept_duplicate_risk)
            report.results.append(result)
            if on_result is not None:
                on_result(result)
        self.ops_store.audit(
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
        key_saved = key_may_be_saved(job, self.store.attempts(job.id))
        why = "would ask the provider first" if key_saved else "would replay with the same key"
        return ReplayResult(
            job.id, ReplayAction.SKIP, f"dry run: {why}", str(job.state), job.key_generation
        )

    def _apply(
        self,
        job: Job,
        plan: ReplayPlan,
        actor: str,
        reason: str | None,
        accept_duplicate_risk: bool = False,
    ) -> ReplayResult:
        why = f"replay: {plan.reason}" + (f" ({reason})" if reason else "")
        details: dict[str, Any] = {"plan": plan.reason, "generation_step": plan.generation_step}
        if accept_duplicate_risk:
            details["accept_duplicate_risk"] = True
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
            moved = self.ops_store.adopt(args)
        else:
            args |= {
                "generation_step": plan.generation_step,
                "expected_generation": job.key_generation,
                "budget": self.settings.max_attempts,
                "horizon_s": self.settings.retry_horizon_s,
            }
            moved = self.ops_store.replay(args)
        if moved is None:
            return ReplayResult(
                job.id,
                ReplayAction.SKIP,
                "changed meanwhile (no longer dead)",
                "?",
                job.key_generation,
            )
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
            self.dispatcher.send(job_id)
        except Exception as exc:  # committed as pending: the clock's sweep sends it
            log.warning("ops.dispatch_deferred", job_id=job_id, error=type(exc).__name__)

    # -- discard ---------------------------------------------------------------------------

    def discard(self, job_id: str, actor: str, reason: str, *, force: bool = False) -> Job:
        """dead -> cancelled, with a mandatory reason.

        A charge or refund is looked up at its provider first: when the provider holds a
        successful or pending object for it, the money moved (or may yet), so discarding
        would make the ledger lie; that is refused (replay adopts the object instead) unless
        ``force``, which is audited with what the provider held.
        """
        why = reason_text(reason, required=True)
        who = actor_name(actor)
        job = self._job(job_id)
        if job.state is not JobState.DEAD:
            raise InvalidOperation(f"job {job.id} is {job.state}, not dead")
        details: dict[str, Any] = {"dead_reason": job.dead_reason}
        held = self._held_at_provider(job, force=force)
        if held is not None:
            details |= {"forced": True, **held}
        args = {
            "id": job.id,
            "actor": who,
            "reason": f"discarded{' (forced)' if force else ''}: {why}"[:MAX_REASON_CHARS],
            "details": details,
        }
        discarded = self.ops_store.discard(args)
        if discarded is None:
            raise InvalidOperation(f"job {job.id} is {self._job(job.id).state}, not dead")
        log.info("ops.job_discarded", job_id=job.id, actor=who)
        return discarded

    def _held_at_provider(self, job: Job, *, force: bool) -> dict[str, Any] | None:
        """What the provider holds for a dead charge or refund that forbids a discard (None:
        nothing); raises InvalidOperation unless ``force``."""
        provider = self.providers().get(job.provider)
        if provider is None or job.kind not in (JobKind.CHARGE, JobKind.REFUND):
            return None
        try:
            found = _find(provider, job)
        except ProviderUnavailable as exc:
            if force:
                return {"provider_lookup": f"failed: {exc}"}
            raise InvalidOperation(
                f"job {job.id}: the provider could not be asked ({exc}); --force discards "
                "without asking"
            ) from exc
        if found is None or found.kind not in (AttemptOutcome.SUCCEEDED, AttemptOutcome.PENDING):
            return None
        if not force:
            raise InvalidOperation(
                f"job {job.id}: {job.provider} holds {found.provider_ref} "
                f"({found.provider_status}); replay adopts it, --force discards anyway"
            )
        return {"provider_ref": found.provider_ref, "provider_status": found.provider_status}

    # -- plumbing --------------------------------------------------------------------------

    def _job(self, job_id: str) -> Job:
        job = self.store.job(job_uuid(job_id))
        if job is None:
            raise JobNotFound(f"no job with id {job_id}")
        return job

    def _since_last_call(self, job: Job, attempts: list[Attempt]) -> float:
        times = [a.finished_at for a in attempts]
        if job.last_attempt_at is not None:
            times.append(job.last_attempt_at)
        if not times:
            return float("inf")
        return float((self.ops_store.now() - max(times)).total_seconds())


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
