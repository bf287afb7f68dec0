"""RabbitMQ as the broker (ORCHESTRATOR_BROKER_URL=amqp://...), whatever the session's broker:
each test runs an Orchestrator on the session's own RabbitMQ vhost (tests/conftest.py), with
PostgreSQL, Redis (breaker state) and the simulator as usual."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pika
import pytest
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker

from orchestrator import JobState
from orchestrator.api import Orchestrator
from orchestrator.broker import EXECUTE_ACTOR, make_broker
from orchestrator.brokers import BrokerUnavailable, DeadLetter, broker_ops
from orchestrator.brokers.rabbitmq import HEARTBEAT_S, broker_urls
from orchestrator.config import load_settings
from orchestrator.errors import ConfigError
from orchestrator.maintenance.clock import Clock
from orchestrator.maintenance.deadletters import recent_dead_letters
from orchestrator.ops.metrics import metrics_registry
from tests.conftest import (
    RABBITMQ_VHOST,
    cli_main,
    count_jobs,
    purge_rabbitmq,
    settings_like,
    truncate,
    wait_until,
)
from tests.processes import settings_env, spawn, worker_args


@pytest.fixture
def rabbit(orch: Any, simulator: Any, rabbitmq_url: str) -> Iterator[Orchestrator]:
    """The session's store, its queues on RabbitMQ (purged before and after), short leases."""
    settings = settings_like(
        orch,
        simulator.url,
        broker_url=rabbitmq_url,
        lease_margin_s=1.0,
        dispatch_grace_s=0.5,
        clock_interval_s=0.5,
    )
    local = Orchestrator(settings, store=orch.store)
    truncate(local, "broker_dead_letters")
    purge_rabbitmq(local)
    yield local
    local.dispatcher.close()
    purge_rabbitmq(local)
    local.broker.close()


def _charge(orch: Any, key: str, amount: int = 500) -> Any:
    return orch.charge(amount, "usd", None, "pm_card_visa", key)


def _counts(orch: Any) -> Any:
    ops = broker_ops(orch.settings)
    try:
        return ops.counts(orch.settings.queue_name)
    finally:
        ops.close()


def _dead_letter_one(orch: Any) -> dict[str, Any]:
    """Take one message off the queue and reject it, as dramatiq's consumer does when an
    actor's retries ran out: RabbitMQ routes it to ``<queue>.XQ``. Returns the message."""
    conn = pika.BlockingConnection([pika.URLParameters(u) for u in broker_urls(orch.settings)])
    try:
        channel = conn.channel()
        method, _, body = channel.basic_get(orch.settings.queue_name, auto_ack=False)
        assert method is not None, "no message to dead-letter"
        channel.basic_nack(method.delivery_tag, requeue=False)
        message: dict[str, Any] = json.loads(body)
    finally:
        conn.close()
    wait_until(lambda: _counts(orch).dead == 1, timeout_s=5)
    return message


# -- broker selection ------------------------------------------------------------------------


def test_the_broker_is_picked_from_the_url(orch: Any, simulator: Any) -> None:
    """amqp:// and amqps:// give dramatiq's RabbitmqBroker with publisher confirms and bounded
    connection options (the URL's own options win); redis:// and no ORCHESTRATOR_BROKER_URL
    give its RedisBroker; another scheme is a one-line ConfigError naming the variable."""
    on_rabbit = settings_like(
        orch, simulator.url, broker_url="amqp://guest:guest@127.0.0.1:5672/%2F?heartbeat=30"
    )
    broker = make_broker(on_rabbit)
    assert isinstance(broker, RabbitmqBroker) and broker.confirm_delivery is True
    params = broker.parameters
    assert params.heartbeat == 30  # the URL's
    assert params.socket_timeout == on_rabbit.redis_timeout_s
    assert params.blocked_connection_timeout == on_rabbit.redis_timeout_s
    assert params.stack_timeout == 2 * on_rabbit.redis_timeout_s
    tls = settings_like(orch, simulator.url, broker_url="amqps://u:p@mq.example:5671/prod")
    assert f"heartbeat={HEARTBEAT_S}" in broker_urls(tls)[0]
    assert broker_urls(tls)[0].startswith("amqps://u:p@mq.example:5671/prod?")

    assert orch.settings.broker_url is None or orch.settings.broker_url.startswith("amqp")
    default = settings_like(orch, simulator.url, broker_url=None)
    assert default.dramatiq_broker_url == default.redis_url
    assert isinstance(make_broker(default), RedisBroker)
    explicit = settings_like(orch, simulator.url, broker_url=default.redis_url)
    assert isinstance(make_broker(explicit), RedisBroker)

    with pytest.raises(ConfigError) as caught:
        load_settings(
            database_url=orch.settings.database_url,
            redis_url=orch.settings.redis_url,
            broker_url="kafka://127.0.0.1:9092",
        )
    message = str(caught.value)
    assert message.startswith("ORCHESTRATOR_BROKER_URL is invalid") and "\n" not in message
    assert "kafka" not in message  # names the variable, never echoes its value


