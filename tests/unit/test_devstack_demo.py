"""The demo's arithmetic and the dev stack's environment, without any IO."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.dev.demo import _ledger_mismatches, objects_per_job, percentile
from orchestrator.dev.devstack import DEV_STRIPE_KEY, read_procfile, stack_environment


def test_percentile_is_nearest_rank() -> None:
    """p50 and p99 pick observed values by nearest rank; no values gives None."""
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([3.0], 99) == 3.0
    assert percentile([], 50) is None


def test_objects_per_job_counts_by_job_id() -> None:
    """Provider objects are grouped by the job id they carry; objects without one are
    ignored, so a second object for one job shows as a count of 2."""
    objects: list[dict[str, Any]] = [
        {"metadata": {"orchestrator_job_id": "a"}},
        {"metadata": {"orchestrator_job_id": "a"}},
        {"metadata": {"orchestrator_job_id": "b"}},
        {"metadata": {}},
        {"custom_args": {"orchestrator_job_id": "c"}},
    ]
    assert objects_per_job(objects, "metadata") == {"a": 2, "b": 1}
    assert objects_per_job(objects, "custom_args") == {"c": 1}


def test_ledger_mismatch_when_state_and_provider_disagree() -> None:
    """A final charge is consistent when it is succeeded exactly when a succeeded
    PaymentIntent of its amount exists; emails and unsettled jobs are not judged."""
    intents: list[dict[str, Any]] = [
        {"metadata": {"orchestrator_job_id": "paid"}, "status": "succeeded", "amount": 100},
        {
            "metadata": {"orchestrator_job_id": "declined"},
            "status": "requires_payment_method",
            "amount": 100,
        },
        {"metadata": {"orchestrator_job_id": "lost"}, "status": "succeeded", "amount": 100},
        {"metadata": {"orchestrator_job_id": "wrong"}, "status": "succeeded", "amount": 999},
    ]
    jobs: list[dict[str, Any]] = [
        {"id": "paid", "kind": "charge", "state": "succeeded", "amount": 100},
        {"id": "declined", "kind": "charge", "state": "failed", "amount": 100},
        {"id": "lost", "kind": "charge", "state": "dead", "amount": 100},  # paid, not recorded
        {"id": "wrong", "kind": "charge", "state": "succeeded", "amount": 100},  # amount differs
        {"id": "ghost", "kind": "charge", "state": "succeeded", "amount": 100},  # nothing there
        {"id": "mail", "kind": "email", "state": "succeeded", "amount": None},
        {"id": "later", "kind": "charge", "state": "retrying", "amount": 100},
    ]
    assert _ledger_mismatches(jobs, intents) == 3


def test_read_procfile(tmp_path: Path) -> None:
    """Procfile lines become {name: command}; comments and blank lines are skipped."""
    procfile = tmp_path / "Procfile"
    procfile.write_text("# processes\nweb: orchestrator web --port ${PORT:-8000}\n\nclock: x\n")
    assert read_procfile(procfile) == {"web": "orchestrator web --port ${PORT:-8000}", "clock": "x"}


def test_stack_environment_never_points_at_real_providers() -> None:
    """Whatever the surrounding environment holds, stack processes call the simulator with
    test keys; local tunables are defaults the environment may override."""
    base = {
        "STRIPE_API_KEY": "sk_live_realRealReal",
        "STRIPE_API_BASE": "https://api.stripe.com",
        "ORCHESTRATOR_SEARCH_GRACE_S": "7",
        "PATH": "/usr/bin",
        "RAZORPAY_API_BASE": "https://api.razorpay.com",
        "AWS_REGION": "eu-west-1",
        "ORCHESTRATOR_EMAIL_PROVIDER": "ses",
    }
    env = stack_environment(base, "postgresql://db", "redis://r", "http://127.0.0.1:1")
    assert env["STRIPE_API_KEY"] == DEV_STRIPE_KEY
    assert env["RAZORPAY_API_BASE"] == "http://127.0.0.1:1/razorpay"
    assert "AWS_REGION" not in env and env["ORCHESTRATOR_EMAIL_PROVIDER"] == "sendgrid"
    assert env["STRIPE_API_BASE"] == env["SENDGRID_API_BASE"] == "http://127.0.0.1:1"
    assert env["ORCHESTRATOR_SEARCH_GRACE_S"] == "7"
    assert env["ORCHESTRATOR_PROCESSING_POLL_S"] == "1"
    assert (env["DATABASE_URL"], env["REDIS_URL"]) == ("postgresql://db", "redis://r")
    assert env["PATH"].endswith("/usr/bin")
