"""One secret setting's value, kept current while the process runs.

The value is re-resolved when it is older than the refresh interval, checked on access: the
reader that finds it stale starts the refresh in a background thread and, like every reader
meanwhile, gets the last good value at once. No provider call ever waits on Secrets Manager
after start-up, and a failed refresh changes nothing but the log (a warning naming the
variable) and when the next try is made.

A rotation seen by a refresh keeps the value it replaced for an overlap window: a webhook
signed with the previous signing secret still verifies while the sender switches over
(:meth:`SecretSource.values`).
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from orchestrator.logs import get_logger
from orchestrator.secrets.references import Locator, ResolveError

log = get_logger(__name__)

# After a failed refresh, the next try comes this soon (or after the refresh interval, if
# shorter): an outage ends unseen otherwise for a whole interval.
RETRY_AFTER_FAILURE_S = 30.0

Clock = Callable[[], float]
# Runs a refresh; the default starts a daemon thread, tests pass `lambda run: run()`.
Spawn = Callable[[Callable[[], None]], None]
# A new value -> that value as validated (it may be normalized); ResolveError when it may not
# replace the current one.
Check = Callable[[str], str]


def spawn_thread(run: Callable[[], None]) -> None:
    threading.Thread(target=run, name="secrets-refresh", daemon=True).start()


def split_values(value: str) -> tuple[str, ...]:
    """``"whsec_a, whsec_b"`` -> ("whsec_a", "whsec_b"): a setting may list several values
    (Stripe signs with every endpoint secret that is live during a rotation)."""
    return tuple(part.strip() for part in value.split(",") if part.strip())


@dataclass(frozen=True)
class _State:
    """Replaced as a whole, so a reader never sees a current value paired with the wrong
    previous ones."""

    current: str
    # Values rotated out, each with the clock reading its overlap window ends at.
    previous: tuple[tuple[str, float], ...] = ()


class SecretSource:
    """The current value of one secret setting, and the ones it replaced lately."""

    def __init__(
        self,
        variable: str,
        locator: Locator,
        value: str,
        *,
        refresh_s: float,
        overlap_s: float,
        check: Check | None = None,
        clock: Clock = time.monotonic,
        spawn: Spawn = spawn_thread,
    ) -> None:
        self.variable = variable
        self._locator = locator
        self._refresh_s = refresh_s
        self._overlap_s = overlap_s
        self._check = check
        self._clock = clock
        self._spawn = spawn
        self._state = _State(value)
        self._next_check = clock() + refresh_s
        # Held for the whole of one refresh: readers never wait on it.
        self._refreshing = threading.Lock()
        _LIVE.add(self)

    def __repr__(self) -> str:
        return f"SecretSource({self.variable}, {self._locator.described})"

    @property
    def described(self) -> str:
        """Where the value comes from (a reference or a path; never the value)."""
        return self._locator.described

    @property
    def current(self) -> str:
        """The current value, without looking whether a refresh is due."""
        return self._state.current

    def value(self) -> str:
        """The current value: one clock reading and a comparison when it is fresh."""
        self._maybe_refresh()
        return self._state.current

    def values(self) -> tuple[str, ...]:
        """The current value(s), then those rotated out less than the overlap ago."""
        self._maybe_refresh()
        state, now = self._state, self._clock()
        found = list(split_values(state.current))
        for value, until in state.previous:
            if now < until:
                found.extend(split_values(value))
        return tuple(dict.fromkeys(found))

    def refresh(self) -> bool:
        """Re-resolve now, waiting for a refresh already running; True when the value
        changed. A failure is logged and keeps the current value."""
        with self._refreshing:
            return self._refresh_locked()

    def _maybe_refresh(self) -> None:
        if self._clock() < self._next_check or not self._refreshing.acquire(blocking=False):
            return
        try:
            self._spawn(self._refresh_then_release)
        except RuntimeError:  # no thread can start (interpreter exit): keep the value
            self._refreshing.release()

    def _refresh_then_release(self) -> None:
        try:
            self._refresh_locked()
        finally:
            self._refreshing.release()

    def _refresh_locked(self) -> bool:
        try:
            value = self._checked(self._locator.fetch())
        except ResolveError as exc:
            reason = str(exc)
        except Exception as exc:  # a bug here must not stop every later refresh
            reason = f"unexpected failure ({type(exc).__name__})"
        else:
            now = self._clock()
            self._next_check = now + self._refresh_s
            return self._adopt(value, now)
        retry_s = min(self._refresh_s, RETRY_AFTER_FAILURE_S)
        self._next_check = self._clock() + retry_s
        log.warning(
            "secrets.refresh_failed",
            variable=self.variable,
            source=self._locator.described,
            reason=reason,
            retry_in_s=retry_s,
        )
        return False

    def _checked(self, value: str) -> str:
        """A changed value passes the check start-up made (an unchanged one did already)."""
        if value == self._state.current or self._check is None:
            return value
        return self._check(value)

    def _adopt(self, value: str, now: float) -> bool:
        state = self._state
        if value == state.current:
            return False
        kept = tuple((v, until) for v, until in state.previous if now < until and v != value)
        rotated_out = ((state.current, now + self._overlap_s),) if self._overlap_s > 0 else ()
        self._state = _State(value, kept + rotated_out)
        log.info("secrets.rotated", variable=self.variable, overlap_s=self._overlap_s)
        return True


# Every source of this process. A child forked while a refresh ran (dramatiq forks its worker
# processes) would inherit that refresh's lock held by a thread it does not have, and never
# refresh again: the child gets fresh locks.
_LIVE: weakref.WeakSet[SecretSource] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for source in list(_LIVE):
        source._refreshing = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