def test_publisher_confirms_are_on(rabbit: Orchestrator) -> None:
    """Every channel the broker publishes on is in confirm mode, so a send returns only once
    RabbitMQ holds the message: even a queue deleted under a running broker is noticed (the
    confirmed, mandatory publish comes back unroutable), declared again, and the message lands."""
    job = _charge(rabbit, "confirms-1")
    rabbit.dispatcher.flush()
    assert _counts(rabbit).queued == 1
    assert rabbit.broker.channel._delivery_confirmation is True  # this thread's channel
    conn = pika.BlockingConnection([pika.URLParameters(u) for u in broker_urls(rabbit.settings)])
    conn.channel().queue_delete(rabbit.settings.queue_name)
    conn.close()
    rabbit.dispatcher.send(job.id)  # unconfirmed, this message would vanish
    assert _counts(rabbit).queued == 1


# -- dead letters, metrics, CLI --------------------------------------------------------------


def test_a_message_dead_lettered_on_rabbitmq_is_reconciled_by_the_clock(
    rabbit: Orchestrator,
) -> None:
    """A job's message RabbitMQ dead-lettered into ``<queue>.XQ`` is copied to
    broker_dead_letters by the clock's pass and acked only after that: a copy that fails leaves
    it in the XQ. The still-pending job gets a new message."""
    job = _charge(rabbit, "rxq-1")
    rabbit.dispatcher.flush()
    message = _dead_letter_one(rabbit)
    assert _counts(rabbit).queued == 0

    def failing_copy(letter: DeadLetter) -> None:
        raise RuntimeError("PostgreSQL went away")

    ops = broker_ops(rabbit.settings)
    with pytest.raises(RuntimeError):
        ops.drain_dead_letters(rabbit.settings.queue_name, 10, failing_copy)
    wait_until(lambda: _counts(rabbit).dead == 1, timeout_s=5)  # back in the XQ, not lost

    clock = Clock(rabbit)
    assert clock.run_once(dry_run=True)["dead_letters_reconciled"] == 1
    assert clock.run_once()["dead_letters_reconciled"] == 1
    counts = _counts(rabbit)
    assert (counts.dead, counts.queued) == (0, 1)  # acked; the job re-sent
    letters = recent_dead_letters(rabbit, 10)
    assert [(x["message_id"], x["job_id"], x["job_state"], x["action"]) for x in letters] == [
        (message["message_id"], job.id, "pending", "redispatched")
    ]
    assert letters[0]["queue"] == rabbit.settings.queue_name
    assert clock.run_once()["dead_letters_reconciled"] == 0


