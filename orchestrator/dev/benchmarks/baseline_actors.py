"""The baselines the charges benchmark measures the orchestrator against.

Run as ``python -m dramatiq orchestrator.dev.benchmarks.baseline_actors``. Everything comes
from the environment, set by the benchmark: ``REDIS_URL``, ``BENCH_REDIS_NAMESPACE``,
``BENCH_QUEUE``, ``STRIPE_API_KEY`` and ``STRIPE_API_BASE`` (the simulator).

* ``bench_naive_charge``: what an application does without the orchestrator. One stripe SDK
  call (``StripeClient`` + ``payment_intents.create`` with ``confirm`` and an idempotency
  key), nothing persisted, no retry policy, no lookup.
* ``bench_floor_charge``: the same call between the least a durable job can write: a bare
  row (inserted by the driver) claimed before the call and settled after it, each in its own
  commit (``orchestrator.db.bench``'s floor statements), on a connection per worker thread.
  ``DATABASE_URL`` names the database.
* ``bench_noop``: no work at all; the cost of dramatiq itself.

``BENCH_NAIVE_HTTP=orchestrator`` gives the naive actor the HTTP client the orchestrator
builds (:func:`orchestrator.providers.stripe.http_client_for`) instead of the SDK's default,
so that the comparison measures durability alone.

Both count completions with ``INCR <namespace>:bench:done``, which the benchmark polls.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import dramatiq
import psycopg
import redis
import stripe
from dramatiq.brokers.redis import RedisBroker

from orchestrator.broker import HEARTBEAT_TIMEOUT_MS, MAINTENANCE_CHANCE
from orchestrator.db.bench import floor_claim, floor_settle
from orchestrator.dev.benchmarks.charges_measure import (
    FLOOR_ACTOR,
    NAIVE_ACTOR,
    NAIVE_HTTP_ENV,
    NAMESPACE_ENV,
    NOOP_ACTOR,
    QUEUE_ENV,
    done_key,
)
from orchestrator.providers.stripe import http_client_for

# The orchestrator's default provider timeouts (Settings), so both sides wait alike.
CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 20.0

_namespace = os.environ[NAMESPACE_ENV]
_redis_url = os.environ["REDIS_URL"]

# Actors bind to the broker current at declaration: set it first (the orchestrator's options).
broker = RedisBroker(  # type: ignore[no-untyped-call]
    url=_redis_url,
    namespace=_namespace,
    heartbeat_timeout=HEARTBEAT_TIMEOUT_MS,
    maintenance_chance=MAINTENANCE_CHANCE,
)
dramatiq.set_broker(broker)

_redis = redis.Redis.from_url(_redis_url)
_done_key = done_key(_namespace)
_api_base = os.environ["STRIPE_API_BASE"]
_stripe = stripe.StripeClient(
    os.environ["STRIPE_API_KEY"],
    base_addresses={"api": _api_base},
    http_client=(
        http_client_for(_api_base, CONNECT_TIMEOUT_S, READ_TIMEOUT_S)
        if os.environ.get(NAIVE_HTTP_ENV) == "orchestrator"
        else stripe.RequestsClient(timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S))
    ),
    max_network_retries=0,
)


_local = threading.local()


def _charge(amount: int, currency: str, payment_method: str, key: str) -> None:
    _stripe.v1.payment_intents.create(
        {
            "amount": amount,
            "currency": currency,
            "payment_method": payment_method,
            "confirm": True,
            "off_session": True,
            "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"},
            "customer": "cus_bench",
            "metadata": {"bench_key": key},
        },
        options={"idempotency_key": key},
    )


@dramatiq.actor(actor_name=NAIVE_ACTOR, queue_name=os.environ[QUEUE_ENV], max_retries=0)
def naive_charge(amount: int, currency: str, payment_method: str, key: str) -> None:
    """Charge through the SDK with the caller's key; nothing recorded anywhere."""
    _charge(amount, currency, payment_method, key)
    _redis.incr(_done_key)


@dramatiq.actor(actor_name=FLOOR_ACTOR, queue_name=os.environ[QUEUE_ENV], max_retries=0)
def floor_charge(amount: int, currency: str, payment_method: str, key: str, job_id: int) -> None:
    """The naive call, claimed before and settled after in the floor's bare row."""
    conn = _connection()
    owner = f"{os.getpid()}-{threading.current_thread().name}"
    floor_claim(conn, job_id, owner)
    _charge(amount, currency, payment_method, key)
    floor_settle(conn, job_id, owner)
    _redis.incr(_done_key)


def _connection() -> psycopg.Connection[Any]:
    """This worker thread's autocommit connection (opened on its first job)."""
    conn: psycopg.Connection[Any] | None = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = psycopg.connect(os.environ["DATABASE_URL"], autocommit=True)
        _local.conn = conn
    return conn


@dramatiq.actor(actor_name=NOOP_ACTOR, queue_name=os.environ[QUEUE_ENV], max_retries=0)
def noop() -> None:
    """Do nothing but count."""
    _redis.incr(_done_key)
