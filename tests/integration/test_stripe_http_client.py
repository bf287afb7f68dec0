"""The Stripe provider's HTTP client reads the proxy environment once, when it is built:
a proxy set then is used (unless NO_PROXY names the host), one set later is not."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.models import AttemptOutcome
from orchestrator.providers.stripe import StripeProvider
from tests.conftest import STRIPE_TEST_KEY

DEAD_PROXY = "http://127.0.0.1:1"  # nothing listens: a call through it cannot connect


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


def _provider(simulator: Any) -> StripeProvider:
    return StripeProvider(
        STRIPE_TEST_KEY, api_base=simulator.url, connect_timeout_s=2.0, read_timeout_s=5.0
    )


def _call(orch: Any, provider: StripeProvider, key: str) -> Any:
    job = orch.charge(1000, "usd", None, "pm_card_visa", key)
    return provider.execute(job, f"orch-{job.id}-g0")


def test_a_proxy_set_at_start_is_used(orch: Any, simulator: Any, no_proxy_env: Any) -> None:
    no_proxy_env.setenv("HTTP_PROXY", DEAD_PROXY)
    outcome = _call(orch, _provider(simulator), "proxy-at-start")
    assert (outcome.kind, outcome.error_code) == (AttemptOutcome.NOT_EXECUTED, "connect_failed")
    assert simulator.payment_intents() == []


def test_no_proxy_at_start_bypasses_it(orch: Any, simulator: Any, no_proxy_env: Any) -> None:
    no_proxy_env.setenv("HTTP_PROXY", DEAD_PROXY)
    no_proxy_env.setenv("NO_PROXY", "127.0.0.1")
    assert _call(orch, _provider(simulator), "proxy-bypassed").kind is AttemptOutcome.SUCCEEDED


def test_the_environment_is_not_read_per_call(orch: Any, simulator: Any, no_proxy_env: Any) -> None:
    provider = _provider(simulator)
    no_proxy_env.setenv("HTTP_PROXY", DEAD_PROXY)
    assert _call(orch, provider, "proxy-set-later").kind is AttemptOutcome.SUCCEEDED
