"""Readiness of the ``web`` process (``GET /readyz``): PostgreSQL and Redis each answer in time.

Each check runs in a thread of its own small pool, never on the event loop, and is bounded by
a timeout. A check still running from an earlier probe (a silent server holds it) is awaited
again rather than started twice, so probes cannot pile threads up. Answers name the
exception class only: ``/readyz`` is unauthenticated.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

# How long each dependency has to answer (s).
READY_TIMEOUT_S = 1.0
OK = "ok"


class Probe:
    """One dependency check: ``OK``, ``timeout after ...`` or ``failed: <ExceptionClass>``."""

    def __init__(
        self, check: Callable[[], object], executor: ThreadPoolExecutor, timeout_s: float
    ) -> None:
        self.check = check
        self.executor = executor
        self.timeout_s = timeout_s
        self._pending: tuple[asyncio.AbstractEventLoop, asyncio.Future[object]] | None = None

    async def __call__(self) -> str:
        loop = asyncio.get_running_loop()
        if self._pending is None or self._pending[0] is not loop or self._pending[1].done():
            self._pending = (loop, loop.run_in_executor(self.executor, self.check))
        try:
            await asyncio.wait_for(asyncio.shield(self._pending[1]), self.timeout_s)
        except TimeoutError:
            return f"timeout after {self.timeout_s:g} s"
        except Exception as exc:
            return f"failed: {type(exc).__name__}"
        return OK


class Readiness:
    """Named checks run together; ``await readiness()`` gives (all ok, {name: answer})."""

    def __init__(
        self, checks: Mapping[str, Callable[[], object]], timeout_s: float = READY_TIMEOUT_S
    ) -> None:
        self._executor = ThreadPoolExecutor(max_workers=len(checks), thread_name_prefix="readyz")
        self._probes = {name: Probe(c, self._executor, timeout_s) for name, c in checks.items()}

    async def __call__(self) -> tuple[bool, dict[str, str]]:
        answers = await asyncio.gather(*(probe() for probe in self._probes.values()))
        results = dict(zip(self._probes, answers, strict=True))
        return all(a == OK for a in answers), results

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
