"""The ledger never silently disagrees with the provider: ``orchestrator audit`` compares jobs
with Stripe's own lists (the simulator, through the real SDK), webhooks and audits record drift
in ``ledger_drift``, the clock audits on a schedule, and /metrics, the ops API and the
dashboard show what was found. Real PostgreSQL and Redis."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import psycopg
import pytest
import requests

from orchestrator.maintenance.clock import Clock
from orchestrator.models import JobState
from orchestrator.providers.stripe.webhooks import parse_event
from orchestrator.webhooks.ingest import ingest
from orchestrator.webhooks.process import process_event
from tests.conftest import cli_main, create_intent_elsewhere, orchestrator_like, serve, truncate

TOKEN = "ledger-test-token-" + uuid.uuid4().hex
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(autouse=True)
def _clean_ledger_tables(orch: Any) -> None:
    truncate(orch, "ledger_drift", "ledger_audits")


@pytest.fixture
def cli(orch: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``orchestrator ...`` in-process, configured like the session's Orchestrator."""
    return cli_main(orch, monkeypatch)


def _audit(cli: Any, capsys: pytest.CaptureFixture[str], since: str = "1h") -> tuple[int, Any]:
    code = cli(["audit", "--since", since, "--json"])
    return code, json.loads(capsys.readouterr().out)


def _sql(orch: Any, statement: str, *args: Any) -> Any:
    with psycopg.connect(orch.settings.database_url, autocommit=True) as conn:
        cursor = conn.execute(statement, args)  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description else []


def _drift_rows(orch: Any) -> list[tuple[str, str | None, str | None, str]]:
    rows = _sql(orch, "SELECT kind, job_id, provider_ref, source FROM ledger_drift ORDER BY id")
    return [tuple(r) for r in rows]


def _charged(orch: Any, key: str, amount: int = 1000, **kw: Any) -> Any:
    """A charge run to the end by the executor."""
    pm = kw.pop("pm", "pm_card_visa")
    job = orch.charge(amount, "usd", "cus_ledger", pm, key, **kw)
    orch.executor().run(job.id)
    return orch.job(job.id)


def _intent_made_elsewhere(
    simulator: Any, job: Any, *, amount: int | None = None, generation: int = 1
) -> dict[str, Any]:
    """A successful PaymentIntent naming ``job``, made straight at the simulator (in the job's
    Connect account, if any), as if by an attempt whose answer the ledger never saw."""
    intent = create_intent_elsewhere(
        simulator,
        job,
        amount=amount,
        generation=generation,
        stripe_account=job.params.get("stripe_account"),
    )
    assert intent.status == "succeeded"
    return dict(intent.to_dict())


def _deliver_success_event(orch: Any, intent: dict[str, Any]) -> Any:
    """A verified payment_intent.succeeded for ``intent``, ingested and processed at once;
    returns what processing it gave."""
    event = {
        "id": f"evt_{uuid.uuid4().hex[:24]}",
        "object": "event",
        "type": "payment_intent.succeeded",
        "created": int(time.time()),
        "data": {"object": intent},
    }
    stored = ingest(orch, "stripe", parse_event(json.dumps(event).encode()))
    assert stored.row_id is not None
    return process_event(orch, stored.row_id)


