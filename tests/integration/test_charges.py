"""Charges end to end: real PostgreSQL, Redis, dramatiq worker, stripe SDK and simulator."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest

from orchestrator import IdempotencyConflict, JobState
from tests.conftest import count_jobs, wait_until


def _charge(orch: Any, key: str, amount: int = 1000, pm: str = "pm_card_visa", **kw: Any) -> Any:
    return orch.charge(amount, "usd", "cus_test", pm, key, kw.pop("metadata", None), **kw)


def _states(orch: Any) -> dict[str, int]:
    counts: dict[str, int] = orch.store.count_by_state()
    return counts


def test_charge_succeeds_with_one_payment_intent(orch: Any, worker: Any, simulator: Any) -> None:
    """A charge becomes one succeeded job, one PaymentIntent carrying the job id."""
    job = _charge(orch, "order-1", metadata={"order": "1"})
    assert job.state is JobState.PENDING
    wait_until(lambda: orch.job(job.id).state is JobState.SUCCEEDED)
    done = orch.job(job.id)
    intents = simulator.payment_intents()
    assert len(intents) == 1
    assert intents[0]["id"] == done.provider_ref
    assert intents[0]["metadata"] == {
        "order": "1",
        "orchestrator_job_id": job.id,
        "orchestrator_key_generation": "0",
    }
    assert intents[0]["amount"] == 1000
    # Merchant-initiated by default: no customer is present to authenticate or be redirected.
    assert intents[0]["off_session"] is True
    assert intents[0]["automatic_payment_methods"] == {
        "enabled": True,
        "allow_redirects": "never",
    }
    assert done.attempts == 1
    transitions = [(t.from_state, t.to_state) for t in orch.transitions(job.id)]
    assert transitions == [(None, "pending"), ("pending", "running"), ("running", "succeeded")]


def test_200_charges_under_cuts_and_429s(
    orch: Any, worker: Any, clock: Any, simulator: Any
) -> None:
    """15% cut after executing and 10% 429: all 200 succeed, one PaymentIntent each, every
    provider POST carried an Idempotency-Key. (The clock runs: a breaker deferral may go past
    the broker's delay window, and then only the clock dispatches the job when due.)"""
    simulator.set_faults("stripe", rate_cut_after_execute=0.15, rate_429=0.10)
    jobs = [_charge(orch, f"bulk-{i}", amount=100 + i) for i in range(200)]
    wait_until(lambda: count_jobs(orch, "succeeded") == 200, timeout_s=90)
    intents = simulator.payment_intents()
    by_job: dict[str, list[dict[str, Any]]] = {}
    for pi in intents:
        by_job.setdefault(pi["metadata"]["orchestrator_job_id"], []).append(pi)
    assert len(intents) == 200
    for job in jobs:
        assert [pi["amount"] for pi in by_job[job.id]] == [job.amount]
        assert orch.job(job.id).provider_ref == by_job[job.id][0]["id"]
    posts = [r for r in simulator.requests_log() if r["method"] == "POST"]
    assert posts and all(r["idempotency_key"] for r in posts)
    faults = {r["fault"] for r in posts}
    assert {"rate_cut_after_execute", "rate_429"} <= faults


def test_same_key_same_request_returns_the_same_job(orch: Any) -> None:
    """Enqueueing twice with one key and one request gives one job."""
    first = _charge(orch, "dup-1", metadata={"a": "b"})
    second = _charge(orch, "dup-1", metadata={"a": "b"})
    assert first.id == second.id
    assert count_jobs(orch) == 1


def test_same_key_other_request_conflicts(orch: Any) -> None:
    """The same key with another amount raises IdempotencyConflict and writes nothing."""
    _charge(orch, "dup-2", amount=1000)
    with pytest.raises(IdempotencyConflict):
        _charge(orch, "dup-2", amount=2000)
    assert count_jobs(orch) == 1


BAD_INPUTS: list[tuple[str, dict[str, Any]]] = [
    ("zero amount", {"amount": 0}),
    ("negative amount", {"amount": -5}),
    ("float amount", {"amount": 10.5}),
    ("bool amount", {"amount": True}),
    ("amount over Stripe's maximum", {"amount": 100_000_000}),
    ("unknown currency", {"currency": "xyz"}),
    ("currency not a string", {"currency": 840}),
    ("empty key", {"idempotency_key": ""}),
    ("key over 255 characters", {"idempotency_key": "k" * 256}),
    ("key with a newline", {"idempotency_key": "a\nb"}),
    ("missing payment method", {"payment_method": None}),
    ("payment method with spaces", {"payment_method": "pm card"}),
    ("51 metadata keys", {"metadata": {f"k{i}": "v" for i in range(51)}}),
    ("metadata key over 40", {"metadata": {"k" * 41: "v"}}),
    ("metadata value over 500", {"metadata": {"k": "v" * 501}}),
    ("metadata value not a string", {"metadata": {"k": 1}}),
    ("reserved metadata key", {"metadata": {"orchestrator_job_id": "x"}}),
]


@pytest.mark.parametrize(("case", "override"), BAD_INPUTS, ids=[c for c, _ in BAD_INPUTS])
def test_bad_input_raises_value_error_and_writes_nothing(
    orch: Any, case: str, override: dict[str, Any]
) -> None:
    """Each malformed request raises a ValueError subclass; the jobs table is unchanged."""
    args: dict[str, Any] = {
        "amount": 1000,
        "currency": "usd",
        "customer": "cus_1",
        "payment_method": "pm_card_visa",
        "idempotency_key": f"bad-{case}",
        "metadata": None,
    }
    args.update(override)
    with pytest.raises(ValueError):
        orch.charge(**args)
    assert count_jobs(orch) == 0


def test_declined_card_fails_after_one_call(orch: Any, worker: Any, simulator: Any) -> None:
    """A declined card ends `failed` after exactly one provider call, with the decline code."""
    job = _charge(orch, "declined", pm="pm_card_chargeDeclined")
    wait_until(lambda: orch.job(job.id).state.is_terminal)
    done = orch.job(job.id)
    assert done.state is JobState.FAILED
    assert done.last_error_code == "generic_decline"
    assert done.attempts == 1
    posts = [r for r in simulator.requests_log() if r["method"] == "POST"]
    assert len(posts) == 1


def test_wrong_api_key_fails_without_retry(orch: Any, simulator: Any) -> None:
    """A 401 (bad API key) ends `failed` after one call: retrying can't fix configuration."""
    from orchestrator.executor import Executor
    from orchestrator.providers.stripe import StripeProvider

    bad = StripeProvider(
        "sk_test_wrongwrongwrong", api_base=simulator.url, connect_timeout_s=1, read_timeout_s=2
    )
    executor = Executor(orch.store, {"stripe": bad}, orch.dispatcher, orch.settings)
    job = _charge(orch, "bad-key")
    assert executor.run(job.id) is JobState.FAILED
    done = orch.job(job.id)
    assert done.attempts == 1
    assert "AuthenticationError" in (done.last_error or "")
    assert len(simulator.requests_log()) == 1


def test_concurrent_enqueue_with_one_key_makes_one_job(orch: Any) -> None:
    """50 threads enqueueing one key at once make exactly one job and agree on its id."""
    barrier = threading.Barrier(50)

    def enqueue(_: int) -> str:
        barrier.wait()
        return str(_charge(orch, "race-1").id)

    with ThreadPoolExecutor(max_workers=50) as pool:
        ids = set(pool.map(enqueue, range(50)))
    assert len(ids) == 1
    assert count_jobs(orch) == 1


def test_two_workers_with_one_message_make_one_call(orch: Any, simulator: Any) -> None:
    """The same job run by two executors at once: one claim wins, one provider call."""
    simulator.set_faults("stripe", latency_ms=200)
    job = _charge(orch, "two-workers")
    executor = orch.executor()
    barrier = threading.Barrier(2)

    def run(_: int) -> Any:
        barrier.wait()
        return executor.run(job.id)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(run, range(2)))
    assert sorted(map(str, results)) == ["None", "succeeded"]
    assert len(simulator.payment_intents()) == 1
    assert len([r for r in simulator.requests_log() if r["method"] == "POST"]) == 1


