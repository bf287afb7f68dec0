"""Multi-host chaos, smoke-sized: two worker hosts and two clock hosts as network namespaces.

The fast variant of ``scripts/chaos --multi-host --scenario pg``: 40 charges, worker host a
cut from PostgreSQL (a black hole, both ways) once a quarter succeeded, healed 12 s later
(past its 10 s leases): every job settles once, none twice, none lost, and the ledger matches
the provider. Needs root and ``ip netns``; skipped otherwise.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import TEST_DATABASE_URL, TEST_REDIS_URL

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "chaos_hosts.py"
JOBS = 40
HOLD_S = 12.0


def _chaos_hosts() -> ModuleType:
    spec = importlib.util.spec_from_file_location("chaos_hosts", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["chaos_hosts"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def _unavailable(chaos_hosts: ModuleType) -> str | None:
    try:
        chaos_hosts.preflight()
    except chaos_hosts.Unavailable as exc:
        return str(exc)
    if not TEST_DATABASE_URL.startswith("postgresql://") or not TEST_REDIS_URL.startswith(
        "redis://"
    ):
        return "the hosts reach PostgreSQL and Redis over TCP only"
    return None


def test_worker_host_cut_from_postgres_settles_every_job_once(tmp_path: Path) -> None:
    """Host a loses PostgreSQL mid-run for 12 s: its leases expire, host b and the clock
    resolve its jobs by lookup; after the heal, all 40 jobs succeeded with exactly one
    successful PaymentIntent each, and nothing is lost."""
    chaos_hosts = _chaos_hosts()
    reason = _unavailable(chaos_hosts)
    if reason:
        pytest.skip(reason)
    result = chaos_hosts.run_scenario(
        "pg",
        "redis",
        JOBS,
        tmp_path,
        hold_s=HOLD_S,
        admin_url=TEST_DATABASE_URL,
        redis_url=TEST_REDIS_URL,
    )
    print(result.line())
    assert result.ok, result.line()
    assert result.states == {"succeeded": JOBS}
