"""The clock: one active scheduler (a PostgreSQL advisory lock) running periodic passes.

``run_once()`` is one pass, which tests and ``orchestrator reconcile --once`` call directly.
Each task (a :class:`Task`, built by :func:`default_tasks`) has
``run_once() -> int``, how many rows it acted on, and ``preview() -> int`` for ``--dry-run``:

* ``leases_expired`` (:mod:`~orchestrator.maintenance.leases`): ``running`` jobs whose lease
  passed become ``unknown`` (their worker died, maybe mid-call) and are sent to be resolved;
* ``due_dispatched`` (:mod:`~orchestrator.maintenance.schedule`): jobs scheduled in
  PostgreSQL (due again past the broker's delay window, so no message was sent for them) are
  sent their message as they come due (a little ahead, with a short broker delay);
* ``dispatched`` (a :class:`~orchestrator.maintenance.sweeps.Resend`): due jobs (pending,
  retrying, unknown, processing) with no message sent within the grace get one: a lost
  message, Redis emptied, a crash between commit and send;
* ``attempts_deleted`` (a :class:`~orchestrator.maintenance.sweeps.DeleteOld`): attempt rows
  of finished jobs past the retention window;
* ``webhooks_redispatched`` (a :class:`~orchestrator.maintenance.sweeps.Resend`): webhook
  events stored but not processed within the grace (their message was lost, or processing
  failed and released them) get their processing message again;
* ``webhook_events_deleted`` (a :class:`~orchestrator.maintenance.sweeps.DeleteOld`): settled
  webhook events past their retention window;
* ``dead_letters_reconciled`` (:mod:`~orchestrator.maintenance.deadletters`): messages
  dramatiq dead-lettered in Redis, copied to PostgreSQL for operators (and re-sent when
  their job is still live);
* ``settlements_delivered`` (:mod:`~orchestrator.maintenance.settlements`): settles from the
  outbox sent to the application's settlement hooks, counted into the settled totals;
* ``ledger_audits`` (:mod:`~orchestrator.maintenance.audit`): once every
  ``ORCHESTRATOR_AUDIT_INTERVAL_S``, the ledger compared with Stripe's own lists, drift
  recorded in ``ledger_drift``.

``run()`` waits for the lock (a second clock waits here and takes over when the first dies,
since PostgreSQL releases a session's advisory locks with its connection), listens for
``orchestrator_dispatch`` notifications (sent at commit by jobs enqueued inside a caller's
transaction) and runs a pass every interval. Between passes it wakes when the next scheduled
job comes due (at least ``MIN_WAIT_S`` apart) and runs the due dispatch alone, so a job
backed off for 10 s runs about 10 s later, not at the next pass; it looks for newly
scheduled jobs at least every broker delay window, which is sooner than any of them is due
(:func:`~orchestrator.maintenance.schedule.wait_s`). A lost connection (the server
restarted) loses the lock too: the clock goes back to waiting for it.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

import psycopg

from orchestrator.api import Orchestrator
from orchestrator.db.pool import (
    KEEPALIVE_OPTIONS,
    Conn,
    connect,
    holds_advisory_lock,
    listen,
    try_advisory_lock,
)
from orchestrator.logs import get_logger
from orchestrator.maintenance import BATCH_LIMIT
from orchestrator.maintenance.audit import LedgerAudit, stripe_lister
from orchestrator.maintenance.deadletters import ReconcileDeadLetters
from orchestrator.maintenance.leases import ExpireLeases
from orchestrator.maintenance.schedule import DispatchDue, lead_s, look_again_s, wait_s
from orchestrator.maintenance.settlements import DeliverSettlements
from orchestrator.maintenance.sweeps import DeleteOld, Resend
from orchestrator.ops.heartbeats import Beacon, clock_beacon
from orchestrator.webhooks.ingest import send_process_message

log = get_logger(__name__)

# Any constant unique to this application: the one lock a clock must hold to act.
CLOCK_LOCK_ID = 0x636C6F63  # "cloc"
# Jobs enqueued inside a caller's transaction announce themselves here at commit.
DISPATCH_CHANNEL = "orchestrator_dispatch"
# The clock never wakes more often than this for the due dispatch: jobs coming due within it
# are sent together.
MIN_WAIT_S = 0.02


class Task(Protocol):
    """One periodic task: what ``run_once`` returns is reported under ``name``."""

    @property
    def name(self) -> str: ...

    def run_once(self) -> int: ...

    def preview(self) -> int: ...


@dataclass(frozen=True, slots=True)
class PassReport:
    """What one pass did (or, in a dry run, would do), by task name."""

    counts: dict[str, int] = field(default_factory=dict)
    dry_run: bool = False

    def __getitem__(self, name: str) -> int:
        return self.counts.get(name, 0)

    @property
    def leases_expired(self) -> int:
        return self["leases_expired"]

    @property
    def dispatched(self) -> int:
        return self["dispatched"]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def default_tasks(orch: Orchestrator, owner: str) -> list[Task]:
    """Every task, in the order a pass runs them."""
    store, dispatcher, settings = orch.store, orch.dispatcher, orch.settings
    grace_s = settings.dispatch_grace_s
    return [
        ExpireLeases(store, dispatcher, owner),
        # Jobs scheduled in PostgreSQL (past the broker's delay window) coming due.
        DispatchDue(store, dispatcher, lead_s(settings.broker_delay_window_s)),
        Resend(
            "dispatched",
            "clock.jobs_redispatched",
            partial(store.due_for_dispatch, grace_s),
            partial(store.count_due_for_dispatch, grace_s),
            dispatcher.send,
        ),
        DeleteOld(
            "attempts_deleted",
            settings.attempt_retention_days,
            store.delete_old_attempts,
            store.count_old_attempts,
        ),
        # Webhook events stored but left unprocessed (their message was lost): sent again.
        Resend(
            "webhooks_redispatched",
            "clock.webhook_events_redispatched",
            partial(store.stale_webhook_events, grace_s),
            partial(store.count_stale_webhook_events, grace_s),
            partial(send_process_message, dispatcher),
        ),
        DeleteOld(
            "webhook_events_deleted",
            settings.event_retention_days,
            store.delete_old_webhook_events,
            store.count_old_webhook_events,
        ),
        # Messages dramatiq dead-lettered in Redis: recorded for operators, live jobs re-sent.
        ReconcileDeadLetters(store, dispatcher, settings, owner),
        # Settles from the outbox to the settlement hooks (and the settled totals).
        DeliverSettlements.from_text(store, dispatcher, settings.settle_hooks),
        # The ledger against Stripe's consistent lists, when the last audit is old enough.
        LedgerAudit(orch.ops_store, settings, partial(stripe_lister, orch)),
    ]


class Clock:
    def __init__(self, orchestrator: Orchestrator, tasks: list[Task] | None = None) -> None:
        self.orch = orchestrator
        self.owner = f"clock:{socket.gethostname()}:{os.getpid()}"
        self.tasks = default_tasks(orchestrator, self.owner) if tasks is None else tasks
        # The due dispatch, run between passes as jobs come due (None: no such task).
        self.due = next((t for t in self.tasks if isinstance(t, DispatchDue)), None)

    def run_once(self, *, dry_run: bool = False) -> PassReport:
        """One pass of every periodic task; returns what it did (or would do)."""
        counts: dict[str, int] = {}
        for task in self.tasks:
            if dry_run:
                counts[task.name] = task.preview()
                continue
            try:
                counts[task.name] = task.run_once()
            except Exception:  # one failing task must not starve the others
                log.exception("clock.task_failed", task=task.name)
        return PassReport(counts, dry_run)

    def run(self, stop: threading.Event) -> None:
        """Wait for the lock, then act until ``stop`` is set.

        When the lock's connection dies (a restart or crash of PostgreSQL, a network cut) the
        lock went with it: another clock may hold it by now. This one logs, waits an interval
        and starts over from waiting for the lock.
        """
        beacon = clock_beacon(self.orch.settings)  # `orchestrator status`: leader or standby
        try:
            while not stop.is_set():
                try:
                    self._hold_lock_and_act(stop, beacon)
                except psycopg.OperationalError as exc:
                    log.warning("clock.connection_lost", owner=self.owner, error=type(exc).__name__)
                    beacon.beat(leader=False)
                    stop.wait(self.orch.settings.clock_interval_s)
        finally:
            beacon.clear()

    def _hold_lock_and_act(self, stop: threading.Event, beacon: Beacon) -> None:
        url = self.orch.settings.database_url
        with connect(url, autocommit=True, **KEEPALIVE_OPTIONS) as conn:
            log.info("clock.waiting_for_lock", owner=self.owner)
            while not stop.is_set():
                if try_advisory_lock(conn, CLOCK_LOCK_ID):
                    break
                beacon.beat(leader=False)
                stop.wait(self.orch.settings.clock_interval_s)
            if stop.is_set():
                return
            log.info("clock.lock_acquired", owner=self.owner)
            listen(conn, DISPATCH_CHANNEL)
            interval = self.orch.settings.clock_interval_s
            next_pass = time.monotonic()
            due_between = 0  # sent by the due dispatch since the last pass
            while not stop.is_set():
                if time.monotonic() >= next_pass:
                    # Still the leader? A partition may have ended this session on the server
                    # while this idle connection noticed nothing; another clock may lead now.
                    if not holds_advisory_lock(conn, CLOCK_LOCK_ID):
                        log.warning("clock.lock_lost", owner=self.owner)
                        return
                    beacon.beat(leader=True)
                    next_pass = time.monotonic() + interval
                    counts = self.run_once().counts
                    if due_between and self.due is not None:
                        counts[self.due.name] = counts.get(self.due.name, 0) + due_between
                    due_between = 0
                    if sum(counts.values()):
                        log.info("clock.pass_completed", **counts)
                else:
                    due_between += self._dispatch_due()
                self._dispatch_notified(conn, self._wait_s(next_pass - time.monotonic()))

    def _dispatch_due(self) -> int:
        """The due dispatch alone, between passes."""
        if self.due is None:
            return 0
        try:
            return self.due.run_once()
        except Exception:
            log.exception("clock.task_failed", task=self.due.name)
            return 0

    def _wait_s(self, until_pass_s: float) -> float:
        """Until the next pass, or until the next scheduled job comes due if sooner."""
        due_in_s: float | None = None
        if self.due is not None:
            try:
                due_in_s = self.due.next_due_in_s()
            except Exception as exc:  # PostgreSQL unreachable: the next pass says so
                log.warning("clock.next_due_unknown", error=type(exc).__name__)
        look_again = look_again_s(self.orch.settings.broker_delay_window_s)
        return wait_s(until_pass_s, due_in_s, look_again, MIN_WAIT_S)

    def _dispatch_notified(self, conn: Conn, timeout_s: float) -> int:
        """Send each job announced at commit; waits up to ``timeout_s`` for notifications."""
        sent = 0
        for notify in conn.notifies(timeout=timeout_s, stop_after=BATCH_LIMIT):
            try:
                self.orch.dispatcher.send(notify.payload)
            except Exception as exc:  # committed: the dispatch sweep sends it after the grace
                log.warning("clock.dispatch_deferred", job_id=notify.payload, error=str(exc))
                continue
            sent += 1
        return sent
