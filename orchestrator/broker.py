"""The dramatiq broker, and sending a job's message by actor name.

Messages carry only a job id: PostgreSQL holds everything else, so a lost, duplicated or
stale message is harmless (the claim decides who works). The library sends by actor name so
it never imports the ``actors`` package.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dramatiq

from orchestrator.background import Batcher
from orchestrator.brokers import build_broker
from orchestrator.brokers import send_many as send_messages
from orchestrator.brokers.redis_broker import (  # re-exported: benchmarks and tools use them
    HEARTBEAT_TIMEOUT_MS as HEARTBEAT_TIMEOUT_MS,
)
from orchestrator.brokers.redis_broker import MAINTENANCE_CHANCE as MAINTENANCE_CHANCE
from orchestrator.brokers.redis_broker import redis_for as redis_for
from orchestrator.config import Settings
from orchestrator.logs import get_logger

log = get_logger(__name__)

EXECUTE_ACTOR = "execute_job"
# The worker's actor that processes one stored provider webhook event (actors/webhooks.py).
PROCESS_ACTOR = "process_webhook_event"
# How long closing an Orchestrator waits for messages still being sent (s).
FLUSH_TIMEOUT_S = 5.0
# send_soon lets messages gather this long (s) before sending them together: one wake-up of
# the sending thread per batch instead of one per job (measured: 0.36 -> 0.22 ms of CPU per
# charge() at 1.7k charges/s from one thread). A job starts at most this much later.
DISPATCH_GATHER_S = 0.005
# At most this many messages per pipelined send of the background thread (charge_many hands
# it 10,000 at once).
SEND_BATCH = 500


def make_broker(settings: Settings, **overrides: Any) -> dramatiq.Broker:
    """dramatiq's broker named by ORCHESTRATOR_BROKER_URL (default REDIS_URL): a RedisBroker
    for redis:// URLs, a RabbitmqBroker with publisher confirms for amqp:// ones (built in
    :mod:`orchestrator.brokers`, the one place that knows either). ``overrides`` go to the
    broker class."""
    return build_broker(settings, **overrides)


class Dispatcher:
    """Hands job ids to the broker; the worker's ``execute_job`` actor picks them up.

    ``send`` sends before it returns. ``send_soon`` hands the id to a background thread and
    returns at once: for a job just committed, whose row already guarantees it will run (a
    message that never goes out, because Redis is down or the process dies first, is sent by
    the clock's sweep once the dispatch grace has passed). ``flush`` waits for what was handed
    over; ``close`` flushes and stops the thread.

    ``schedule`` is for a job due again later. PostgreSQL owns the schedule (the job's
    ``next_attempt_at``): the broker carries only what is due within ``delay_window_s``
    (``ORCHESTRATOR_BROKER_DELAY_WINDOW_S``) as a short delayed message; a later job gets no
    message at all, and the clock dispatches it when it comes due. So no broker ever holds a
    long-delayed message (RabbitMQ redelivers unacked ones after its consumer timeout, a
    flushed Redis loses them).
    """

    # ORCHESTRATOR_BROKER_DELAY_WINDOW_S's default (orchestrator.config).
    DEFAULT_DELAY_WINDOW_S = 2.0

    def __init__(
        self,
        broker: dramatiq.Broker,
        queue_name: str,
        *,
        delay_window_s: float = DEFAULT_DELAY_WINDOW_S,
    ) -> None:
        self.broker = broker
        self.queue_name = queue_name
        self.delay_window_s = delay_window_s
        self._soon = Batcher(
            self._send_each, name="orchestrator-dispatch", gather_s=DISPATCH_GATHER_S
        )

    def send_soon(self, job_id: str) -> None:
        """Send ``job_id``'s message from the background thread, as soon as it can."""
        self._soon.put(job_id)

    def send_soon_many(self, job_ids: Sequence[str]) -> None:
        """``send_soon`` for each of ``job_ids``, handed over at once."""
        self._soon.put_many(job_ids)

    def flush(self, timeout_s: float = FLUSH_TIMEOUT_S) -> bool:
        """Wait until every id handed to ``send_soon`` was sent (or given up on); False if
        ``timeout_s`` passed first."""
        return self._soon.wait_idle(timeout_s)

    def close(self, timeout_s: float = FLUSH_TIMEOUT_S) -> None:
        """Flush, then stop the background thread (a later ``send_soon`` sends at once)."""
        self._soon.close(timeout_s)

    def _send_each(self, job_ids: Sequence[str]) -> None:
        """The background thread's batch: sent together (one pipelined round trip on Redis),
        in pieces of :data:`SEND_BATCH` messages."""
        for start in range(0, len(job_ids), SEND_BATCH):
            piece = job_ids[start : start + SEND_BATCH]
            try:
                self.send_many(piece)
            except Exception as exc:  # the committed jobs are safe: the clock's sweep sends them
                log.warning(
                    "job.dispatch_deferred",
                    job_id=piece[0],
                    jobs=len(piece),
                    error=type(exc).__name__,
                )

    def send_many(self, job_ids: Sequence[str]) -> None:
        """Send ``execute_job`` for each of ``job_ids`` now, together: one pipelined round trip
        on Redis, one message after another on other brokers."""
        send_messages(self.broker, [self._message(EXECUTE_ACTOR, (j,)) for j in job_ids])

    def send(self, job_id: str, delay_s: float = 0.0) -> None:
        """Send ``execute_job(job_id)`` now (a job due again later goes through ``schedule``)."""
        self.send_to(EXECUTE_ACTOR, job_id, delay_s=delay_s)

    def carries(self, delay_s: float) -> bool:
        """Whether ``schedule(job_id, delay_s)`` sends a message: only for a job due within the
        window (now included). The caller records the answer in the job's row in the same
        statement that sets its ``next_attempt_at`` (``broker_carries``: the row's
        ``dispatched_at`` then says a message is on its way, and the clock leaves it alone)."""
        return delay_s <= 0 or delay_s <= self.delay_window_s

    def schedule(self, job_id: str, delay_s: float) -> bool:
        """Have ``execute_job(job_id)`` run after ``delay_s``: a short broker delay within the
        window, else nothing (the clock dispatches the job from PostgreSQL when it is due).
        Returns whether a message was sent."""
        if not self.carries(delay_s):
            return False
        self.send_to(EXECUTE_ACTOR, job_id, delay_s=max(delay_s, 0.0))
        return True

    def send_to(
        self,
        actor_name: str,
        *args: str | int,
        delay_s: float = 0.0,
        queue_name: str | None = None,
    ) -> None:
        """Send a message to the actor ``actor_name`` (by name: the actors package need not be
        imported here), carrying ids only; on the orchestrator's queue unless ``queue_name``."""
        delay_ms = int(delay_s * 1000)
        self.broker.enqueue(
            self._message(actor_name, args, queue_name), delay=delay_ms if delay_ms > 0 else None
        )

    def _message(
        self, actor_name: str, args: tuple[str | int, ...], queue_name: str | None = None
    ) -> dramatiq.Message[Any]:
        return dramatiq.Message(
            queue_name=queue_name or self.queue_name,
            actor_name=actor_name,
            args=args,
            kwargs={},
            options={},
        )
