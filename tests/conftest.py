"""Shared fixtures.

Integration tests use a real PostgreSQL (a fresh database per test session, truncated per
test) and a real Redis (a namespace per session), and the provider simulator over real HTTP.
Point them elsewhere with TEST_DATABASE_URL (a server-level URL; the session creates its own
database there) and TEST_REDIS_URL. With neither set and nothing listening on 5432 / 6379 (or
with TEST_FORCE_EMBEDDED=1), embedded PostgreSQL and Redis are started for the session.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

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


@pytest.fixture(scope="session")
def simulator() -> Iterator[Any]:
    from orchestrator.dev.simulator import Simulator

    sim = Simulator(stripe_api_key=STRIPE_TEST_KEY, sendgrid_api_key=SENDGRID_TEST_KEY, seed=7)
    sim.start()
    yield sim
    sim.stop()


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
def orch(database_url: str, redis_namespace: str, simulator: Any) -> Iterator[Any]:
    """The session's Orchestrator, installed as the actors' runtime."""
    from orchestrator import runtime
    from orchestrator.api import Orchestrator
    from orchestrator.logs import configure_logging

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
        sim.reset()
    yield


@pytest.fixture
def worker(orch: Any) -> Iterator[Any]:
    """A real dramatiq worker (8 threads) consuming the session's Redis namespace."""
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
