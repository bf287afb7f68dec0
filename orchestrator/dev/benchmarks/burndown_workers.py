"""What the burn-down benchmark's worker processes import:
``python -m dramatiq orchestrator.dev.benchmarks.burndown_workers``.

``BENCH_BURNDOWN_VARIANT`` (set by :mod:`orchestrator.dev.benchmarks.burndown`) picks one:

* ``orchestrator``: the production actors (``actors``) from the environment, as
  ``orchestrator worker`` runs them, except that the process's executor is built with
  :class:`~orchestrator.dev.benchmarks.noop_provider.NoopProvider` in place of Stripe.
  ``Orchestrator.executor(providers=...)`` keeps the executor it builds for the process, and
  the actors ask for that one, so claim, settle, triggers, commits and the broker are the
  real ones; only the HTTP call is gone. Nothing of this reaches any other process: the
  switch is this module, imported by the benchmark's workers alone.
* ``dramatiq``: one actor that does nothing, on a plain RedisBroker with the orchestrator's
  broker options (``BENCH_REDIS_NAMESPACE``, ``REDIS_URL``): the floor set by dramatiq and
  Redis. It counts nothing either; the driver reads progress from the queue's message hash,
  which dramatiq empties as it acks.
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from orchestrator import runtime
from orchestrator.broker import HEARTBEAT_TIMEOUT_MS, MAINTENANCE_CHANCE
from orchestrator.dev.benchmarks.burndown import (
    BARE_ACTOR,
    BARE_QUEUE,
    NAMESPACE_ENV,
    VARIANT_ENV,
    Variant,
)
from orchestrator.dev.benchmarks.noop_provider import NOOP_PROVIDER, NoopProvider


def noop() -> None:
    """Nothing: what is measured is dramatiq's fetch, decode, dispatch and ack."""


def _orchestrator_broker() -> dramatiq.Broker:
    orchestrator = runtime.current()
    # Kept by the Orchestrator: every later executor() of this process returns this one.
    orchestrator.executor(providers={NOOP_PROVIDER: NoopProvider()})
    import actors  # declares the production actors on the orchestrator's broker

    return actors.broker


def _bare_broker() -> dramatiq.Broker:
    broker = RedisBroker(  # type: ignore[no-untyped-call]
        url=os.environ["REDIS_URL"],
        namespace=os.environ[NAMESPACE_ENV],
        heartbeat_timeout=HEARTBEAT_TIMEOUT_MS,
        maintenance_chance=MAINTENANCE_CHANCE,
    )
    # Actors bind to the broker current at declaration: set it first.
    dramatiq.set_broker(broker)
    dramatiq.actor(actor_name=BARE_ACTOR, queue_name=BARE_QUEUE, max_retries=0)(noop)
    return broker


broker = (
    _orchestrator_broker()
    if os.environ.get(VARIANT_ENV) == Variant.ORCHESTRATOR
    else _bare_broker()
)
