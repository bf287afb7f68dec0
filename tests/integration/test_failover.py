"""A third-party provider end to end, and failover of a charge to its second provider: only
when the first provably never executed it (connection refused, 429, the breaker denied the
call), never after an ambiguous outcome; the job's attempts name both providers.

The second provider here is Stripe, reached through the real SDK over HTTP (the simulator);
the first is a provider package installed through the ``orchestrator.providers`` entry-point
group (tests/thirdparty.py), or Stripe itself refused by a closed port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from orchestrator import JobState
from orchestrator.breaker import Permit, Signal
from orchestrator.errors import InvalidOperation
from orchestrator.executor import Executor
from orchestrator.models import AttemptOutcome
from orchestrator.providers.base import NO_RESPONSE, Outcome
from tests import thirdparty
from tests.conftest import cli_main, settings_like

TO_STRIPE = {"provider": "stripe", "payment_method": "pm_card_visa"}


@pytest.fixture
def acme(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    module_iter = thirdparty.installed(tmp_path, monkeypatch)
    module = next(module_iter)
    module.SCRIPT.clear()
    module.CALLS.clear()
    yield module
    next(module_iter, None)


class DenyOne:
    """A breaker that denies one provider's calls (open) and allows every other."""

    def __init__(self, denied: str) -> None:
        self.denied = denied

    def acquire(self, provider: str) -> Permit:
        verdict = "open" if provider == self.denied else "allow"
        return Permit(provider, verdict, 30.0, "open", "t", "test")

    def record(self, permit: Permit, signal: Signal, retry_after_s: float | None = None) -> None:
        pass


def _executor(orch: Any, simulator: Any, breaker: Any = None, **extra: Any) -> Executor:
    settings = settings_like(orch, simulator.url, **extra) if extra else orch.settings
    from orchestrator.providers.registry import build_providers

    kwargs = {"breaker": breaker} if breaker is not None else {}
    return Executor(orch.store, build_providers(settings), orch.dispatcher, settings, **kwargs)


