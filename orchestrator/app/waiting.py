"""``Orchestrator.wait``: block until a job settles, woken by PostgreSQL's ``NOTIFY``.

The transition trigger (schema.sql) runs ``pg_notify('orchestrator_settled', job_id)`` in a
settling transaction when someone waits for that job: a waiter registers in ``job_waiters``
(``Store.add_waiter``), and the trigger deletes the job's rows and notifies. A settle nobody
waits for sends nothing (PostgreSQL serializes the commits of notifying transactions). One
background thread per :class:`SettleListener` holds one connection listening on that channel
and wakes the waiters of the job named; any number of threads may wait at once. A waiter
makes sure the listener is listening and only then registers, reading the job's state in
the same statement (under FOR SHARE, so a settle is either read there or sees the
registration), so no settle is missed. It re-reads the state every :data:`RECHECK_S` as
well: a lost listener connection delays a wait by at most that much.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Protocol

import psycopg

from orchestrator.db.pool import connect, listen
from orchestrator.logs import get_logger
from orchestrator.models import JobState

log = get_logger(__name__)

SETTLED_CHANNEL = "orchestrator_settled"
# The safety re-read of a waiter (s): the most a lost notification can delay it.
RECHECK_S = 1.0
# The listener's own poll (s): how soon it notices close() or reconnects after a failure.
LISTEN_POLL_S = 0.5
# How long a waiter waits for the listener to be listening before relying on re-reads (s).
READY_TIMEOUT_S = 2.0


class WaiterRegistry(Protocol):
    """Where a waiter says it waits (``orchestrator.db.store.Store``)."""

    def add_waiter(self, job_id: str, waiter: str) -> str | None: ...

    def remove_waiter(self, job_id: str, waiter: str) -> None: ...


class SettleListener:
    """Wakes waiters when their job settles; started by the first ``wait``, stopped by
    ``close``."""

    def __init__(self, database_url: str, registry: WaiterRegistry) -> None:
        self._url = database_url
        self._registry = registry
        self._lock = threading.Lock()
        self._waiters: dict[str, set[threading.Event]] = {}
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def wait(self, job_id: str, timeout_s: float, is_settled: Callable[[str], bool]) -> bool:
        """True once the job has settled (or is gone), as read when registering and by
        ``is_settled(job_id)`` after each wake-up; False when ``timeout_s`` passes first."""
        deadline = time.monotonic() + timeout_s
        event = threading.Event()
        waiter = str(uuid.uuid4())
        registered = False
        with self._lock:
            self._waiters.setdefault(job_id, set()).add(event)
            self._start_locked()
        try:
            self._ready.wait(min(READY_TIMEOUT_S, timeout_s))
            state = self._registry.add_waiter(job_id, waiter)
            registered = state is not None
            settled = state is None or JobState(state).is_terminal
            while not settled:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                event.wait(min(remaining, RECHECK_S))
                event.clear()
                settled = is_settled(job_id)
            return True
        finally:
            with self._lock:
                events = self._waiters.get(job_id)
                if events is not None:
                    events.discard(event)
                    if not events:
                        del self._waiters[job_id]
            if registered:
                self._unregister(job_id, waiter)

    def _unregister(self, job_id: str, waiter: str) -> None:
        """Best effort: a row left behind only costs one NOTIFY when the job settles (the
        trigger deletes it then)."""
        try:
            self._registry.remove_waiter(job_id, waiter)
        except psycopg.Error as exc:
            log.warning("wait.unregister_failed", job_id=job_id, error=type(exc).__name__)

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
