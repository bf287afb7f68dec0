"""Which writes wait for the WAL flush: the acceptance of a job always does; the claim does
only for a provider without idempotency keys; a settle never does, and one replayed after a
lost claim neither fails nor records its attempt twice."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg

from orchestrator.db.pool import q
from tests.conftest import wait_until


def _charge(orch: Any, key: str) -> Any:
    return orch.charge(1000, "usd", "cus_commit", "pm_card_visa", key)


def _send(orch: Any, key: str) -> Any:
    return orch.send_email(
        "ana@example.com",
        "Receipt",
        "Thanks.",
        idempotency_key=key,
        from_email="billing@example.com",
    )


def _claim_commit_mode(orch: Any, job_id: str) -> str:
    """Claim the job as the executor would, inside a transaction left open to look at the
    commit mode the claim chose; rolled back, so the job stays claimable."""
    wait_until(lambda: orch.job(job_id).next_attempt_at <= datetime.now(UTC), timeout_s=5)
    args = {
        "id": job_id,
        "owner": "worker:test",
        "lease_s": 30.0,
        "keyed_providers": list(orch.executor().keyed_providers),
    }
    with psycopg.connect(orch.settings.database_url) as conn:
        claimed = conn.execute(q("claim_job"), args).fetchone()
        assert claimed is not None
        mode = conn.execute("SHOW synchronous_commit").fetchone()
        conn.rollback()
    assert mode is not None
    return str(mode[0])


def test_only_providers_with_idempotency_keys_claim_asynchronously(orch: Any) -> None:
    """Stripe replays a key, so losing its claim in a crash is harmless: the claim does not
    wait for the flush. SendGrid keeps no keys: its claim does."""
    assert orch.executor().keyed_providers == ("stripe",)
    assert _claim_commit_mode(orch, _charge(orch, "commit-charge").id) == "off"
    assert _claim_commit_mode(orch, _send(orch, "commit-send").id) == "on"


def test_accepting_a_job_waits_for_the_flush(orch: Any) -> None:
    """charge() returns only once its insert is durable: the insert leaves the default. The
    application's connection keeps its own (tuple) row factory."""
    with psycopg.connect(orch.settings.database_url) as conn:
        job = orch.charge(1000, "usd", None, "pm_card_visa", "commit-insert", conn=conn)
        mode = conn.execute("SHOW synchronous_commit").fetchone()
        conn.rollback()
    assert job.idempotency_key == "commit-insert"
    assert mode == ("on",)


def test_a_replayed_settle_records_its_attempt_once(orch: Any, simulator: Any) -> None:
    """After a crash of PostgreSQL lost a claim, the next claim reuses the attempt number the
    first worker's settle already recorded: that settle must neither fail nor add a row."""
    job = _charge(orch, "commit-replay")
    assert str(orch.executor().run(job.id)) == "succeeded"
    (attempt,) = orch.attempts(job.id)
    replay = {
        "id": job.id,
        "attempt": attempt.attempt,
        "attempt_generation": attempt.key_generation,
        "provider_key": attempt.provider_key,
        "owner": "worker:replayed",
        "outcome": "succeeded",
        "error_class": None,
        "error_code": None,
        "http_status": 200,
        "provider_request_id": "req_replayed",
        "provider_ref": attempt.provider_ref,
        "duration_ms": 5,
        "started_at": datetime.now(UTC),
        "to_state": "succeeded",
        "delay_s": 0,
        "dispatching": False,
        "generation_step": 0,
        "reset_attempts": False,
        "provider_status": "succeeded",
        "error": None,
        "unknown_cause": None,
        "dead_reason": None,
        "reason": "replayed",
        "from_state": "running",
        "lease_owner": "worker:replayed",
    }
    assert orch.store.settle(replay) is None  # the job moved on: nothing to settle
    assert [a.provider_request_id for a in orch.attempts(job.id)] == [attempt.provider_request_id]
