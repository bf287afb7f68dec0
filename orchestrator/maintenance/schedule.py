"""The clock's due dispatch: PostgreSQL owns the schedule.

A job due again later than the broker's delay window (``ORCHESTRATOR_BROKER_DELAY_WINDOW_S``:
a long backoff, a breaker deferral, a 429 pause, a ``processing`` poll, a lookup put off) gets
no message when it is rescheduled (:meth:`~orchestrator.broker.Dispatcher.schedule`): its
``next_attempt_at`` is the schedule, and its ``dispatched_at`` stays before it. So no broker
holds long-delayed messages, which RabbitMQ redelivers after its consumer timeout and an
emptied Redis loses.

:class:`DispatchDue` takes the jobs coming due from ``jobs_scheduled_idx`` in bulk (one
``UPDATE ... FOR UPDATE SKIP LOCKED`` marks a batch dispatched) and sends each its message. It
sends a little ahead (:func:`lead_s`, half the window, at most 1 s), with a broker delay of
what is left, so that the sending is done by the due time and workers start on time. It tells
the clock when the next one is to be sent (:meth:`DispatchDue.next_due_in_s`), so that the
clock wakes then rather than at its next interval: a 10 s backoff runs about 10 s later.

What it does not cover, the grace sweep (``dispatched``, a
:class:`~orchestrator.maintenance.sweeps.Resend`) still does: a message sent (by anyone: the
API, a short broker delay, this task) and lost before a worker claimed the job, found once the
job has been due and unclaimed for ``ORCHESTRATOR_DISPATCH_GRACE_S``.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.broker import Dispatcher
from orchestrator.db.store import Store
from orchestrator.logs import get_logger
from orchestrator.maintenance import BATCH_LIMIT

log = get_logger(__name__)

# One run takes at most this many batches; past them the clock comes back at once.
MAX_BATCHES = 20
# Jobs are sent at most this long before they are due (never more than half the window).
MAX_LEAD_S = 1.0
# The clock looks for newly scheduled jobs at most this often, however small the window.
MIN_LOOK_AGAIN_S = 0.1


def lead_s(delay_window_s: float) -> float:
    """How long before its due time a scheduled job is sent (with a broker delay of the
    rest): half the window, at most ``MAX_LEAD_S``; 0 with a window of 0 (sent when due)."""
    return min(delay_window_s / 2, MAX_LEAD_S)


def look_again_s(delay_window_s: float) -> float:
    """How often, at least, the clock looks for newly scheduled jobs: the window less the lead
    (one probe of ``jobs_scheduled_idx`` each time).

    A job a worker schedules in PostgreSQL is due more than the window after it was
    scheduled, so it is to be sent more than window - lead after: looking that often, the
    clock always sees it in time, with no signal from the worker. Not more often than every
    ``MIN_LOOK_AGAIN_S`` (with a window under it, such a job may go out up to that late)."""
    return max(delay_window_s - lead_s(delay_window_s), MIN_LOOK_AGAIN_S)


@dataclass(slots=True)
class DispatchDue:
    """The clock task ``due_dispatched``: jobs scheduled in PostgreSQL sent as they come due
    (``lead`` seconds ahead, with a broker delay of the rest)."""

    store: Store
    dispatcher: Dispatcher
    lead: float = 0.0
    name: str = "due_dispatched"
    limit: int = BATCH_LIMIT
    max_batches: int = MAX_BATCHES
    # The last run left due jobs behind (every batch full).
    backlog: bool = False

    def run_once(self) -> int:
        sent = 0
        self.backlog = False
        for _ in range(self.max_batches):
            batch = self.store.dispatch_due(self.limit, self.lead)
            for i, (job_id, delay_s) in enumerate(batch):
                try:
                    # send, not schedule: these are marked dispatched, and lead <= window.
                    self.dispatcher.send(job_id, delay_s)
                except Exception as exc:
                    # Marked dispatched already: the grace sweep sends these once the broker
                    # is back (a broker that refused one send would refuse the rest too).
                    log.warning(
                        "clock.due_dispatch_failed",
                        unsent=len(batch) - i,
                        error=type(exc).__name__,
                    )
                    return sent
                sent += 1
            if len(batch) < self.limit:
                break
        else:
            self.backlog = True
        if sent:
            log.debug("clock.due_dispatched", count=sent)
        return sent

    def preview(self) -> int:
        return self.store.count_scheduled_due()

    def next_due_in_s(self) -> float | None:
        """Seconds until the next scheduled job is to be sent (0 or less when some are to be
        sent now: left behind by a full run, or come due while it was sending); None when no
        job is scheduled."""
        if self.backlog:
            return 0.0
        due_in_s = self.store.next_scheduled_due()
        return None if due_in_s is None else due_in_s - self.lead


def wait_s(
    until_pass_s: float, due_in_s: float | None, look_again: float, min_wait_s: float
) -> float:
    """How long the clock sleeps: until its next full pass, until the next scheduled job is to
    be sent, or until it looks for newly scheduled ones (:func:`look_again_s`), whichever
    comes first; but at least ``min_wait_s`` (jobs due within it go out together)."""
    wait = min(until_pass_s, look_again)
    if due_in_s is not None:
        wait = min(wait, due_in_s)
    return max(wait, min_wait_s)