def test_queue_depth_metrics_on_rabbitmq(rabbit: Orchestrator) -> None:
    """orchestrator_queue_depth counts the queue and its delay queue, and
    orchestrator_broker_dead_letters the XQ, from RabbitMQ; an unreachable RabbitMQ leaves them
    out of the scrape without failing it."""
    jobs = [_charge(rabbit, f"depth-{i}") for i in range(4)]
    rabbit.dispatcher.flush()
    _dead_letter_one(rabbit)
    delayed = dramatiq.Message(
        queue_name=rabbit.settings.queue_name,
        actor_name=EXECUTE_ACTOR,
        args=(jobs[0].id,),
        kwargs={},
        options={},
    )
    rabbit.broker.enqueue(delayed, delay=600_000)
    registry = metrics_registry(rabbit)
    queue = rabbit.settings.queue_name
    assert registry.get_sample_value("orchestrator_queue_depth", {"queue": queue}) == 3
    assert registry.get_sample_value("orchestrator_queue_depth", {"queue": f"{queue}.DQ"}) == 1
    assert registry.get_sample_value("orchestrator_broker_dead_letters", {}) == 1

    down = Orchestrator(
        settings_like(rabbit, rabbit.settings.stripe_api_base, broker_url=_refused_amqp()),
        store=rabbit.store,
        broker=rabbit.broker,
    )
    scraped = metrics_registry(down)
    assert scraped.get_sample_value("orchestrator_queue_depth", {"queue": queue}) is None
    assert scraped.get_sample_value("orchestrator_dlq_size", {}) == 0  # the rest still there
    with pytest.raises(BrokerUnavailable):
        broker_ops(down.settings, 0.5).counts(queue)
    down.dispatcher.close()


def _refused_amqp() -> str:
    return "amqp://guest:guest@127.0.0.1:1/%2F"


def test_dlq_list_broker_on_rabbitmq(
    rabbit: Orchestrator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`dlq list --broker` on RabbitMQ: before the clock's pass it says how many wait in the
    XQ; after it, it lists the letter (with --json too)."""
    job = _charge(rabbit, "cli-xq")
    rabbit.dispatcher.flush()
    _dead_letter_one(rabbit)
    main = cli_main(rabbit, monkeypatch, ORCHESTRATOR_BROKER_URL=rabbit.settings.broker_url or "")
    assert main(["dlq", "list", "--broker"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == ""
    assert "1 more in the broker's dead-letter queue" in captured.err
    Clock(rabbit).run_once()
    assert main(["dlq", "list", "--broker"]) == 0
    captured = capsys.readouterr()
    assert f"job={job.id}" in captured.out and "action=redispatched" in captured.out
    assert "more in the broker" not in captured.err
    assert main(["dlq", "list", "--broker", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    rows = listed if isinstance(listed, list) else listed.get("items", listed)
    assert [r["job_id"] for r in rows] == [job.id]


# -- connection loss mid-run -----------------------------------------------------------------


def _close_connections() -> None:
    """Close every client connection of the session's vhost (as a RabbitMQ restart or a
    network cut would), leaving other vhosts alone."""
    subprocess.run(
        ["rabbitmqctl", "-q", "close_all_connections", "--vhost", RABBITMQ_VHOST, "test cut"],
        check=True,
        capture_output=True,
        timeout=60,
    )


def test_rabbitmq_connections_closed_mid_run_every_job_settles_once(
    rabbit: Orchestrator, simulator: Any, tmp_path: Path
) -> None:
    """Every connection to RabbitMQ (the worker's consumers and publishers, this process's
    senders) is closed twice while 150 charges run: the worker reconnects, messages unacked at
    the cut are delivered again (the claim makes that harmless), the clock re-sends what was
    lost, and every job succeeds with exactly one PaymentIntent."""
    simulator.set_faults("stripe", latency_ms=50)
    env = settings_env(rabbit.settings)
    jobs = [rabbit.charge(100 + i, "usd", None, "pm_card_visa", f"mq-cut-{i}") for i in range(150)]
    with spawn(worker_args(1, 8), env, tmp_path / "w.log") as worker:
        for threshold in (20, 70):
            wait_until(lambda t=threshold: count_jobs(rabbit, "succeeded") >= t, timeout_s=60)
            _close_connections()
        clock = Clock(rabbit)

        def settled() -> bool:
            clock.run_once()
            return count_jobs(rabbit, "succeeded") == 150

        wait_until(settled, timeout_s=90, poll_s=0.3)
        assert worker.popen.poll() is None, worker.log()[-3000:]
    per_job = Counter(pi["metadata"]["orchestrator_job_id"] for pi in simulator.payment_intents())
    assert set(per_job) == {j.id for j in jobs}
    assert set(per_job.values()) == {1}, "a job was charged twice"
    assert all(rabbit.job(j.id).state is JobState.SUCCEEDED for j in jobs)
