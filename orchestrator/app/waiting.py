"""``Orchestrator.wait``: block until a job settles, woken by PostgreSQL's ``NOTIFY``.

The transition trigger (schema.sql) runs ``pg_notify('orchestrator_settled', job_id)`` in every
settling transaction, so the notification arrives when the settle commits. One background
thread per :class:`SettleListener` holds one connection listening on that channel and wakes
the waiters of the job named; any number of threads may wait at once. A waiter registers,
makes sure the listener is listening, and only then reads the job's state, so a settle that
commits in between is either read or heard. It re-reads the state every
:data:`RECHECK_S` as well: a lost listener connection delays a wait by at most that much.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import psycopg

from orchestrator.db.pool import connect, listen
from orchestrator.logs import get_logger

log = get_logger(__name__)

SETTLED_CHANNEL = "orchestrator_settled"
# The safety re-read of a waiter (s): the most a lost notification can delay it.
RECHECK_S = 1.0
# The listener's own poll (s): how soon it notices close() or reconnects after a failure.
LISTEN_POLL_S = 0.5
# How long a waiter waits for the listener to be listening before relying on re-reads (s).
READY_TIMEOUT_S = 2.0


class SettleListener:
    """Wakes waiters when their job settles; started by the first ``wait``, stopped by
    ``close``."""

    def __init__(self, database_url: str) -> None:
        self._url = database_url
        self._lock = threading.Lock()
        self._waiters: dict[str, set[threading.Event]] = {}
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def wait(self, job_id: str, timeout_s: float, is_settled: Callable[[str], bool]) -> bool:
        """True once ``is_settled(job_id)`` holds (read after each wake-up), False when
        ``timeout_s`` passes first."""
        deadline = time.monotonic() + timeout_s
        event = threading.Event()
        with self._lock:
            self._waiters.setdefault(job_id, set()).add(event)
            self._start_locked()
        try:
            self._ready.wait(min(READY_TIMEOUT_S, timeout_s))
            while True:
                event.clear()
                if is_settled(job_id):
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                event.wait(min(remaining, RECHECK_S))
        finally:
            with self._lock:
                events = self._waiters.get(job_id)
                if events is not None:
                    events.discard(event)
                    if not events:
                        del self._waiters[job_id]

    def close(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(LISTEN_POLL_S * 4)

    def _start_locked(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name="orchestrator-settle-listener", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with connect(self._url, autocommit=True) as conn:
                    listen(conn, SETTLED_CHANNEL)
                    self._ready.set()
                    while not self._stop.is_set():
                        for notify in conn.notifies(timeout=LISTEN_POLL_S):
                            self._wake(notify.payload)
            except psycopg.Error as exc:
                self._ready.clear()
                log.warning("wait.listener_failed", error=type(exc).__name__)
                self._stop.wait(RECHECK_S)
        self._ready.clear()

    def _wake(self, job_id: str) -> None:
        with self._lock:
            events = list(self._waiters.get(job_id, ()))
        for event in events:
            event.set()
