"""A Redis that stops answering (SIGSTOP: the socket stays open, nothing comes back) fails
calls after the configured timeout instead of blocking the caller forever."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis

from orchestrator.api import Orchestrator
from orchestrator.broker import Dispatcher, make_broker
from orchestrator.maintenance.clock import Clock
from tests.conftest import settings_like
from tests.processes import free_port, redis_server_args, wait_for_redis


@pytest.fixture
def frozen_redis_url() -> Iterator[str]:
    """A redis-server of our own, answering at first, then stopped with SIGSTOP."""
    port = free_port()
    proc = subprocess.Popen(
        redis_server_args(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for_redis(port)
    proc.send_signal(signal.SIGSTOP)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        proc.wait(timeout=10)


def test_a_send_to_a_frozen_redis_fails_after_the_timeout(
    orch: Any, simulator: Any, frozen_redis_url: str
) -> None:
    """The broker's client has connect and read timeouts: a send raises a Redis error in
    about ORCHESTRATOR_REDIS_TIMEOUT_S instead of hanging."""
    settings = settings_like(orch, simulator.url, redis_url=frozen_redis_url, redis_timeout_s=0.5)
    dispatcher = Dispatcher(make_broker(settings), settings.queue_name)
    started = time.monotonic()
    with pytest.raises(redis.RedisError):
        dispatcher.send("00000000-0000-0000-0000-000000000000")
    assert time.monotonic() - started < 5


def test_the_clock_keeps_its_pass_going_with_redis_frozen(
    orch: Any, simulator: Any, frozen_redis_url: str
) -> None:
    """A clock pass whose Redis is frozen still ends, in about the timeout per Redis task: the
    re-send of a due job fails (it stays due for the next pass) and the tasks after it, which
    need only PostgreSQL, still run."""
    job = orch.charge(1000, "usd", "cus_frozen", "pm_card_visa", "frozen-1")
    orch.dispatcher.flush()
    with psycopg.connect(orch.settings.database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE jobs SET dispatched_at = now() - interval '1 hour', "
            "next_attempt_at = now() - interval '1 hour' WHERE id = %s",
            (job.id,),
        )
    frozen = Orchestrator(
        settings_like(orch, simulator.url, redis_url=frozen_redis_url, redis_timeout_s=0.5),
        store=orch.store,
    )
    started = time.monotonic()
    report = Clock(frozen).run_once()
    assert time.monotonic() - started < 15
    assert "dispatched" not in report.counts  # the re-send failed, logged, the pass went on
    assert report.counts["attempts_deleted"] == 0
