"""What the ``/ops`` JSON API (:mod:`orchestrator.ops.http`) and the dashboard
(:mod:`orchestrator.ops.dashboard_routes`) both serve from: the operations, the ops token's
checks, the shared breaker and the broker's dead letters, plus the limits both apply."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from orchestrator.breaker import SharedBreaker
from orchestrator.ops.auth import OpsAuth
from orchestrator.ops.service import Operations
from orchestrator.providers.registry import provider_names

# The dashboard's chart covers the last hour, one point per minute.
CHART_WINDOW_S = 3600
MAX_BODY_BYTES = 64 * 1024

Handler = Callable[[Request], Awaitable[Response]]
# The broker's dead letters, newest first, at most the given number (JSON-ready).
DeadLetters = Callable[[int], list[dict[str, Any]]]


class Surface:
    """What the JSON API and the dashboard both serve from."""

    def __init__(
        self, ops: Operations, auth: OpsAuth, breaker: SharedBreaker, dead_letters: DeadLetters
    ) -> None:
        self.ops = ops
        self.auth = auth
        self._breaker = breaker
        self._dead_letters = dead_letters


def breaker_states(breaker: SharedBreaker) -> list[dict[str, Any]]:
    """Each provider's breaker, as the shared breaker (Redis) sees it."""
    return [breaker.status(provider).to_dict() for provider in provider_names()]
