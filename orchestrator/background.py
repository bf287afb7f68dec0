"""Work handed to one background thread, handled in batches and in order.

Used where a caller should not wait for a round trip whose result it does not need: the
breaker's record of a successful call, the message of a job already committed.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from orchestrator.logs import get_logger

log = get_logger(__name__)
T = TypeVar("T")


class Batcher(Generic[T]):
    """``put`` hands an item over and returns; a daemon thread (started on first use, and
    again in a forked child) passes everything waiting to ``handle`` in one call, after
    ``gather_s`` to let a batch gather. ``handle_now`` handles what is waiting plus its own
    items in the caller's thread, so items reach ``handle`` in the order they were given.
    After ``close`` a ``put`` is handled at once in the caller's thread. ``handle`` should
    deal with its own errors; anything it raises is logged and the thread goes on.
    """

    def __init__(
        self, handle: Callable[[Sequence[T]], None], *, name: str, gather_s: float = 0.0
    ) -> None:
        self._handle = handle
        self.name = name
        self._gather_s = gather_s
        self._guard = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._items: deque[T] = deque()
        self._changed = threading.Condition()
        self._handling = threading.Lock()  # one batch at a time: order is kept
        self._busy = 0  # batches the thread has taken on and not finished
        self._closed = False
        self._thread: threading.Thread | None = None

    def _in_this_process(self) -> None:
        if self._pid != os.getpid():  # a forked child: the parent's thread is not here
            with self._guard:
                if self._pid != os.getpid():
                    self._reset()

    def put(self, item: T) -> None:
        self.put_many((item,))

    def put_many(self, items: Sequence[T]) -> None:
        """``put`` each of ``items``, under one lock and one wake-up of the thread."""
        self._in_this_process()
        with self._changed:
            closed = self._closed
            if not closed:
                self._items.extend(items)
                self._changed.notify_all()
        if closed:
            self.handle_now(items)
            return
        if self._thread is None:
            with self._guard:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                    self._thread.start()

    def handle_now(self, items: Sequence[T]) -> None:
        """Handle what is waiting, then ``items``, before returning."""
        self._in_this_process()
        with self._handling:
            with self._changed:
                batch = [*self._items, *items]
                self._items.clear()
            if batch:
                self._handle(batch)

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until everything put so far was handled; False if ``timeout_s`` passed first."""
        with self._changed:
            return self._changed.wait_for(
                lambda: not self._items and not self._busy, timeout=timeout_s
            )

    def close(self, timeout_s: float) -> None:
        """Wait (up to ``timeout_s``) for what is waiting, then stop the thread."""
        self.wait_idle(timeout_s)
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: bool(self._items) or self._closed)
                if not self._items:
                    return  # closed, nothing left
                self._busy += 1
            try:
                if self._gather_s:
                    time.sleep(self._gather_s)
                self.handle_now([])
            except Exception as exc:  # never let the thread die: log and go on
                log.error("background.batch_failed", name=self.name, error=type(exc).__name__)
            finally:
                with self._changed:
                    self._busy -= 1
                    self._changed.notify_all()
