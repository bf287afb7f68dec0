"""The dramatiq broker, and sending a job's message by actor name.

Messages carry only a job id: PostgreSQL holds everything else, so a lost, duplicated or
stale message is harmless (the claim decides who works). The library sends by actor name so
it never imports the ``actors`` package.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from orchestrator.config import Settings
from orchestrator.logs import get_logger

log = get_logger(__name__)

EXECUTE_ACTOR = "execute_job"
# A worker that stops heartbeating for this long has its unacked messages requeued by
# maintenance. Postgres leases are the real guard; this only makes redelivery prompt.
HEARTBEAT_TIMEOUT_MS = 15_000
# Maintenance (requeueing dead workers' messages) runs on 1 in N broker calls; dramatiq's
# default of 1000 leaves a killed worker's messages stranded for minutes on a quiet queue.
MAINTENANCE_CHANCE = 100
# How long closing an Orchestrator waits for messages still being sent (s).
FLUSH_TIMEOUT_S = 5.0


def make_broker(settings: Settings, **overrides: Any) -> RedisBroker:
    options: dict[str, Any] = {
        "url": settings.redis_url,
        "namespace": settings.redis_namespace,
        "heartbeat_timeout": HEARTBEAT_TIMEOUT_MS,
        "maintenance_chance": MAINTENANCE_CHANCE,
        **overrides,
    }
    return RedisBroker(**options)  # type: ignore[no-untyped-call]


class Dispatcher:
    """Hands job ids to the broker; the worker's ``execute_job`` actor picks them up.

    ``send`` sends before it returns. ``send_soon`` hands the id to a background thread and
    returns at once: for a job just committed, whose row already guarantees it will run (a
    message that never goes out, because Redis is down or the process dies first, is sent by
    the clock's sweep once the dispatch grace has passed). ``flush`` waits for what was handed
    over; ``close`` flushes and stops the thread.
    """

    def __init__(self, broker: dramatiq.Broker, queue_name: str) -> None:
        self.broker = broker
        self.queue_name = queue_name
        self._lock = threading.Lock()
        self._start_background()

    def _start_background(self) -> None:
        self._pid = os.getpid()
        self._pending: deque[str] = deque()
        self._changed = threading.Condition()
        self._in_flight = 0
        self._closed = False
        self._thread: threading.Thread | None = None

    def send_soon(self, job_id: str) -> None:
        """Send ``job_id``'s message from the background thread, as soon as it can."""
        if self._pid != os.getpid():  # a forked child: the parent's thread is not here
            with self._lock:
                if self._pid != os.getpid():
                    self._start_background()
        with self._changed:
            closed = self._closed
            if not closed:
                self._pending.append(job_id)
                self._changed.notify_all()
        if closed:  # no thread to hand it to any more: send it here
            self._send_or_defer(job_id)
            return
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._send_forever, name="orchestrator-dispatch", daemon=True
                    )
                    self._thread.start()

    def flush(self, timeout_s: float = FLUSH_TIMEOUT_S) -> bool:
        """Wait until every id handed to ``send_soon`` was sent (or given up on); False if
        ``timeout_s`` passed first."""
        with self._changed:
            return self._changed.wait_for(
                lambda: not self._pending and not self._in_flight, timeout=timeout_s
            )

    def close(self, timeout_s: float = FLUSH_TIMEOUT_S) -> None:
        """Flush, then stop the background thread."""
        self.flush(timeout_s)
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def _send_forever(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: bool(self._pending) or self._closed)
                if not self._pending:
                    return  # closed, nothing left
                job_id = self._pending.popleft()
                self._in_flight += 1
            try:
                self._send_or_defer(job_id)
            finally:
                with self._changed:
                    self._in_flight -= 1
                    self._changed.notify_all()

    def _send_or_defer(self, job_id: str) -> None:
        try:
            self.send(job_id)
        except Exception as exc:  # the committed job is safe: the clock's sweep sends it
            log.warning("job.dispatch_deferred", job_id=job_id, error=type(exc).__name__)

    def send(self, job_id: str, delay_s: float = 0.0) -> None:
        message: dramatiq.Message[Any] = dramatiq.Message(
            queue_name=self.queue_name,
            actor_name=EXECUTE_ACTOR,
            args=(job_id,),
            kwargs={},
            options={},
        )
        delay_ms = int(delay_s * 1000)
        self.broker.enqueue(message, delay=delay_ms if delay_ms > 0 else None)
