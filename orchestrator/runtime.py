"""The one Orchestrator a worker process uses, built from the environment on first use.

Actors bind to a broker when they are declared, so ``actors`` asks this module for the
broker before declaring anything. Tests (and embedding applications) call :func:`install`
first to supply their own.
"""

from __future__ import annotations

import threading

import dramatiq

from orchestrator.api import Orchestrator
from orchestrator.logs import configure_logging

_lock = threading.Lock()
_current: Orchestrator | None = None


def install(orchestrator: Orchestrator) -> None:
    """Use ``orchestrator`` (and its broker) for this process's actors."""
    global _current
    with _lock:
        _current = orchestrator
        dramatiq.set_broker(orchestrator.broker)


def current() -> Orchestrator:
    global _current
    with _lock:
        if _current is None:
            orchestrator = Orchestrator.from_env()
            configure_logging(orchestrator.settings.log_format, orchestrator.settings.log_level)
            _current = orchestrator
            dramatiq.set_broker(orchestrator.broker)
        return _current