def test_a_clean_run_audits_clean(
    orch: Any, simulator: Any, cli: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """A few charges (one declined, one refunded, one on a Connect account): the audit lists
    every object, finds nothing, exits 0 and records nothing but its own run."""
    jobs = [_charged(orch, f"clean-{i}", 1000 + i) for i in range(3)]
    jobs.append(_charged(orch, "clean-declined", pm="pm_card_chargeDeclined"))
    jobs.append(_charged(orch, "clean-connect", stripe_account="acct_1LedgerSeller"))
    refund = orch.refund(jobs[0].id, 400, idempotency_key="clean-refund")
    assert orch.executor().run(refund.id) is JobState.SUCCEEDED
    assert [j.state for j in jobs] == [JobState.SUCCEEDED] * 3 + [
        JobState.FAILED,
        JobState.SUCCEEDED,
    ]
    code, report = _audit(cli, capsys)
    assert (code, report["drift"]) == (0, [])
    # 5 intents (the declined one too) and 1 refund; 5 charges and 1 refund in the window.
    assert report["checked"] == {"objects": 6, "jobs": 6}
    assert _drift_rows(orch) == []
    ((ran_by, drift_count),) = _sql(orch, "SELECT ran_by, drift_count FROM ledger_audits")
    assert (ran_by, drift_count) == ("cli", 0)
    assert cli(["audit", "--since", "1h"]) == 0
    assert capsys.readouterr().out.strip().endswith("no drift")


@pytest.mark.parametrize("state", ["failed", "dead"])
def test_a_success_for_a_failed_or_dead_job_is_drift(
    orch: Any, simulator: Any, cli: Any, capsys: pytest.CaptureFixture[str], state: str
) -> None:
    """The provider holds a successful intent for a job the ledger says failed (or dead):
    success_without_succeeded_job, exit 1, recorded once however often the audit runs."""
    if state == "failed":
        job = _charged(orch, "lost-failed", pm="pm_card_chargeDeclined")
        assert job.state is JobState.FAILED
    else:
        job = orch.charge(1000, "usd", "cus_ledger", "pm_card_visa", "lost-dead")
        _sql(
            orch,
            "UPDATE jobs SET state = 'dead', dead_reason = 'attempts_exhausted', "
            "changed_by = 'test', change_reason = 'made dead by the test' WHERE id = %s",
            job.id,
        )
    pi = _intent_made_elsewhere(simulator, job)
    code, report = _audit(cli, capsys)
    assert code == 1
    assert [(d["job_id"], d["kind"], d["provider_ref"]) for d in report["drift"]] == [
        (job.id, "success_without_succeeded_job", pi["id"])
    ]
    assert f"the job is {state}" in report["drift"][0]["detail"]
    assert cli(["audit", "--since", "2h", "--json"]) == 1
    capsys.readouterr()
    assert _drift_rows(orch) == [("success_without_succeeded_job", job.id, pi["id"], "audit")]


def test_a_success_in_a_connect_account_is_found_there(
    orch: Any, simulator: Any, cli: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """The platform account never lists a Connect account's objects: the audit lists each
    account the window's jobs name, so a duplicate made on the seller's account is found."""
    job = _charged(orch, "connect-dup", stripe_account="acct_1LedgerSeller2")
    assert job.state is JobState.SUCCEEDED
    pi = _intent_made_elsewhere(simulator, job)
    code, report = _audit(cli, capsys)
    assert code == 1
    assert [(d["kind"], d["provider_ref"]) for d in report["drift"]] == [
        ("duplicate_success", pi["id"])
    ]


def test_a_succeeded_job_without_its_intent_is_drift(
    orch: Any, cli: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """A job the ledger says succeeded with an intent the provider does not hold:
    succeeded_without_object, exit 1."""
    ((job_id,),) = _sql(
        orch,
        """
        INSERT INTO jobs (kind, provider, state, idempotency_key, fingerprint, amount, currency,
                          customer, payment_method, max_attempts, deadline_at, provider_ref,
                          provider_status, changed_by, change_reason)
        VALUES ('charge', 'stripe', 'succeeded', 'ghost-1', repeat('c', 64), 1200, 'usd',
                'cus_ledger', 'pm_card_visa', 3, now() + interval '1 hour', 'pi_ghost',
                'succeeded', 'test', 'succeeded without an intent')
        RETURNING id::text
        """,
    )
    code, report = _audit(cli, capsys)
    assert code == 1
    assert [(d["job_id"], d["kind"], d["provider_ref"]) for d in report["drift"]] == [
        (job_id, "succeeded_without_object", "pi_ghost")
    ]


def test_two_successful_intents_for_one_job_are_a_duplicate(
    orch: Any, simulator: Any, cli: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """A succeeded job with a second successful intent: duplicate_success names the one the
    job does not refer to."""
    job = _charged(orch, "twice")
    second = _intent_made_elsewhere(simulator, job)
    code, report = _audit(cli, capsys)
    assert code == 1
    assert [(d["job_id"], d["kind"], d["provider_ref"]) for d in report["drift"]] == [
        (job.id, "duplicate_success", second["id"])
    ]
    assert job.provider_ref in report["drift"][0]["detail"]


def test_an_amount_that_differs_from_the_job_is_drift(
    orch: Any, cli: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """The intent moved another amount than the job records: amount_mismatch."""
    job = _charged(orch, "mismatch", 1000)
    _sql(orch, "UPDATE jobs SET amount = 1500 WHERE id = %s", job.id)
    code, report = _audit(cli, capsys)
    assert code == 1
    assert [(d["job_id"], d["kind"], d["provider_ref"]) for d in report["drift"]] == [
        (job.id, "amount_mismatch", job.provider_ref)
    ]
    assert "1000 usd, the job 1500 usd" in report["drift"][0]["detail"]


def test_a_bad_duration_is_a_usage_error(cli: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """--since wants a number and a unit: anything else exits 2 with one line."""
    assert cli(["audit", "--since", "yesterday"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "duration" in err


def test_a_success_webhook_for_a_failed_charge_is_recorded_as_drift(
    orch: Any, simulator: Any, cli: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """A verified payment_intent.succeeded for a failed job: the job stays failed, the drift
    is recorded (source webhook) and listed by ``drift list``; a later audit finding the same
    intent adds no second row."""
    job = _charged(orch, "wh-ledger", pm="pm_card_chargeDeclined")
    assert job.state is JobState.FAILED
    pi = _intent_made_elsewhere(simulator, job)
    _sql(orch, "UPDATE jobs SET provider_ref = NULL WHERE id = %s", job.id)
    result = _deliver_success_event(orch, pi)
    assert result is not None and (result.note or "").startswith("drift:")
    assert orch.job(job.id).state is JobState.FAILED
    expected = [("success_without_succeeded_job", job.id, pi["id"], "webhook")]
    assert _drift_rows(orch) == expected
    assert cli(["drift", "list", "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert (listed["kind"], listed["job_id"], listed["source"]) == (
        "success_without_succeeded_job",
        job.id,
        "webhook",
    )
    assert cli(["audit", "--since", "1h"]) == 1
    assert _drift_rows(orch) == expected


def test_a_second_success_webhook_for_a_succeeded_charge_is_a_duplicate(
    orch: Any, simulator: Any
) -> None:
    """A success event for another intent than the one a succeeded job refers to: recorded as
    duplicate_success, the job unchanged."""
    job = _charged(orch, "wh-dup")
    pi = _intent_made_elsewhere(simulator, job)
    _deliver_success_event(orch, pi)
    assert orch.job(job.id).provider_ref == job.provider_ref
    assert _drift_rows(orch) == [("duplicate_success", job.id, pi["id"], "webhook")]


def test_the_clock_audits_once_per_interval(orch: Any, simulator: Any) -> None:
    """With ORCHESTRATOR_AUDIT_INTERVAL_S set, the clock's first pass audits (the last two
    days) and records drift; the next passes within the interval do not audit again."""
    hourly = orchestrator_like(orch, simulator.url, audit_interval_s=3600)
    job = _charged(orch, "clock-lost", pm="pm_card_chargeDeclined")
    pi = _intent_made_elsewhere(simulator, job)
    clock = Clock(hourly)
    assert clock.run_once(dry_run=True)["ledger_audits"] == 1
    assert clock.run_once()["ledger_audits"] == 1
    assert _drift_rows(orch) == [("success_without_succeeded_job", job.id, pi["id"], "audit")]
    assert clock.run_once()["ledger_audits"] == 0
    assert clock.run_once(dry_run=True)["ledger_audits"] == 0
    rows = _sql(
        orch,
        "SELECT ran_by, drift_count, error, started_at - since > interval '47 hours' "
        "FROM ledger_audits",
    )
    assert [tuple(r) for r in rows] == [("clock", 1, None, True)]
    # Disabled (the suite's default): never.
    assert Clock(orch).run_once()["ledger_audits"] == 0


def test_an_audit_stripe_could_not_answer_is_recorded_and_tried_again(
    orch: Any, simulator: Any, cli: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """During a Stripe outage the audit fails (the CLI exits 1 saying why; the clock's run
    is recorded with its error), and the clock tries again after the retry delay, not a whole
    interval later."""
    daily = orchestrator_like(orch, simulator.url, audit_interval_s=86400)
    simulator.set_faults("stripe", outage=True)
    assert cli(["audit", "--since", "1h"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "orchestrator: stripe listing failed: APIError"
    clock = Clock(daily)
    assert clock.run_once()["ledger_audits"] == 0
    simulator.set_faults("stripe")
    assert clock.run_once()["ledger_audits"] == 0  # within the retry delay
    errors = _sql(orch, "SELECT ran_by, error IS NOT NULL FROM ledger_audits ORDER BY id")
    assert [tuple(r) for r in errors] == [("cli", True), ("clock", True)]
    _sql(orch, "UPDATE ledger_audits SET started_at = started_at - interval '901 seconds'")
    assert clock.run_once()["ledger_audits"] == 1
    assert clock.run_once()["ledger_audits"] == 0


def test_metrics_the_ops_api_and_the_dashboard_show_drift(
    orch: Any, simulator: Any, cli: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """/metrics has orchestrator_ledger_drift by kind (0 for kinds never found),
    /ops/api/drift the counts and newest rows, the dashboard a drift section."""
    from orchestrator.web import create_app

    job = _charged(orch, "shown")
    second = _intent_made_elsewhere(simulator, job)
    assert cli(["audit", "--since", "1h"]) == 1
    capsys.readouterr()
    with serve(create_app(orchestrator_like(orch, simulator.url, ops_token=TOKEN))) as url:
        text = requests.get(url + "/metrics", timeout=5).text
        api = requests.get(url + "/ops/api/drift", headers=AUTH, timeout=5).json()
        session = requests.Session()
        session.post(url + "/ops/login", data={"token": TOKEN}, timeout=5)
        page = session.get(url + "/ops/", timeout=5).text
    assert 'orchestrator_ledger_drift{kind="duplicate_success"} 1.0' in text
    assert 'orchestrator_ledger_drift{kind="amount_mismatch"} 0.0' in text
    assert api["counts"]["duplicate_success"] == 1
    assert [(d["kind"], d["provider_ref"], d["source"]) for d in api["drift"]] == [
        ("duplicate_success", second["id"], "audit")
    ]
    assert '<td id="drift-duplicate_success">1</td>' in page
    assert second["id"] in page