def test_an_installed_provider_charges_and_is_listed(
    orch: Any, simulator: Any, acme: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    job = orch.charge(700, "eur", None, "acme_pm_1", "acme-1", provider="acme")
    assert job.provider == "acme"
    assert _executor(orch, simulator).run(job.id) is JobState.SUCCEEDED
    done = orch.job(job.id)
    assert done.provider_ref == f"acme_{job.id}"
    assert [c[2] for c in acme.CALLS] == ["acme_pm_1"]
    assert simulator.requests_log() == []
    main = cli_main(orch, monkeypatch)
    assert main(["jobs", "list", "--provider", "acme", "--json"]) == 0
    assert job.id in capsys.readouterr().out
    # Refunds go to the charge's provider, which does not do them.
    with pytest.raises(InvalidOperation, match="'acme' does not execute refund jobs"):
        orch.refund(job.id, idempotency_key="acme-refund-1")


def test_a_refused_connection_fails_over_and_the_job_records_both_attempts(
    orch: Any, simulator: Any, acme: ModuleType
) -> None:
    acme.SCRIPT.append(
        Outcome(
            AttemptOutcome.NOT_EXECUTED,
            error_class="ConnectionRefusedError",
            error_code="connect_failed",
        )
    )
    job = orch.charge(1200, "usd", None, "acme_pm_1", "fo-1", provider="acme", failover=TO_STRIPE)
    executor = _executor(orch, simulator)
    assert executor.run(job.id) is JobState.RETRYING
    moved = orch.job(job.id)
    assert (moved.provider, moved.payment_method, moved.customer) == (
        "stripe",
        "pm_card_visa",
        None,
    )
    assert "failed over from acme to stripe: connect_failed" in orch.transitions(job.id)[-1].reason
    assert executor.run(job.id) is JobState.SUCCEEDED
    done = orch.job(job.id)
    assert done.provider_ref and done.provider_ref.startswith("pi_")
    assert [(a.provider, a.outcome) for a in orch.attempts(job.id)] == [
        ("acme", "not_executed"),
        ("stripe", "succeeded"),
    ]
    intents = [r for r in simulator.requests_log() if r["path"] == "/v1/payment_intents"]
    assert len(intents) == 1


def test_a_429_fails_over_too(orch: Any, simulator: Any, acme: ModuleType) -> None:
    acme.SCRIPT.append(
        Outcome(AttemptOutcome.NOT_EXECUTED, error_code="rate_limited", http_status=429)
    )
    job = orch.charge(900, "usd", None, "acme_pm", "fo-429", provider="acme", failover=TO_STRIPE)
    executor = _executor(orch, simulator)
    assert executor.run(job.id) is JobState.RETRYING
    assert executor.run(job.id) is JobState.SUCCEEDED
    assert orch.job(job.id).provider == "stripe"


@pytest.mark.parametrize(
    "outcome",
    [
        Outcome(AttemptOutcome.AMBIGUOUS, error_code="read_timeout", unknown_cause=NO_RESPONSE),
        Outcome(AttemptOutcome.AMBIGUOUS, http_status=502, unknown_cause="server_error"),
        # Not executed, but not provably unseen by the provider's money path: stays.
        Outcome(AttemptOutcome.NOT_EXECUTED, error_code="lock_timeout", http_status=409),
    ],
    ids=["timeout", "5xx", "409"],
)
def test_never_after_an_ambiguous_outcome(
    orch: Any, simulator: Any, acme: ModuleType, outcome: Outcome
) -> None:
    acme.SCRIPT.append(outcome)
    job = orch.charge(900, "usd", None, "acme_pm", "fo-no", provider="acme", failover=TO_STRIPE)
    _executor(orch, simulator).run(job.id)
    after = orch.job(job.id)
    assert after.provider == "acme"
    assert after.payment_method == "acme_pm"
    assert simulator.requests_log() == []


def test_the_breaker_denying_the_first_provider_fails_over_without_using_an_attempt(
    orch: Any, simulator: Any, acme: ModuleType
) -> None:
    job = orch.charge(800, "usd", None, "acme_pm", "fo-open", provider="acme", failover=TO_STRIPE)
    executor = _executor(orch, simulator, breaker=DenyOne("acme"))
    assert executor.run(job.id) is JobState.RETRYING
    moved = orch.job(job.id)
    assert (moved.provider, moved.attempts) == ("stripe", 0)
    assert acme.CALLS == []
    assert executor.run(job.id) is JobState.SUCCEEDED
    assert [a.provider for a in orch.attempts(job.id)] == ["stripe"]


def test_a_job_fails_over_once_and_never_back(orch: Any, simulator: Any, acme: ModuleType) -> None:
    """Stripe refused (a closed port) after failing over from acme: the job waits for Stripe,
    it does not go back to acme."""
    acme.SCRIPT.append(Outcome(AttemptOutcome.NOT_EXECUTED, error_code="connect_failed"))
    job = orch.charge(800, "usd", None, "acme_pm", "fo-once", provider="acme", failover=TO_STRIPE)
    executor = _executor(orch, simulator, stripe_api_base="http://127.0.0.1:9")
    assert executor.run(job.id) is JobState.RETRYING
    assert executor.run(job.id) is JobState.RETRYING
    after = orch.job(job.id)
    assert after.provider == "stripe"
    assert [(a.provider, a.error_code) for a in orch.attempts(job.id)] == [
        ("acme", "connect_failed"),
        ("stripe", "connect_failed"),
    ]
    assert len(acme.CALLS) == 1


def test_stripe_refused_fails_over_to_the_installed_provider(
    orch: Any, simulator: Any, acme: ModuleType
) -> None:
    """The real Stripe SDK against a closed port: connection refused is proof nothing was
    sent, so the charge moves to its failover and succeeds there."""
    job = orch.charge(
        650,
        "usd",
        "cus_1",
        "pm_card_visa",
        "fo-stripe",
        failover={"provider": "acme", "payment_method": "acme_pm_9", "customer": "acme_cus_9"},
    )
    executor = _executor(orch, simulator, stripe_api_base="http://127.0.0.1:9")
    assert executor.run(job.id) is JobState.RETRYING
    moved = orch.job(job.id)
    assert (moved.provider, moved.customer, moved.payment_method) == (
        "acme",
        "acme_cus_9",
        "acme_pm_9",
    )
    assert executor.run(job.id) is JobState.SUCCEEDED
    assert [a.provider for a in orch.attempts(job.id)] == ["stripe", "acme"]
