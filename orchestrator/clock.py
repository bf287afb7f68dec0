"""The clock: one active scheduler (a PostgreSQL advisory lock) running periodic passes.

``run_once()`` is one pass, which tests and ``orchestrator reconcile --once`` call directly:

* lease expiry: ``running`` jobs whose lease passed become ``unknown`` (their worker died);
* dispatch sweep: due jobs with no message sent within the grace get one (a lost message,
  Redis emptied, a crash between commit and send).

``run()`` holds the lock, listens for ``orchestrator_dispatch`` notifications (sent at commit
by jobs enqueued inside a caller's transaction) and runs a pass every interval.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass

from orchestrator.api import Orchestrator
from orchestrator.logs import get_logger
from orchestrator.store import Conn, connect

log = get_logger(__name__)

# Any constant unique to this application: the one lock a clock must hold to act.
CLOCK_LOCK_ID = 0x636C6F63  # "cloc"
DISPATCH_CHANNEL = "orchestrator_dispatch"
# Rows one pass touches per task, so a huge backlog is worked through in bounded slices.
BATCH_LIMIT = 500


@dataclass(frozen=True, slots=True)
class PassReport:
    leases_expired: int
    dispatched: int

    @property
    def total(self) -> int:
        return self.leases_expired + self.dispatched


class Clock:
    def __init__(self, orchestrator: Orchestrator) -> None:
        self.orch = orchestrator
        self.owner = f"clock:{socket.gethostname()}:{os.getpid()}"

    def run_once(self) -> PassReport:
        """One pass of every periodic task; returns what it did."""
        expired = self.orch.store.expire_leases(self.owner, BATCH_LIMIT)
        for job_id in expired:
            self.orch.dispatcher.send(job_id)
        if expired:
            log.warning("clock.leases_expired", count=len(expired))
        due = self.orch.store.due_for_dispatch(self.orch.settings.dispatch_grace_s, BATCH_LIMIT)
        for job_id in due:
            self.orch.dispatcher.send(job_id)
        if due:
            log.info("clock.jobs_redispatched", count=len(due))
        return PassReport(len(expired), len(due))

    def run(self, stop: threading.Event) -> None:
        """Wait for the lock, then act until ``stop`` is set (or the lock's connection dies)."""
        with connect(self.orch.settings.database_url, autocommit=True) as conn:
            log.info("clock.waiting_for_lock")
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
                self.run_once()
                self._dispatch_notified(conn, interval)

    def _dispatch_notified(self, conn: Conn, timeout_s: float) -> int:
        """Send each job announced at commit; waits up to ``timeout_s`` for notifications."""
        sent = 0
        for notify in conn.notifies(timeout=timeout_s, stop_after=BATCH_LIMIT):
            self.orch.dispatcher.send(notify.payload)
            sent += 1
        return sent
