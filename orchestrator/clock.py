"""The clock: one active scheduler (a PostgreSQL advisory lock) running periodic passes.

``run_once()`` is one pass, which tests and ``orchestrator reconcile --once`` call directly.
Each task is a function ``(orchestrator, owner) -> int`` returning how many rows it acted on,
and optionally a preview ``(orchestrator) -> int`` for ``--dry-run``:

* ``leases_expired``: ``running`` jobs whose lease passed become ``unknown`` (their worker
  died, maybe mid-call) and are sent to be resolved by lookup;
* ``dispatched``: due jobs (pending, retrying, unknown, processing) with no message sent
  within the grace get one: a lost message, Redis emptied, a crash between commit and send;
* ``attempts_deleted``: attempt rows of finished jobs past the retention window;
* ``webhooks_redispatched``: webhook events stored but not processed within the grace get
  their processing message again;
* ``webhook_events_deleted``: settled webhook events past their retention window;
* ``dead_letters_reconciled``: messages dramatiq dead-lettered in Redis, copied to
  PostgreSQL for operators (and re-sent when their job is still live).

``run()`` waits for the lock (a second clock waits here and takes over when the first dies,
since PostgreSQL releases a session's advisory locks with its connection), listens for
``orchestrator_dispatch`` notifications (sent at commit by jobs enqueued inside a caller's
transaction) and runs a pass every interval. A lost connection (the server restarted) loses
the lock too: the clock goes back to waiting for it.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg

from orchestrator import webhooks
from orchestrator.api import Orchestrator
from orchestrator.deadletters import count_dead_letters, reconcile_dead_letters
from orchestrator.logs import get_logger
from orchestrator.store import Conn, connect

log = get_logger(__name__)

# Any constant unique to this application: the one lock a clock must hold to act.
CLOCK_LOCK_ID = 0x636C6F63  # "cloc"
DISPATCH_CHANNEL = "orchestrator_dispatch"
# Rows one pass touches per task, so a huge backlog is worked through in bounded slices.
BATCH_LIMIT = 500


@dataclass(frozen=True, slots=True)
class Task:
    name: str
    run: Callable[[Orchestrator, str], int]
    preview: Callable[[Orchestrator], int] | None = None


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


def expire_leases(orch: Orchestrator, owner: str) -> int:
    expired = orch.store.expire_leases(owner, BATCH_LIMIT)
    for job_id in expired:
        orch.dispatcher.send(job_id)
    if expired:
        log.warning("clock.leases_expired", count=len(expired))
    return len(expired)


def dispatch_due(orch: Orchestrator, owner: str) -> int:
    due = orch.store.due_for_dispatch(orch.settings.dispatch_grace_s, BATCH_LIMIT)
    for job_id in due:
        orch.dispatcher.send(job_id)
    if due:
        log.info("clock.jobs_redispatched", count=len(due))
    return len(due)


def delete_old_attempts(orch: Orchestrator, owner: str) -> int:
    deleted = orch.store.delete_old_attempts(orch.settings.attempt_retention_days, BATCH_LIMIT)
    if deleted:
        log.info("clock.attempts_deleted", count=deleted)
    return deleted


def delete_old_events(orch: Orchestrator, owner: str) -> int:
    days = orch.settings.event_retention_days
    deleted = orch.store.delete_old_webhook_events(days, BATCH_LIMIT)
    if deleted:
        log.info("clock.webhook_events_deleted", count=deleted)
    return deleted


TASKS: list[Task] = [
    Task("leases_expired", expire_leases, lambda o: o.store.count_expired_leases()),
    Task(
        "dispatched",
        dispatch_due,
        lambda o: o.store.count_due_for_dispatch(o.settings.dispatch_grace_s),
    ),
    Task(
        "attempts_deleted",
        delete_old_attempts,
        lambda o: o.store.count_old_attempts(o.settings.attempt_retention_days),
    ),
    # Webhook events stored but left unprocessed (their message was lost): sent again.
    Task(
        "webhooks_redispatched",
        lambda o, _owner: webhooks.redispatch_stale_events(o),
        webhooks.count_stale_events,
    ),
    # Messages dramatiq dead-lettered in Redis: recorded for operators, live jobs re-sent.
    Task(
        "webhook_events_deleted",
        delete_old_events,
        lambda o: o.store.count_old_webhook_events(o.settings.event_retention_days),
    ),
    Task("dead_letters_reconciled", reconcile_dead_letters, count_dead_letters),
]


class Clock:
    def __init__(self, orchestrator: Orchestrator, tasks: list[Task] | None = None) -> None:
        self.orch = orchestrator
        self.owner = f"clock:{socket.gethostname()}:{os.getpid()}"
        self.tasks = TASKS if tasks is None else tasks

    def run_once(self, *, dry_run: bool = False) -> PassReport:
        """One pass of every periodic task; returns what it did (or would do)."""
        counts: dict[str, int] = {}
        for task in self.tasks:
            if dry_run:
                if task.preview is not None:
                    counts[task.name] = task.preview(self.orch)
                continue
            try:
                counts[task.name] = task.run(self.orch, self.owner)
            except Exception:  # one failing task must not starve the others
                log.exception("clock.task_failed", task=task.name)
        return PassReport(counts, dry_run)

    def run(self, stop: threading.Event) -> None:
        """Wait for the lock, then act until ``stop`` is set.

        When the lock's connection dies (a restart or crash of PostgreSQL, a network cut) the
        lock went with it: another clock may hold it by now. This one logs, waits an interval
        and starts over from waiting for the lock.
        """
        while not stop.is_set():
            try:
                self._hold_lock_and_act(stop)
            except psycopg.OperationalError as exc:
                log.warning("clock.connection_lost", owner=self.owner, error=type(exc).__name__)
                stop.wait(self.orch.settings.clock_interval_s)

    def _hold_lock_and_act(self, stop: threading.Event) -> None:
        with connect(self.orch.settings.database_url, autocommit=True) as conn:
            log.info("clock.waiting_for_lock", owner=self.owner)
            while not stop.is_set():
                row = conn.execute("SELECT pg_try_advisory_lock(%s) AS ok", (CLOCK_LOCK_ID,))
                got = row.fetchone()
                if got and got["ok"]:
                    break
                stop.wait(self.orch.settings.clock_interval_s)
            if stop.is_set():
                return
            log.info("clock.lock_acquired", owner=self.owner)
            conn.execute("LISTEN orchestrator_dispatch")  # DISPATCH_CHANNEL
            interval = self.orch.settings.clock_interval_s
            while not stop.is_set():
                report = self.run_once()
                if report.total:
                    log.info("clock.pass_completed", **report.counts)
                self._dispatch_notified(conn, interval)

    def _dispatch_notified(self, conn: Conn, timeout_s: float) -> int:
        """Send each job announced at commit; waits up to ``timeout_s`` for notifications."""
        sent = 0
        for notify in conn.notifies(timeout=timeout_s, stop_after=BATCH_LIMIT):
            self.orch.dispatcher.send(notify.payload)
            sent += 1
        return sent
