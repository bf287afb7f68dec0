"""Readiness (``/readyz``) and the fleet's heartbeats (``orchestrator status``,
``GET /ops/api/status``) against real PostgreSQL, Redis, worker and clock processes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import serve
from tests.integration.test_ops_web import AUTH, TOKEN
from tests.processes import (
    ROOT,
    clock_args,
    free_port,
    settings_env,
    spawn,
    wait_for_log,
    worker_args,
)

pytestmark = pytest.mark.integration


def _run_status(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``orchestrator status [args]`` in a subprocess with ``env``, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", "status", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _status(orch: Any) -> tuple[int, dict[str, Any]]:
    """``orchestrator status --json`` in a subprocess: (exit code, its JSON)."""
    done = _run_status(settings_env(orch.settings), "--json")
    return done.returncode, json.loads(done.stdout)


def _wait_status(orch: Any, predicate: Any, timeout_s: float = 30.0) -> tuple[int, Any]:
    deadline = time.monotonic() + timeout_s
    code, status = _status(orch)
    while not predicate(status) and time.monotonic() < deadline:
        time.sleep(0.3)
        code, status = _status(orch)
    assert predicate(status), status
    return code, status


def test_readyz_is_200_when_postgres_and_redis_answer(orch: Any, simulator: Any) -> None:
    """Both dependencies answer: 200 naming each as ok; /healthz stays a plain liveness."""
    from orchestrator.web import create_app
    from tests.conftest import orchestrator_like

    with serve(create_app(orchestrator_like(orch, simulator.url))) as url:
        ready = requests.get(url + "/readyz", timeout=5)
        expected = {"postgres": "ok", "redis": "ok"}
        if orch.settings.dramatiq_broker_url != orch.settings.redis_url:
            expected["broker"] = "ok"
        assert (ready.status_code, ready.json()) == (200, expected)
        assert requests.get(url + "/healthz", timeout=5).json() == {"status": "ok"}


@pytest.mark.parametrize("reachable", [True, False])
def test_readyz_asks_a_rabbitmq_broker_too(orch: Any, simulator: Any, reachable: bool) -> None:
    """With RabbitMQ as the broker, /readyz names it: ok when it answers, 503 naming it when
    its port is closed (PostgreSQL and Redis still ok)."""
    from orchestrator.web import create_app
    from tests.conftest import orchestrator_like

    port = 5672 if reachable else free_port()
    amqp = orchestrator_like(
        orch, simulator.url, broker_url=f"amqp://guest:guest@127.0.0.1:{port}/%2F"
    )
    with serve(create_app(amqp)) as url:
        ready = requests.get(url + "/readyz", timeout=5)
        body = ready.json()
        assert (body["postgres"], body["redis"]) == ("ok", "ok")
        if reachable:
            assert (ready.status_code, body["broker"]) == (200, "ok")
        else:
            assert ready.status_code == 503
            assert body["broker"].startswith("failed: ")


def test_readyz_is_503_naming_redis_when_it_is_unreachable(orch: Any, simulator: Any) -> None:
    """Redis on a closed port: 503 within the timeout, naming redis (postgres still ok);
    /healthz still answers 200."""
    from orchestrator.web import create_app
    from tests.conftest import orchestrator_like

    no_redis = orchestrator_like(
        orch, simulator.url, redis_url=f"redis://127.0.0.1:{free_port()}/0"
    )
    with serve(create_app(no_redis)) as url:
        started = time.monotonic()
        ready = requests.get(url + "/readyz", timeout=5)
        assert time.monotonic() - started < 3
        assert ready.status_code == 503
        body = ready.json()
        assert body["postgres"] == "ok"
        assert body["redis"].startswith("failed: ")
        assert requests.get(url + "/healthz", timeout=5).status_code == 200


def test_status_shows_workers_and_the_clock_leader(
    orch: Any, simulator: Any, tmp_path: Path
) -> None:
    """A real worker and two clocks beat in Redis: `orchestrator status` (exit 0) and
    /ops/api/status show the worker, one leader and one standby. When the clocks stop, their
    records go and the missing leader is flagged (exit 1)."""
    from orchestrator.web import create_app
    from tests.conftest import orchestrator_like

    env = settings_env(orch.settings)
    with (
        spawn(worker_args(1, 2), env, tmp_path / "worker.log"),
        spawn(clock_args(), env, tmp_path / "clock-1.log") as first,
    ):
        wait_for_log(first, "clock.lock_acquired")
        with spawn(clock_args(), env, tmp_path / "clock-2.log") as second:
            wait_for_log(second, "clock.waiting_for_lock")
            code, status = _wait_status(orch, lambda s: s["workers"] and len(s["clocks"]) == 2)
            assert code == 0 and status["ok"] is True and status["problems"] == []
            worker = status["workers"][0]
            assert worker["threads"] == 2 and worker["age_s"] < 20
            leader, standby = status["clocks"]
            assert leader["leader"] is True and standby["leader"] is False
            assert status["clock_leader"] == leader
            assert leader["pid"] == first.popen.pid and standby["pid"] == second.popen.pid

            with serve(create_app(orchestrator_like(orch, simulator.url, ops_token=TOKEN))) as url:
                assert requests.get(url + "/ops/api/status", timeout=5).status_code == 401
                served = requests.get(url + "/ops/api/status", headers=AUTH, timeout=5).json()
            assert served["ok"] is True
            assert [w["pid"] for w in served["workers"]] == [worker["pid"]]
            assert served["clock_leader"]["pid"] == first.popen.pid

    # Everything stopped cleanly: the records are gone at once, not after their TTL.
    code, status = _status(orch)
    assert code == 1
    assert status["ok"] is False and status["clock_leader"] is None
    assert any("no clock leader" in p for p in status["problems"])
    assert status["workers"] == [] and status["warnings"]


def test_status_flags_a_missing_clock_while_workers_run(orch: Any, tmp_path: Path) -> None:
    """Workers without any clock: the worker is listed, the clock is the problem (exit 1),
    and the text output says so."""
    env = settings_env(orch.settings)
    with spawn(worker_args(1, 1), env, tmp_path / "worker.log"):
        code, status = _wait_status(orch, lambda s: s["workers"])
        assert code == 1 and status["clock_leader"] is None
        text = _run_status(env)
    assert text.returncode == 1
    assert "PROBLEM: no clock leader seen in the last 30 s" in text.stdout
    assert text.stdout.startswith("worker ")


def test_status_is_an_error_when_redis_does_not_answer(orch: Any) -> None:
    """Redis unreachable: exit 1 with one line naming it, not a traceback."""
    env = settings_env(orch.settings, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    done = _run_status(env)
    assert done.returncode == 1
    assert done.stderr.strip() == "orchestrator: cannot read heartbeats from Redis: ConnectionError"
