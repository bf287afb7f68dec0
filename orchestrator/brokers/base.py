"""What every broker implementation shares: the operations' interface and its values."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from orchestrator.errors import OrchestratorError

BrokerKind = Literal["redis", "rabbitmq"]


class BrokerUnavailable(OrchestratorError):
    """The broker did not answer (refused, timed out, connection lost): try again later."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One message dramatiq dead-lettered: its broker id, when it died, the decoded message."""

    message_id: str
    dead_lettered_at: datetime
    message: dict[str, Any]

    @property
    def job_id(self) -> str | None:
        args = self.message.get("args") or []
        if not args:
            return None
        try:
            return str(uuid.UUID(str(args[0])))
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class QueueCounts:
    """Messages of one dramatiq queue: ready to run, delayed (``<queue>.DQ``), dead (``.XQ``)."""

    queued: int
    delayed: int
    dead: int


class BrokerOps(Protocol):
    """What the orchestrator asks of a broker besides sending (see the module's docstring)."""

    kind: BrokerKind

    def counts(self, queue: str) -> QueueCounts: ...

    def drain_dead_letters(
        self, queue: str, limit: int, handle: Callable[[DeadLetter], None]
    ) -> int: ...

    def close(self) -> None: ...
