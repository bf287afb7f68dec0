"""The one Orchestrator a worker process uses, built from the environment on first use.

Actors bind to a broker when they are declared, so ``actors`` asks this module for the
broker before declaring anything. Tests (and embedding applications) call :func:`install`
first to supply their own. :func:`providers` gives the current Orchestrator's providers,
built once per Orchestrator (each holds an HTTP connection pool).

A broker built here carries the :class:`~orchestrator.ops.heartbeats.WorkerHeartbeat`
middleware: a worker process records its heartbeat in Redis from boot to shutdown.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

import dramatiq

from orchestrator.api import Orchestrator
from orchestrator.logs import configure_logging
from orchestrator.ops.heartbeats import WorkerHeartbeat
from orchestrator.providers.base import Provider

_lock = threading.Lock()
_current: Orchestrator | None = None
# The providers built for one Orchestrator (rebuilt when another is installed).
_providers: tuple[Orchestrator, Mapping[str, Provider]] | None = None


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
            # A worker process beats in Redis from boot on (`orchestrator status`).
            orchestrator.broker.add_middleware(WorkerHeartbeat(orchestrator.settings))
            _current = orchestrator
            dramatiq.set_broker(orchestrator.broker)
        return _current


def providers() -> Mapping[str, Provider]:
    """The current Orchestrator's providers, built on first use."""
    global _providers
    orchestrator = current()
    with _lock:
        if _providers is None or _providers[0] is not orchestrator:
            _providers = (orchestrator, orchestrator.providers())
        return _providers[1]
