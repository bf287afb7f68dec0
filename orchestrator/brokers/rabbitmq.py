"""dramatiq's RabbitmqBroker, and its queues and dead letters read through AMQP.

dramatiq declares three durable queues per queue name: ``<queue>`` (its dead-letter exchange
routes rejected messages to ``<queue>.XQ``), ``<queue>.DQ`` (delayed messages, held by a worker
until due, then re-published to ``<queue>``) and ``<queue>.XQ`` (dead letters, expiring after
7 days). Messages are published persistent, with publisher confirms on here
(``confirm_delivery=True``: ``enqueue`` returns only once RabbitMQ took the message, and a
queue deleted under us is noticed and declared again).

Connections get a heartbeat and short connect timeouts, so a broker that stops answering is
noticed (the heartbeat check closes the connection, the pending call raises) rather than
hanging the clock or web threads forever. pika's own URL options win over these defaults
(``amqp://host/vhost?heartbeat=30&socket_timeout=10``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pika
import pika.exceptions
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.common import dq_name, xq_name

from orchestrator.brokers.base import BrokerKind, BrokerUnavailable, DeadLetter, QueueCounts
from orchestrator.brokers.redis_broker import decode_message
from orchestrator.config import Settings

# Seconds of silence after which either side drops the connection (pika checks every
# heartbeat + 5 s): bounds how long a frozen broker can hold a publish waiting for its confirm.
HEARTBEAT_S = 10
# A queue that does not exist (yet) answers a passive declare or a get with 404.
NOT_FOUND = 404

T = TypeVar("T")

# pika logs every connect and close at INFO, and a connection the broker dropped (an idle
# publisher missing heartbeats, a RabbitMQ restart) as ERRORs with tracebacks, though dramatiq
# simply reconnects. A failure that matters reaches our callers as dramatiq's ConnectionClosed
# (or BrokerUnavailable here) and is logged there, once, in our own words.
logging.getLogger("pika").setLevel(logging.CRITICAL)


def broker_urls(settings: Settings, timeout_s: float | None = None) -> list[str]:
    """ORCHESTRATOR_BROKER_URL's URLs (several when separated by ``;``) with the default
    connection options added where the URL sets none."""
    timeout = settings.redis_timeout_s if timeout_s is None else timeout_s
    defaults = {
        "heartbeat": str(HEARTBEAT_S),
        "socket_timeout": f"{timeout:g}",
        "stack_timeout": f"{2 * timeout:g}",
        "blocked_connection_timeout": f"{timeout:g}",
        "connection_attempts": "1",
    }
    return [_with_defaults(u.strip(), defaults) for u in settings.dramatiq_broker_url.split(";")]


def _with_defaults(url: str, defaults: dict[str, str]) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    merged = {**defaults, **query}
    return urlunsplit(parts._replace(query=urlencode(merged)))


def rabbitmq_broker(settings: Settings, **overrides: Any) -> RabbitmqBroker:
    urls = broker_urls(settings)
    options: dict[str, Any] = {
        "url": urls[0] if len(urls) == 1 else urls,
        "confirm_delivery": True,
        **overrides,
    }
    return RabbitmqBroker(**options)


class RabbitmqOps:
    """:class:`~orchestrator.brokers.BrokerOps` over AMQP: one short-lived connection per call
    (the clock and scrapes call rarely; nothing to keep alive in between)."""

    kind: BrokerKind = "rabbitmq"

    def __init__(self, settings: Settings, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.parameters = [pika.URLParameters(u) for u in broker_urls(settings, timeout_s)]

    def counts(self, queue: str) -> QueueCounts:
        """Ready messages of ``queue``, ``.DQ`` and ``.XQ`` (0 for a queue not declared yet).
        Bounded by the timeout even when the broker accepted the connection and then froze."""

        def count_all() -> QueueCounts:
            with self._connection() as conn:
                names = (queue, dq_name(queue), xq_name(queue))
                queued, delayed, dead = (_message_count(conn, name) for name in names)
            return QueueCounts(queued, delayed, dead)

        return _within(2 * self.timeout_s, count_all)

    def drain_dead_letters(
        self, queue: str, limit: int, handle: Callable[[DeadLetter], None]
    ) -> int:
        """Get up to ``limit`` messages from ``<queue>.XQ`` one by one, each acked only after
        ``handle`` returned; when it raises (or the process dies) the connection closes and
        RabbitMQ puts every unacked message back in the XQ."""
        done = 0
        with self._connection() as conn:
            try:
                channel = conn.channel()
                while done < limit:
                    method, properties, body = channel.basic_get(xq_name(queue), auto_ack=False)
                    if method is None:
                        break
                    handle(dead_letter(body, properties))
                    channel.basic_ack(method.delivery_tag)
                    done += 1
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code != NOT_FOUND:  # no XQ yet: nothing ever died there
                    raise BrokerUnavailable(f"rabbitmq: {exc.reply_text}") from exc
            except pika.exceptions.AMQPError as exc:
                raise BrokerUnavailable(f"rabbitmq: {type(exc).__name__}") from exc
        return done

    def close(self) -> None:
        """Nothing held between calls."""

    @contextlib.contextmanager
    def _connection(self) -> Any:
        try:
            conn = pika.BlockingConnection(self.parameters)
        except pika.exceptions.AMQPError as exc:
            raise BrokerUnavailable(f"rabbitmq: {type(exc).__name__}") from exc
        try:
            yield conn
        except pika.exceptions.AMQPError as exc:
            raise BrokerUnavailable(f"rabbitmq: {type(exc).__name__}") from exc
        finally:
            with contextlib.suppress(Exception):
                if conn.is_open:
                    conn.close()


def _message_count(conn: pika.BlockingConnection, name: str) -> int:
    channel = conn.channel()  # a passive declare of a missing queue closes its channel
    try:
        ok = channel.queue_declare(name, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == NOT_FOUND:
            return 0
        raise
    with contextlib.suppress(pika.exceptions.AMQPError):
        channel.close()
    return int(ok.method.message_count)


def dead_letter(body: bytes, properties: Any) -> DeadLetter:
    """One message of an XQ: dramatiq's message id, and when RabbitMQ dead-lettered it (its
    ``x-death`` header; now when absent)."""
    message = decode_message(body)
    message_id = message.get("message_id") or hashlib.sha256(body).hexdigest()
    return DeadLetter(str(message_id), _death_time(properties), message)


def _death_time(properties: Any) -> datetime:
    headers = getattr(properties, "headers", None) or {}
    deaths = headers.get("x-death") or []
    when = deaths[0].get("time") if deaths and isinstance(deaths[0], dict) else None
    if isinstance(when, datetime):
        return when if when.tzinfo else when.replace(tzinfo=UTC)
    if isinstance(when, int | float):
        return datetime.fromtimestamp(when, UTC)
    return datetime.now(UTC)


def _within(timeout_s: float, call: Callable[[], T]) -> T:
    """``call()`` in a daemon thread, given up on after ``timeout_s`` (the thread is left to
    end when the heartbeat check closes its connection)."""
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(call())
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=run, name="rabbitmq-ops", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if error:
        raise error[0]
    if not result:
        raise BrokerUnavailable(f"rabbitmq: no answer within {timeout_s:g}s")
    return result[0]
