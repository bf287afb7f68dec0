"""The Stripe provider's HTTP client reads the proxy environment once, when it is built:
a proxy set then is used (unless NO_PROXY names the host), one set later is not."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from orchestrator.models import AttemptOutcome
from orchestrator.providers.base import NO_RESPONSE
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


# -- network faults through the provider's transport (real SDK, real HTTP) -------------------


def _fast_provider(api_base: str) -> StripeProvider:
    return StripeProvider(
        STRIPE_TEST_KEY, api_base=api_base, connect_timeout_s=1.0, read_timeout_s=0.5
    )


def test_a_read_timeout_is_ambiguous(orch: Any, simulator: Any, no_proxy_env: Any) -> None:
    """The request went out and no answer came within the read timeout: maybe executed."""
    simulator.set_faults("stripe", rate_timeout=1.0, timeout_sleep_s=2.0)
    outcome = _call(orch, _fast_provider(simulator.url), "read-timeout")
    assert (outcome.kind, outcome.error_code, outcome.unknown_cause) == (
        AttemptOutcome.AMBIGUOUS,
        "read_timeout",
        NO_RESPONSE,
    )


def test_a_cut_after_executing_is_ambiguous(orch: Any, simulator: Any, no_proxy_env: Any) -> None:
    """The simulator executed the charge and closed the connection: no answer, one intent."""
    simulator.set_faults("stripe", rate_cut_after_execute=1.0)
    outcome = _call(orch, _fast_provider(simulator.url), "cut-after")
    assert (outcome.kind, outcome.error_code, outcome.unknown_cause) == (
        AttemptOutcome.AMBIGUOUS,
        "no_response",
        NO_RESPONSE,
    )
    assert len(simulator.payment_intents()) == 1


def test_a_refused_connection_is_not_executed(orch: Any, no_proxy_env: Any) -> None:
    """Nothing listens on the port: the request never left, so a retry is safe."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    outcome = _call(orch, _fast_provider(f"http://127.0.0.1:{port}"), "refused")
    assert (outcome.kind, outcome.error_code) == (AttemptOutcome.NOT_EXECUTED, "connect_failed")


def test_connections_are_reused(orch: Any, simulator: Any, no_proxy_env: Any) -> None:
    """Calls from one thread after another go over the pooled keep-alive connection."""
    provider = _fast_provider(simulator.url)
    for i in range(5):
        assert _call(orch, provider, f"reuse-{i}").kind is AttemptOutcome.SUCCEEDED
    pools = provider._client._requestor._client._pool.pools  # type: ignore[attr-defined]
    keys = pools.keys()  # urllib3's container has no iterator of its own
    (pool,) = [pools[key] for key in keys]
    assert pool.num_connections == 1


def test_proxy_credentials_are_sent(orch: Any, simulator: Any, no_proxy_env: Any) -> None:
    """A proxy URL with a user and password gets Proxy-Authorization on every request."""
    import base64

    from tests.json_server import json_server

    body = b'{"id": "pi_via_proxy", "object": "payment_intent", "status": "succeeded"}'
    with json_server(body) as (proxy_url, seen):
        no_proxy_env.setenv("HTTP_PROXY", proxy_url.replace("http://", "http://ops:s%3Acret@"))
        outcome = _call(orch, _provider(simulator), "proxy-auth")
    assert (outcome.kind, outcome.provider_ref) == (AttemptOutcome.SUCCEEDED, "pi_via_proxy")
    [(path, headers)] = seen
    assert path == f"{simulator.url}/v1/payment_intents"
    assert headers["proxy-authorization"] == "Basic " + base64.b64encode(b"ops:s:cret").decode()