def test_exhausted_attempts_end_dead_with_last_error(orch: Any, simulator: Any) -> None:
    """Every attempt rate-limited: after max_attempts the job is `dead` with the last error."""
    simulator.set_faults("stripe", rate_429=1.0)
    job = _charge(orch, "always-429")
    executor = orch.executor()
    states = []
    for _ in range(orch.settings.max_attempts):
        wait_until(lambda: orch.job(job.id).next_attempt_at <= _db_now(orch), timeout_s=5)
        states.append(executor.run(job.id))
    done = orch.job(job.id)
    assert states[-1] is JobState.DEAD
    assert done.state is JobState.DEAD
    assert done.dead_reason == "attempts_exhausted"
    assert done.attempts == orch.settings.max_attempts
    assert "RateLimitError" in (done.last_error or "")
    assert len(orch.attempts(job.id)) == orch.settings.max_attempts


def test_no_retry_is_scheduled_past_the_horizon(orch: Any, simulator: Any) -> None:
    """With a horizon shorter than the next backoff, a not-executed failure goes `dead` at once."""
    from tests.conftest import orchestrator_like

    short = orchestrator_like(
        orch, simulator.url, retry_horizon_s=1.0, backoff_base_s=30.0, backoff_max_s=60.0
    )
    simulator.set_faults("stripe", rate_429=1.0)
    job = short.charge(500, "eur", None, "pm_card_visa", "horizon-1")
    assert short.executor().run(job.id) is JobState.DEAD
    done = short.job(job.id)
    assert done.dead_reason == "retry_horizon"
    assert done.attempts == 1
    assert done.next_attempt_at <= done.deadline_at


