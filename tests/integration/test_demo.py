"""`orchestrator demo` and `orchestrator dev` end to end, on the embedded stack.

Each test gets its own ``ORCHESTRATOR_DEV_DIR`` and runs the real CLI in a subprocess with
``DATABASE_URL`` / ``REDIS_URL`` unset, so PostgreSQL and Redis are the embedded ones.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.dev.devstack import STACK_FILE, port_open, state_dir

ROOT = Path(__file__).resolve().parent.parent.parent
# Generous: a cold initdb plus a demo of a few dozen jobs takes ~20 s on a loaded 2-core box.
DEMO_TIMEOUT_S = 150
pytestmark = pytest.mark.integration


@pytest.fixture
def dev_dir() -> Iterator[Path]:
    """A fresh state directory under .orchestrator/ (reachable by the PostgreSQL user)."""
    directory = state_dir() / f"test-demo-{os.getpid()}-{time.monotonic_ns()}"
    directory.mkdir(parents=True)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def _env(dev_dir: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("ORCHESTRATOR_") and k not in {"DATABASE_URL", "REDIS_URL", "PORT"}
    }
    env["ORCHESTRATOR_DEV_DIR"] = str(dev_dir)
    env["PYTHONPATH"] = str(ROOT)
    return env


def _demo(dev_dir: Path, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", "demo", "--json", *args],
        env=_env(dev_dir),
        cwd=ROOT,
        capture_output=True,
        timeout=DEMO_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    summary: dict[str, Any] = json.loads(done.stdout)
    return summary


def _assert_invariants(summary: dict[str, Any], charges: int, sends: int) -> None:
    assert summary["ok"] is True
    assert summary["settled"] is True
    assert (summary["charges"], summary["sends"]) == (charges, sends)
    assert summary["unsettled"] == 0
    assert summary["succeeded"] + summary["failed"] + summary["dead"] == charges + sends
    assert summary["duplicates"] == 0
    assert summary["ledger_mismatches"] == 0
    objects = summary["provider_objects"]
    assert objects["payment_intents"] == charges  # declines leave a PaymentIntent too
    assert objects["max_per_charge"] == 1
    assert objects["max_per_send"] == 1
    assert summary["settle_p50_s"] <= summary["settle_p99_s"]


def test_demo_starts_an_embedded_stack_and_proves_the_invariants(dev_dir: Path) -> None:
    """With no stack running and no URLs set, the demo starts embedded PostgreSQL and Redis,
    the simulator, web, worker and clock; every job settles with one provider object at most,
    declined cards fail, the JSON summary says so, and everything is stopped afterwards."""
    summary = _demo(dev_dir, "--charges", "30", "--sends", "10", "--outage", "0")
    _assert_invariants(summary, 30, 10)
    assert summary["by_kind"]["charge"].get("failed", 0) >= 1  # seed 42 draws declines
    assert summary["by_kind"]["email"].get("succeeded", 0) >= 1
    assert summary["dlq_size"] == summary["dead"]  # a fresh database: only this run's dead
    assert summary["next_steps"]["dashboard"].endswith("/ops/")
    assert "orchestrator dlq list" in summary["next_steps"]["dlq"]
    assert not (dev_dir / STACK_FILE).exists()
    assert not (dev_dir / "postgres" / "data" / "postmaster.pid").exists()  # shut down


def _wait_for_stack(proc: subprocess.Popen[bytes], dev_dir: Path) -> dict[str, Any]:
    deadline = time.monotonic() + DEMO_TIMEOUT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, "orchestrator dev exited during start"
        if (dev_dir / STACK_FILE).exists():
            info: dict[str, Any] = json.loads((dev_dir / STACK_FILE).read_text())
            return info
        time.sleep(0.1)
    raise AssertionError("orchestrator dev did not come up")


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


def test_dev_serves_the_stack_the_demo_reuses_and_ctrl_c_stops_it_all(dev_dir: Path) -> None:
    """`orchestrator dev` brings the stack up (web /healthz answers, simulator answers), a
    demo run reuses it instead of starting another, and SIGINT (Ctrl-C) stops every process
    and service: exit 0, ports closed, PostgreSQL shut down, no stack file left."""
    log = (dev_dir / "dev.out").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "dev"],
        env=_env(dev_dir),
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        info = _wait_for_stack(proc, dev_dir)
        with urllib.request.urlopen(f"{info['web_url']}/healthz", timeout=5) as resp:
            assert resp.status == 200
        assert set(info["embedded"]) == {"postgres", "redis"}
        summary = _demo(dev_dir, "--charges", "20", "--sends", "5", "--outage", "0")
        _assert_invariants(summary, 20, 5)
        assert summary["next_steps"]["dashboard"] == f"{info['web_url']}/ops/"
        assert proc.poll() is None  # the demo left the dev stack running
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    ports = [_port(info[k]) for k in ("database_url", "redis_url", "simulator_url", "web_url")]
    assert not [p for p in ports if port_open("127.0.0.1", p)]
    assert not (dev_dir / STACK_FILE).exists()
    assert not (dev_dir / "postgres" / "data" / "postmaster.pid").exists()
    output = (dev_dir / "dev.out").read_text()
    assert "stack is up" in output
    assert "web " in output and "worker" in output and "clock" in output
