"""The baselines the charges benchmark measures the orchestrator against.

Run as ``python -m dramatiq orchestrator.dev.benchmarks.baseline_actors``. Everything comes
from the environment, set by the benchmark: ``REDIS_URL``, ``BENCH_REDIS_NAMESPACE``,
``BENCH_QUEUE``, ``STRIPE_API_KEY`` and ``STRIPE_API_BASE`` (the simulator).

* ``bench_naive_charge``: what an application does without the orchestrator. One stripe SDK
  call (``StripeClient`` + ``payment_intents.create`` with ``confirm`` and an idempotency
  key), nothing persisted, no retry policy, no lookup.
* ``bench_noop``: no work at all; the cost of dramatiq itself.

``BENCH_NAIVE_HTTP=orchestrator`` gives the naive actor the HTTP client the orchestrator
builds (:func:`orchestrator.providers.stripe.http_client_for`) instead of the SDK's default,
so that the comparison measures durability alone.

Both count completions with ``INCR <namespace>:bench:done``, which the benchmark polls.
"""

from __future__ import annotations

import os

import dramatiq
import redis
import stripe
from dramatiq.brokers.redis import RedisBroker

from orchestrator.broker import HEARTBEAT_TIMEOUT_MS, MAINTENANCE_CHANCE
from orchestrator.dev.benchmarks.charges import (
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


@dramatiq.actor(actor_name=NAIVE_ACTOR, queue_name=os.environ[QUEUE_ENV], max_retries=0)
def naive_charge(amount: int, currency: str, payment_method: str, key: str) -> None:
    """Charge through the SDK with the caller's key; nothing recorded anywhere."""
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
    _redis.incr(_done_key)


@dramatiq.actor(actor_name=NOOP_ACTOR, queue_name=os.environ[QUEUE_ENV], max_retries=0)
def noop() -> None:
    """Do nothing but count."""
    _redis.incr(_done_key)