def test_charge_inside_caller_transaction(orch: Any, worker: Any, simulator: Any) -> None:
    """With conn=, the job commits with the caller's transaction; a rollback leaves nothing."""
    from orchestrator.db import connect
    from orchestrator.maintenance.clock import Clock

    with connect(orch.settings.database_url) as conn:
        _charge(orch, "tx-rolled-back", conn=conn)
        conn.rollback()
    assert count_jobs(orch) == 0
    with connect(orch.settings.database_url) as conn:
        job = _charge(orch, "tx-committed", conn=conn)
        assert count_jobs(orch) == 0  # not visible before commit
    assert count_jobs(orch) == 1
    # No message was sent by charge(): the clock delivers it (NOTIFY, or the sweep).
    clock = Clock(orch)
    wait_until(lambda: clock.run_once().dispatched > 0 or _settled(orch, job.id), timeout_s=10)
    wait_until(lambda: _settled(orch, job.id))
    assert orch.job(job.id).state is JobState.SUCCEEDED


def _settled(orch: Any, job_id: str) -> bool:
    return bool(orch.job(job_id).state is JobState.SUCCEEDED)


def _db_now(orch: Any) -> Any:
    with psycopg.connect(orch.settings.database_url) as conn:
        row = conn.execute("SELECT now()").fetchone()
        assert row is not None
        return row[0]


def test_charge_does_not_wait_for_redis(orch: Any, simulator: Any) -> None:
    """The message goes out from a background thread: with the broker (Redis or RabbitMQ)
    unreachable, charge() still returns at once with the committed job, and the failed send
    is logged for the clock's sweep to make up."""
    import time

    from structlog.testing import capture_logs

    from orchestrator.api import Orchestrator
    from tests.conftest import refused_broker

    settings = refused_broker(orch, simulator.url)
    with capture_logs() as logs:
        cut_off = Orchestrator(settings, store=orch.store)
        started = time.monotonic()
        job = _charge(cut_off, "no-redis")
        took_s = time.monotonic() - started
        cut_off.dispatcher.close()
    assert took_s < 1.0
    assert orch.job(job.id).state is JobState.PENDING
    deferred = [e for e in logs if e["event"] == "job.dispatch_deferred"]
    assert [e["job_id"] for e in deferred] == [job.id]


def test_closing_sends_what_is_queued(orch: Any) -> None:
    """close() sends the messages still waiting for the background thread before it returns."""
    from orchestrator.api import Orchestrator
    from orchestrator.broker import make_broker
    from tests.conftest import queued_messages

    settings = orch.settings
    own = Orchestrator(settings, store=orch.store, broker=make_broker(settings))
    jobs = [_charge(own, f"flush-{i}") for i in range(20)]
    own.dispatcher.close()
    assert queued_messages(orch) == len(jobs)


def test_background_sends_are_pipelined_whole_after_a_script_flush(orch: Any) -> None:
    """The background thread sends a batch in pipelined pieces (Redis): every id arrives once,
    as the execute_job message a worker reads, with the broker's middleware told of each;
    a Redis without the Lua script (NOSCRIPT) gets it again."""
    import hashlib
    import json
    import uuid

    import dramatiq

    from orchestrator import broker as broker_module
    from orchestrator.api import Orchestrator
    from orchestrator.broker import make_broker, redis_for
    from tests.conftest import is_rabbitmq, queued_messages

    if is_rabbitmq(orch):
        pytest.skip("pipelined sends are the Redis broker's")

    seen: list[str] = []

    class Seen(dramatiq.Middleware):
        def after_enqueue(self, broker: Any, message: Any, delay: Any) -> None:
            seen.append(message.args[0])

    settings = orch.settings
    broker = make_broker(settings)
    broker.add_middleware(Seen())
    own = Orchestrator(settings, store=orch.store, broker=broker)
    client = redis_for(settings)
    # As if Redis had lost the script (SCRIPT FLUSH would be undone at once by any other
    # dramatiq process on this server, since redis-py reloads a script on NOSCRIPT).
    script = broker.scripts["dispatch"]
    script.sha = "0" * 40
    ids = [str(uuid.uuid4()) for _ in range(broker_module.SEND_BATCH * 2 + 7)]
    own.dispatcher.send_soon_many(ids)
    own.dispatcher.close()
    assert queued_messages(orch) == len(ids)
    assert sorted(seen) == sorted(ids)
    stored = client.hvals(f"{settings.redis_namespace}:{settings.queue_name}.msgs")
    messages = [json.loads(raw) for raw in stored]
    assert sorted(m["args"][0] for m in messages) == sorted(ids)
    assert {m["actor_name"] for m in messages} == {broker_module.EXECUTE_ACTOR}
    assert script.sha == hashlib.sha1(script.script).hexdigest()
    client.close()
