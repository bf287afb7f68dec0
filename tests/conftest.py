"""Shared fixtures.

Integration tests use a real PostgreSQL (a fresh database per test session, truncated per
test) and a real Redis (a namespace per session), and the provider simulator over real HTTP.
Point them elsewhere with TEST_DATABASE_URL (a server-level URL; the session creates its own
database there) and TEST_REDIS_URL. With neither set and nothing listening on 5432 / 6379 (or
with TEST_FORCE_EMBEDDED=1), embedded PostgreSQL and Redis are started for the session.

The broker is Redis unless TEST_BROKER_URL names a RabbitMQ (``amqp://guest:guest@127.0.0.1:
5672/%2F``): then every orchestrator of the session sends its messages there (Redis still holds
breaker state, rate limits and heartbeats). Each session gets a RabbitMQ virtual host of its
own, ``orchestrator-<session tag>``, created with ``rabbitmqctl add_vhost`` (permissions for the
URL's user) and deleted at the end, so parallel sessions never share a queue; the vhost of
TEST_BROKER_URL's path is replaced by it. tests/integration/test_rabbitmq_broker.py uses the
same kind of vhost on TEST_BROKER_URL's RabbitMQ, or the local one (``TEST_RABBITMQ_URL``,
default amqp://guest:guest@127.0.0.1:5672/%2F), whatever the session's broker.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import dramatiq.errors
import psycopg
import pytest
import redis
import stripe

from tests.embedded import service_urls

# Real local services when reachable, else embedded ones for the session (tests/embedded.py).
TEST_DATABASE_URL, TEST_REDIS_URL = service_urls()
STRIPE_TEST_KEY = "sk_test_orchestratorSuiteKey4242"
SENDGRID_TEST_KEY = "SG.orchestratorSuite.key"
SESSION_TAG = f"t{os.getpid()}_{uuid.uuid4().hex[:6]}"
# The session's broker: RabbitMQ when TEST_BROKER_URL is an amqp:// URL, else Redis.
TEST_BROKER_URL = os.environ.get("TEST_BROKER_URL", "").strip()
ON_RABBITMQ = TEST_BROKER_URL.startswith(("amqp://", "amqps://"))
RABBITMQ_SERVER_URL = (
    TEST_BROKER_URL
    if ON_RABBITMQ
    else os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
)
RABBITMQ_VHOST = f"orchestrator-{SESSION_TAG}"
# What a refused send raises, from either broker (dramatiq's ConnectionClosed on RabbitMQ).
BROKER_CONNECTION_ERRORS = (redis.ConnectionError, dramatiq.errors.BrokerConnectionError)


def _with_vhost(url: str, vhost: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + quote(vhost, safe="")))


# The session's own vhost on RabbitMQ (created by the rabbitmq_url fixture).
SESSION_RABBITMQ_URL = _with_vhost(RABBITMQ_SERVER_URL, RABBITMQ_VHOST)


def _with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh database with the schema applied, dropped at the end of the session."""
    from orchestrator.db import migrate

    name = f"orchestrator_{SESSION_TAG}"
    with psycopg.connect(TEST_DATABASE_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = _with_database(TEST_DATABASE_URL, name)
    migrate(url)
    yield url
    with psycopg.connect(TEST_DATABASE_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_namespace() -> Iterator[str]:
    namespace = f"orchestrator-{SESSION_TAG}"
    yield namespace
    _flush_namespace(namespace)


def _flush_namespace(namespace: str) -> None:
    client = redis.Redis.from_url(TEST_REDIS_URL)
    keys = list(client.scan_iter(match=f"{namespace}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def rabbitmq_url() -> Iterator[str]:
    """An amqp:// URL of this session's own RabbitMQ vhost (created here, deleted at the end);
    skips the test when RabbitMQ is not there (unless the session runs on it: then it fails)."""
    from orchestrator.dev.devstack import port_open

    parts = urlsplit(RABBITMQ_SERVER_URL)
    reachable = port_open(parts.hostname or "127.0.0.1", parts.port or 5672)
    if not (reachable and shutil.which("rabbitmqctl")):
        if ON_RABBITMQ:
            raise RuntimeError("TEST_BROKER_URL names a RabbitMQ that is not reachable")
        pytest.skip("RabbitMQ (and rabbitmqctl) not available on this machine")
    user = unquote(parts.username or "guest")
    _rabbitmqctl("add_vhost", RABBITMQ_VHOST)
    _rabbitmqctl("set_permissions", "-p", RABBITMQ_VHOST, user, ".*", ".*", ".*")
    yield SESSION_RABBITMQ_URL
    with contextlib.suppress(subprocess.SubprocessError, OSError):
        _rabbitmqctl("delete_vhost", RABBITMQ_VHOST)


@pytest.fixture(scope="session")
def simulator() -> Iterator[Any]:
    from orchestrator.dev.simulator import Simulator

    sim = Simulator(stripe_api_key=STRIPE_TEST_KEY, sendgrid_api_key=SENDGRID_TEST_KEY, seed=7)
    sim.start()
    yield sim
    sim.stop()


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """moto's AWS emulator in server mode (tests/aws.py), started on first use."""
    from tests.aws import moto_session

    yield from moto_session()


def test_settings(database_url: str, redis_namespace: str, simulator_url: str, **extra: Any) -> Any:
    from orchestrator.config import load_settings

    values: dict[str, Any] = {
        "database_url": database_url,
        "redis_url": TEST_REDIS_URL,
        "redis_namespace": redis_namespace,
        "stripe_api_key": STRIPE_TEST_KEY,
        "stripe_api_base": simulator_url,
        "sendgrid_api_key": SENDGRID_TEST_KEY,
        "sendgrid_api_base": simulator_url,
        "backoff_base_s": 0.05,
        "backoff_max_s": 0.4,
        "search_grace_s": 0.5,
        "dispatch_grace_s": 1.0,
        "processing_poll_s": 0.2,
        "provider_connect_timeout_s": 1.0,
        "provider_read_timeout_s": 2.0,
        "max_attempts": 10,
        # A fault-injecting test may trip the breaker: keep its cooldown short.
        "breaker_cooldown_s": 0.5,
        "breaker_cooldown_max_s": 2.0,
        # Fault injection answers 429 at random, not at a rate: keep fleet-wide pauses short.
        "rate_limit_pause_max_s": 0.2,
        # The clock's ledger audit only where a test asks for it (it lists Stripe's objects).
        "audit_interval_s": 0,
        "log_format": "json",
    }
    if ON_RABBITMQ:  # else the broker follows redis_url, as tests that change it expect
        values["broker_url"] = SESSION_RABBITMQ_URL
    values.update(extra)
    return load_settings(**values)


test_settings.__test__ = False  # type: ignore[attr-defined]


def settings_like(orch: Any, simulator_url: str, **extra: Any) -> Any:
    """:func:`test_settings` on ``orch``'s database and Redis namespace, changed by ``extra``."""
    return test_settings(
        orch.settings.database_url, orch.settings.redis_namespace, simulator_url, **extra
    )


def orchestrator_like(orch: Any, simulator_url: str, **extra: Any) -> Any:
    """An Orchestrator sharing ``orch``'s store and broker, its settings changed by ``extra``."""
    from orchestrator.api import Orchestrator

    settings = settings_like(orch, simulator_url, **extra)
    return Orchestrator(settings, store=orch.store, broker=orch.broker)


@pytest.fixture(scope="session")
def orch(
    database_url: str, redis_namespace: str, simulator: Any, request: pytest.FixtureRequest
) -> Iterator[Any]:
    """The session's Orchestrator, installed as the actors' runtime."""
    from orchestrator import runtime
    from orchestrator.api import Orchestrator
    from orchestrator.logs import configure_logging

    if ON_RABBITMQ:
        request.getfixturevalue("rabbitmq_url")  # the session's vhost exists before any send
    settings = test_settings(database_url, redis_namespace, simulator.url)
    configure_logging("json", "info")
    orchestrator = Orchestrator(settings)
    runtime.install(orchestrator)
    yield orchestrator
    orchestrator.close()


def truncate(orch: Any, *tables: str) -> None:
    """Empty ``tables`` of ``orch``'s database."""
    with psycopg.connect(orch.settings.database_url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {', '.join(tables)}")


@pytest.fixture(autouse=True)
def _clean_state(request: pytest.FixtureRequest) -> Iterator[None]:
    """Integration tests start from empty tables, an empty namespace and a reset simulator."""
    if "orch" in request.fixturenames:
        orchestrator = request.getfixturevalue("orch")
        sim = request.getfixturevalue("simulator")
        orchestrator.dispatcher.flush()  # no message of an earlier test lands in this one
        truncate(
            orchestrator,
            "job_transitions",
            "job_attempts",
            "job_settlements",
            "job_settled_totals",
            "jobs CASCADE",
        )
        _flush_namespace(orchestrator.settings.redis_namespace)
        if is_rabbitmq(orchestrator):
            purge_rabbitmq(orchestrator)
        sim.reset()
    yield


# -- the broker, whichever it is ---------------------------------------------------------


def is_rabbitmq(orch: Any) -> bool:
    """Whether ``orch`` sends its messages to RabbitMQ."""
    from orchestrator.brokers import broker_kind

    return broker_kind(orch.settings) == "rabbitmq"


def rabbitmq_queues(orch: Any) -> set[str]:
    """The dramatiq queues ``orch`` may have messages in (its own, and any declared on its
    broker, e.g. settlement hooks' queues), each with its ``.DQ`` and ``.XQ``."""
    from dramatiq.common import dq_name, xq_name

    names = {orch.settings.queue_name, *orch.broker.get_declared_queues()}
    return {n for q in names for n in (q, dq_name(q), xq_name(q))}


def _rabbitmq_connection(orch: Any) -> Any:
    import pika

    from orchestrator.brokers.rabbitmq import broker_urls

    return pika.BlockingConnection([pika.URLParameters(u) for u in broker_urls(orch.settings)])


def purge_rabbitmq(orch: Any, wait_for_consumers_s: float = 0.0) -> int:
    """Purge every queue of ``orch`` on RabbitMQ (their messages are gone as if the broker
    lost them); returns how many messages went. With ``wait_for_consumers_s``, first wait (up
    to that long) until no consumer is left on them: a killed worker's unacked messages are
    back in their queue only once RabbitMQ noticed its connection closed."""
    import pika.exceptions

    purged = 0
    conn = _rabbitmq_connection(orch)
    try:
        deadline = time.monotonic() + wait_for_consumers_s
        for name in sorted(rabbitmq_queues(orch)):
            while True:
                channel = conn.channel()
                try:
                    ok = channel.queue_declare(name, passive=True)
                except pika.exceptions.ChannelClosedByBroker:
                    break  # never declared: nothing in it
                if ok.method.consumer_count == 0 or time.monotonic() > deadline:
                    purged += channel.queue_purge(name).method.message_count
                    channel.close()
                    break
                channel.close()
                time.sleep(0.1)
    finally:
        conn.close()
    return purged


def empty_broker(orch: Any) -> int:
    """Lose every message of ``orch``'s queues, queued and delayed, as a broker restarted empty
    would (Redis: its namespace's keys deleted; RabbitMQ: its queues purged once the killed
    worker's messages are back in them). Returns how many keys or messages went."""
    if is_rabbitmq(orch):
        return purge_rabbitmq(orch, wait_for_consumers_s=10.0)
    client = redis.Redis.from_url(orch.settings.redis_url)
    try:
        keys = list(client.scan_iter(match=f"{orch.settings.redis_namespace}*"))
        return int(client.delete(*keys)) if keys else 0
    finally:
        client.close()


def queued_messages(orch: Any) -> int:
    """Messages waiting in ``orch``'s queue (not delayed, not taken by a worker)."""
    from orchestrator.brokers import broker_ops

    ops = broker_ops(orch.settings)
    try:
        return ops.counts(orch.settings.queue_name).queued
    finally:
        ops.close()


def refused_broker(orch: Any, simulator_url: str, **extra: Any) -> Any:
    """Settings like ``orch``'s whose broker refuses connections (nothing listens on port 1);
    a send raises one of :data:`BROKER_CONNECTION_ERRORS`."""
    if is_rabbitmq(orch):
        extra.setdefault("broker_url", "amqp://guest:guest@127.0.0.1:1/%2F")
    else:
        extra.setdefault("redis_url", "redis://127.0.0.1:1/0")
    return settings_like(orch, simulator_url, **extra)


@pytest.fixture
def worker(orch: Any) -> Iterator[Any]:
    """A real dramatiq worker (8 threads) consuming the session's queue on its broker."""
    import dramatiq

    import actors  # noqa: F401  (declares the actors on the installed broker)

    w = dramatiq.Worker(orch.broker, worker_threads=8, worker_timeout=50)
    w.start()
    yield w
    stop_worker(w)


def stop_worker(w: Any) -> None:
    """Stop a dramatiq worker and take its middleware off the (session-wide) broker: left
    there, a stopped worker would start a consumer for every queue declared later and
    swallow that queue's messages."""
    w.stop(timeout=10_000)
    w.broker.middleware[:] = [m for m in w.broker.middleware if getattr(m, "worker", None) is not w]


def wait_until(
    predicate: Callable[[], bool], timeout_s: float = 30.0, poll_s: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll_s)
    raise AssertionError(f"condition not met within {timeout_s}s")


def count_jobs(orch: Any, state: str | None = None) -> int:
    counts: dict[str, int] = orch.store.count_by_state()
    return sum(counts.values()) if state is None else counts.get(state, 0)


def cli_main(orch: Any, monkeypatch: pytest.MonkeyPatch, **extra_env: str) -> Any:
    """``orchestrator ...`` in-process (its ``main``), configured by environment like ``orch``
    (with ``extra_env`` added) and logging JSON warnings."""
    s = orch.settings
    env = {
        "DATABASE_URL": s.database_url,
        "REDIS_URL": s.redis_url,
        "ORCHESTRATOR_REDIS_NAMESPACE": s.redis_namespace,
        "STRIPE_API_KEY": s.stripe_api_key.get_secret_value(),
        "STRIPE_API_BASE": s.stripe_api_base,
        **({"ORCHESTRATOR_BROKER_URL": s.broker_url} if s.broker_url else {}),
        **extra_env,
        "ORCHESTRATOR_LOG_FORMAT": "json",
        "ORCHESTRATOR_LOG_LEVEL": "warning",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    from orchestrator.cli import main

    return main


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    """Serve an ASGI app under uvicorn on 127.0.0.1:0; yields its base URL."""
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def create_intent_elsewhere(
    simulator: Any,
    job: Any,
    *,
    amount: int | None = None,
    generation: int,
    pm: str = "pm_card_visa",
    stripe_account: str | None = None,
) -> Any:
    """A confirmed PaymentIntent naming ``job`` (its key ``generation``), made straight at the
    simulator through the SDK, as if by an attempt whose answer the ledger never saw."""
    client = stripe.StripeClient(STRIPE_TEST_KEY, base_addresses={"api": simulator.url})
    return client.v1.payment_intents.create(
        {
            "amount": amount or job.amount,
            "currency": job.currency,
            "customer": job.customer,
            "payment_method": pm,
            "confirm": True,
            "off_session": True,
            "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"},
            "metadata": {
                "orchestrator_job_id": job.id,
                "orchestrator_key_generation": str(generation),
            },
        },
        options={"stripe_account": stripe_account} if stripe_account else {},
    )


def seed_dead_job(orch: Any, key: str) -> str:
    """One dead charge whose key never reached the provider (a replay keeps it): its id."""
    with psycopg.connect(orch.settings.database_url, autocommit=True) as conn:
        row = conn.execute(
            """
            INSERT INTO jobs (kind, provider, state, idempotency_key, fingerprint, amount,
                              currency, payment_method, max_attempts, deadline_at, dead_reason,
                              last_error_code, changed_by, change_reason)
            VALUES ('charge', 'stripe', 'dead', %s, repeat('b', 64), 500, 'usd', 'pm_card_visa',
                    3, now() + interval '1 hour', 'attempts_exhausted', 'rate_limited', 'test',
                    'seeded dead')
            RETURNING id
            """,
            (key,),
        ).fetchone()
    assert row is not None
    return str(row[0])


@contextlib.contextmanager
def running_clock(orch: Any) -> Iterator[Any]:
    """``orch``'s clock running its own loop (advisory lock, passes, due dispatch) in a thread.

    PostgreSQL owns the schedule: a job put off past the broker's delay window (a long
    backoff, a breaker deferral) gets no message until the clock dispatches it when due, so a
    test whose jobs may be put off that long runs the clock, as production does."""
    from orchestrator.maintenance.clock import Clock

    clock = Clock(orch)
    stop = threading.Event()
    thread = threading.Thread(target=clock.run, args=(stop,), name="test-clock", daemon=True)
    thread.start()
    try:
        yield clock
    finally:
        stop.set()
        thread.join(timeout=orch.settings.clock_interval_s + 5)


@pytest.fixture
def clock(orch: Any) -> Iterator[Any]:
    """The session orchestrator's clock, running (see :func:`running_clock`)."""
    with running_clock(orch) as running:
        yield running
