"""The dramatiq broker, and sending a job's message by actor name.

Messages carry only a job id: PostgreSQL holds everything else, so a lost, duplicated or
stale message is harmless (the claim decides who works). The library sends by actor name so
it never imports the ``actors`` package.
"""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from orchestrator.config import Settings

EXECUTE_ACTOR = "execute_job"
# A worker that stops heartbeating for this long has its unacked messages requeued by
# maintenance. Postgres leases are the real guard; this only makes redelivery prompt.
HEARTBEAT_TIMEOUT_MS = 15_000
# Maintenance (requeueing dead workers' messages) runs on 1 in N broker calls; dramatiq's
# default of 1000 leaves a killed worker's messages stranded for minutes on a quiet queue.
MAINTENANCE_CHANCE = 100


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
    """Hands job ids to the broker; the worker's ``execute_job`` actor picks them up."""

    def __init__(self, broker: dramatiq.Broker, queue_name: str) -> None:
        self.broker = broker
        self.queue_name = queue_name

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
