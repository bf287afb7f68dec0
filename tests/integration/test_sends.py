"""Email sends end to end: real PostgreSQL, Redis, dramatiq worker, sendgrid SDK, simulator."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from orchestrator import ConfigError, IdempotencyConflict, JobState
from tests.conftest import count_jobs, orchestrator_like, wait_until

SENDER = "billing@example.com"
TEMPLATE = "d-" + "a" * 32


def _send(orch: Any, key: str, **kw: Any) -> Any:
    kw.setdefault("from_email", SENDER)
    to = kw.pop("to", "ana@example.com")
    subject = kw.pop("subject", "Your receipt")
    body = kw.pop("body", None if "template" in kw else "Thanks for your order.")
    return orch.send_email(to, subject, body, idempotency_key=key, **kw)


def _sendgrid_posts(simulator: Any) -> list[dict[str, Any]]:
    return [r for r in simulator.requests_log() if r["provider"] == "sendgrid"]


def test_send_is_delivered_once_with_the_job_id(orch: Any, worker: Any, simulator: Any) -> None:
    """A send becomes one succeeded job and one message carrying custom_args.orchestrator_job_id,
    named by SendGrid's X-Message-Id."""
    job = _send(orch, "receipt-1", to=["ana@example.com", "bo@example.com"])
    assert (job.kind, job.provider, job.state) == ("email", "sendgrid", JobState.PENDING)
    wait_until(lambda: orch.job(job.id).state is JobState.SUCCEEDED)
    (mail,) = simulator.mail()
    assert mail["custom_args"] == {"orchestrator_job_id": job.id}
    assert mail["personalizations"] == [
        {"to": [{"email": "ana@example.com"}, {"email": "bo@example.com"}]}
    ]
    assert mail["from"] == {"email": SENDER}
    assert mail["content"] == [{"type": "text/plain", "value": "Thanks for your order."}]
    assert orch.job(job.id).provider_ref == mail["message_id"]


def test_100_sends_with_cuts_after_delivery(orch: Any, worker: Any, simulator: Any) -> None:
    """15% of connections cut after delivery: no message is delivered twice (no send is ever
    resent), every send not cut is `succeeded`, every cut one is `dead` reason `ambiguous`."""
    simulator.set_faults("sendgrid", rate_cut_after_execute=0.15)
    jobs = [_send(orch, f"bulk-{i}", subject=f"Notice {i}") for i in range(100)]
    wait_until(lambda: count_jobs(orch, "succeeded") + count_jobs(orch, "dead") == 100, 60)
    posts = _sendgrid_posts(simulator)
    cuts = [r for r in posts if r["fault"] == "rate_cut_after_execute"]
    assert len(posts) == 100
    assert 5 <= len(cuts) <= 30
    delivered = Counter(m["custom_args"]["orchestrator_job_id"] for m in simulator.mail())
    assert delivered == Counter({job.id: 1 for job in jobs})
    message_ids = {
        m["custom_args"]["orchestrator_job_id"]: m["message_id"] for m in simulator.mail()
    }
    done = [orch.job(job.id) for job in jobs]
    succeeded = [j for j in done if j.state is JobState.SUCCEEDED]
    dead = [j for j in done if j.state is JobState.DEAD]
    assert len(succeeded) == 100 - len(cuts)
    assert len(dead) == len(cuts)
    assert all(j.provider_ref == message_ids[j.id] for j in succeeded)
    assert all(j.dead_reason == "ambiguous" and j.attempts == 1 for j in dead)


def test_not_executed_failures_retry(orch: Any, simulator: Any) -> None:
    """A 429 and a 503 (nothing delivered) are retried; the send then succeeds, delivered once."""
    job = _send(orch, "retry-1")
    executor = orch.executor()
    simulator.set_faults("sendgrid", rate_429=1.0)
    assert executor.run(job.id) is JobState.RETRYING
    simulator.set_faults("sendgrid", outage=True)
    wait_until(lambda: executor.run(job.id) is not None, timeout_s=5)
    assert orch.job(job.id).state is JobState.RETRYING
    simulator.set_faults("sendgrid")
    wait_until(lambda: executor.run(job.id) is JobState.SUCCEEDED, timeout_s=5)
    assert len(simulator.mail()) == 1
    assert [a.outcome for a in orch.attempts(job.id)] == [
        "not_executed",
        "not_executed",
        "succeeded",
    ]


