"""The message broker under dramatiq: Redis or RabbitMQ, picked from ORCHESTRATOR_BROKER_URL.

This package is the one place that knows a broker's internals: how dramatiq's broker is built
for it (:func:`build_broker`), and the few operations the rest of the orchestrator needs beyond
sending messages, behind one interface (:class:`BrokerOps`, from :func:`broker_ops`):

* ``counts(queue)``: messages waiting in a queue, in its delay queue, and dead-lettered
  (``orchestrator_queue_depth``, ``orchestrator_broker_dead_letters``);
* ``drain_dead_letters(queue, limit, handle)``: hand each of dramatiq's dead letters of a queue
  to ``handle`` (which copies it to PostgreSQL), removing it from the broker only after
  ``handle`` returned: a crash in between leaves it there to be copied again, never lost.

Messages carry only a job id and PostgreSQL is the truth, so nothing here is authoritative:
a broker emptied or restarted loses nothing the clock's sweeps do not resend.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from orchestrator.brokers.base import (
    BrokerKind,
    BrokerOps,
    BrokerUnavailable,
    DeadLetter,
    QueueCounts,
)
from orchestrator.brokers.rabbitmq import RabbitmqOps, rabbitmq_broker
from orchestrator.brokers.redis_broker import RedisOps, enqueue_many, redis_broker
from orchestrator.config import Settings
from orchestrator.errors import ConfigError

_KINDS: dict[str, BrokerKind] = {
    "redis": "redis",
    "rediss": "redis",
    "unix": "redis",
    "amqp": "rabbitmq",
    "amqps": "rabbitmq",
}


def broker_kind(settings: Settings) -> BrokerKind:
    """``redis`` or ``rabbitmq``, from ORCHESTRATOR_BROKER_URL (or REDIS_URL)."""
    return kind_of_url(settings.dramatiq_broker_url)


def kind_of_url(url: str) -> BrokerKind:
    scheme = url.partition("://")[0].strip().lower()
    kind = _KINDS.get(scheme)
    if kind is None:
        raise ConfigError(
            "ORCHESTRATOR_BROKER_URL is invalid: must be a redis://, rediss://, amqp:// or amqps://"
            " URL"
        )
    return kind


def build_broker(settings: Settings, **overrides: Any) -> dramatiq.Broker:
    """dramatiq's broker for ``settings``: a RedisBroker, or a RabbitmqBroker with publisher
    confirms. ``overrides`` go to the broker class (e.g. ``middleware=[...]``)."""
    if broker_kind(settings) == "rabbitmq":
        return rabbitmq_broker(settings, **overrides)
    return redis_broker(settings, **overrides)


def send_many(broker: dramatiq.Broker, messages: Sequence[dramatiq.Message[Any]]) -> None:
    """Enqueue each message now: Redis in one pipelined round trip, any other broker one by
    one. Raises the first failure (messages before it may have gone out)."""
    if isinstance(broker, RedisBroker):
        enqueue_many(broker, messages)
        return
    for message in messages:
        broker.enqueue(message)


def broker_ops(settings: Settings, timeout_s: float | None = None) -> BrokerOps:
    """The broker's operations for ``settings``; network calls give up after ``timeout_s``
    (default ORCHESTRATOR_REDIS_TIMEOUT_S). Close it when done."""
    timeout = settings.redis_timeout_s if timeout_s is None else timeout_s
    if broker_kind(settings) == "rabbitmq":
        return RabbitmqOps(settings, timeout)
    return RedisOps(settings, timeout)


__all__ = [
    "BrokerKind",
    "BrokerOps",
    "BrokerUnavailable",
    "DeadLetter",
    "QueueCounts",
    "broker_kind",
    "broker_ops",
    "build_broker",
    "kind_of_url",
]