def test_at_least_once_send_is_retried_after_a_cut(orch: Any, simulator: Any) -> None:
    """A send that opted into at-least-once delivery is retried after an ambiguous cut, and
    may then be delivered twice (the documented price of opting in)."""
    job = _send(orch, "alo-1", at_least_once=True)
    executor = orch.executor()
    simulator.set_faults("sendgrid", rate_cut_after_execute=1.0)
    assert executor.run(job.id) is JobState.RETRYING
    simulator.set_faults("sendgrid")
    wait_until(lambda: executor.run(job.id) is JobState.SUCCEEDED, timeout_s=5)
    assert [m["custom_args"]["orchestrator_job_id"] for m in simulator.mail()] == [job.id] * 2


def test_rejected_send_fails_after_one_call(orch: Any, simulator: Any) -> None:
    """A 401 (wrong API key) ends `failed` after one call: retrying can't fix configuration."""
    from orchestrator.executor import Executor
    from orchestrator.providers.sendgrid import SendGridProvider

    bad = SendGridProvider("SG.wrong", api_base=simulator.url, timeout_s=2)
    executor = Executor(orch.store, {"sendgrid": bad}, orch.dispatcher, orch.settings)
    job = _send(orch, "bad-key")
    assert executor.run(job.id) is JobState.FAILED
    done = orch.job(job.id)
    assert done.last_error_code == "http_401"
    assert len(_sendgrid_posts(simulator)) == 1
    assert simulator.mail() == []


def test_unconfigured_provider_is_dead_without_a_call(orch: Any, simulator: Any) -> None:
    """A worker without SendGrid credentials settles a send `dead` (provider_unconfigured)
    at once, with no attempt counted and nothing sent; it neither crashes nor retries."""
    from orchestrator.executor import Executor

    stripe_only = {"stripe": orch.executor().providers["stripe"]}
    executor = Executor(orch.store, stripe_only, orch.dispatcher, orch.settings)
    job = _send(orch, "no-provider")
    assert executor.run(job.id) is JobState.DEAD
    done = orch.job(job.id)
    assert done.dead_reason == "provider_unconfigured"
    assert done.attempts == 0
    assert simulator.requests_log() == []


def test_template_send_and_default_sender(orch: Any, simulator: Any) -> None:
    """A template send carries template_id and dynamic data; the sender defaults to
    ORCHESTRATOR_EMAIL_FROM, and with neither the call is refused."""
    with_default = orchestrator_like(orch, simulator.url, email_from="hello@example.com")
    job = with_default.send_email(
        "ana@example.com",
        None,
        template=TEMPLATE,
        template_data={"order": "42"},
        idempotency_key="tpl-1",
    )
    assert orch.executor().run(job.id) is JobState.SUCCEEDED
    (mail,) = simulator.mail()
    assert mail["template_id"] == TEMPLATE
    assert mail["from"] == {"email": "hello@example.com"}
    assert mail["personalizations"][0]["dynamic_template_data"] == {"order": "42"}
    with pytest.raises(ConfigError, match="ORCHESTRATOR_EMAIL_FROM"):
        orch.send_email("ana@example.com", "Hi", "x", idempotency_key="tpl-2")


def test_same_key_returns_the_same_send_or_conflicts(orch: Any) -> None:
    """Same key and request: the same job. Same key, another subject: IdempotencyConflict."""
    first = _send(orch, "dup-send")
    assert _send(orch, "dup-send").id == first.id
    with pytest.raises(IdempotencyConflict):
        _send(orch, "dup-send", subject="Another subject")
    assert count_jobs(orch) == 1


BAD_SENDS: list[tuple[str, dict[str, Any]]] = [
    ("no at sign", {"to": "ana.example.com"}),
    ("empty recipient list", {"to": []}),
    ("repeated recipient", {"to": ["a@example.com", "A@example.com"]}),
    ("recipient with a space", {"to": "ana @example.com"}),
    ("recipient too long", {"to": "a" * 250 + "@example.com"}),
    ("bad sender", {"from_email": "nobody"}),
    ("body and template", {"body": "x", "template": TEMPLATE}),
    ("neither body nor template", {"body": None}),
    ("missing subject with a body", {"subject": None}),
    ("multi-line subject", {"subject": "Hi\nBcc: x@example.com"}),
    ("bad template id", {"template": "welcome"}),
    ("template data without template", {"template_data": {"a": 1}}),
    ("template data not JSON", {"template": TEMPLATE, "template_data": {"a": object()}}),
    ("at_least_once not a bool", {"at_least_once": "yes"}),
    ("empty key", {"key": ""}),
]


@pytest.mark.parametrize(("case", "override"), BAD_SENDS, ids=[c for c, _ in BAD_SENDS])
def test_bad_send_raises_value_error_and_writes_nothing(
    orch: Any, case: str, override: dict[str, Any]
) -> None:
    """Each malformed send raises a ValueError subclass; the jobs table is unchanged."""
    key = override.pop("key", f"bad-{case}")
    with pytest.raises(ValueError):
        _send(orch, key, **override)
    assert count_jobs(orch) == 0


def test_sendgrid_outage_opens_its_breaker_and_charges_flow(
    orch: Any, worker: Any, simulator: Any
) -> None:
    """SendGrid down (503 on every call): every charge still succeeds, no send succeeds (they
    wait, retrying), SendGrid's breaker opens and Stripe's stays closed."""
    simulator.set_faults("sendgrid", outage=True)
    sends = [_send(orch, f"outage-send-{i}") for i in range(10)]
    charges = [
        orch.charge(500 + i, "usd", None, "pm_card_visa", f"outage-charge-{i}") for i in range(20)
    ]
    wait_until(lambda: all(orch.job(c.id).state is JobState.SUCCEEDED for c in charges))
    breaker = orch.executor().breaker
    wait_until(lambda: breaker.status("sendgrid").state == "open", timeout_s=10)
    assert breaker.status("stripe").state == "closed"
    states = {orch.job(s.id).state for s in sends}
    assert states <= {JobState.PENDING, JobState.RUNNING, JobState.RETRYING}
    assert simulator.mail() == []
    posts = _sendgrid_posts(simulator)
    assert posts and all(r["fault"] == "outage" for r in posts)


@pytest.mark.parametrize("sendgrid_configured", [True, False])
def test_replaying_an_ambiguous_send_needs_accept_duplicate_risk(
    orch: Any, simulator: Any, sendgrid_configured: bool
) -> None:
    """A send cut after delivery is dead/ambiguous: a replay refuses it (it may be delivered
    twice) whether or not the replaying process has SENDGRID_API_KEY; with
    accept_duplicate_risk it goes back to pending, and the audit says so."""
    from orchestrator.ops.replay import ReplayAction
    from orchestrator.ops.service import Operations

    simulator.set_faults("sendgrid", rate_cut_after_execute=1.0)
    job = _send(orch, f"ambiguous-replay-{sendgrid_configured}")
    assert orch.executor().run(job.id) is JobState.DEAD
    simulator.set_faults("sendgrid")
    replayer = (
        orch
        if sendgrid_configured
        else orchestrator_like(orch, simulator.url, sendgrid_api_key=None)
    )
    ops = Operations.from_orchestrator(replayer)
    refused = ops.replay(job.id, "cli:ana")
    assert refused.action is ReplayAction.SKIP and "duplicate-risk" in refused.reason
    assert orch.job(job.id).state is JobState.DEAD
    accepted = ops.replay(job.id, "cli:ana", accept_duplicate_risk=True)
    assert accepted.action is ReplayAction.REPLAY
    assert orch.job(job.id).state is JobState.PENDING
    (action,) = ops.show(job.id).actions
    assert action["details"]["accept_duplicate_risk"] is True
