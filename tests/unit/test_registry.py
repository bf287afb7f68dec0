"""The provider registry: built-ins by name, third-party providers from the
``orchestrator.providers`` entry-point group, and everything that takes a provider name
(charge and email requests, ORCHESTRATOR_ROUTES, the breaker's metrics) taking any of them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from orchestrator.app import requests as rq
from orchestrator.config import load_settings, parse_routes
from orchestrator.errors import ConfigError, ValidationError
from orchestrator.models import JobKind
from orchestrator.providers import registry
from tests import thirdparty

BASE = {"database_url": "postgresql:///x", "redis_url": "redis://127.0.0.1:6379/0"}


@pytest.fixture
def acme(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    yield from thirdparty.installed(tmp_path, monkeypatch)


def _charge(**extra: Any) -> dict[str, Any]:
    return rq.charge_row(1000, "usd", None, "pm_card_visa", "key-1", **extra)


def test_built_ins_are_listed_first_and_know_their_job_kinds() -> None:
    names = registry.provider_names()
    assert names[:2] == ("stripe", "sendgrid")
    assert registry.spec("stripe").executes(JobKind.REFUND)
    assert not registry.spec("sendgrid").executes(JobKind.CHARGE)
    assert registry.spec("sendgrid").executes(JobKind.EMAIL)


def test_an_unknown_provider_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ValidationError, match=r"'paypal' is not registered \(known: stripe"):
        registry.spec("paypal")
    with pytest.raises(ValidationError, match="not registered"):
        _charge(provider="paypal")
    with pytest.raises(ValidationError, match="'sendgrid' does not execute charge jobs"):
        _charge(provider="sendgrid")


def test_an_installed_provider_is_registered_by_its_entry_point(acme: ModuleType) -> None:
    assert registry.provider_names()[-1] == "acme"
    assert registry.spec("acme") is acme.SPEC
    row = _charge(provider="acme", provider_options={"acme_descriptor": "ACME*SHOP"})
    assert row["provider"] == "acme"
    assert row["params"]["acme_descriptor"] == "ACME*SHOP"
    # The provider checks its own options: Stripe's are not its.
    with pytest.raises(ValidationError, match="acme does not take return_url"):
        _charge(provider="acme", return_url="https://shop.example/back")
    # The same request to another provider is another request.
    assert row["fingerprint"] != _charge()["fingerprint"]


def test_a_stripe_charge_keeps_the_fingerprint_it_always_had() -> None:
    assert _charge()["fingerprint"] == _charge(provider="stripe")["fingerprint"]


def test_provider_options_cannot_repeat_a_named_argument() -> None:
    with pytest.raises(ValidationError, match="receipt_email is given both"):
        _charge(receipt_email="a@example.com", provider_options={"receipt_email": "b@example.com"})
    with pytest.raises(ValidationError, match="provider_options must be a mapping"):
        _charge(provider_options=["x"])


def test_failover_is_checked_when_the_charge_is_accepted(acme: ModuleType) -> None:
    row = _charge(failover={"provider": "acme", "payment_method": "acme_pm_1"})
    assert row["params"]["failover"] == {"provider": "acme", "payment_method": "acme_pm_1"}
    for bad, message in (
        ({"provider": "stripe", "payment_method": "pm_x"}, "another provider"),
        ({"provider": "sendgrid", "payment_method": "pm_x"}, "does not execute charge"),
        ({"provider": "acme"}, "payment_method"),
        ({"provider": "acme", "payment_method": "p", "amount": 5}, "takes no amount"),
        ("acme", "must be a mapping"),
    ):
        with pytest.raises(ValidationError, match=message):
            _charge(failover=bad)


def test_routes_pick_a_charge_provider_by_currency(acme: ModuleType) -> None:
    settings = load_settings(**BASE, routes="eur=acme, *=stripe")
    assert settings.charge_provider("EUR") == "acme"
    assert settings.charge_provider("usd") == "stripe"
    row = rq.charge_row(500, "eur", None, "acme_pm", "k", route=settings.charge_provider)
    assert row["provider"] == "acme"
    only_eur = load_settings(**BASE, routes="eur=acme")
    with pytest.raises(ConfigError, match="ORCHESTRATOR_ROUTES names no provider for USD"):
        only_eur.charge_provider("usd")


@pytest.mark.parametrize(
    ("routes", "message"),
    [
        ("inr", "expected CURRENCY=PROVIDER"),
        ("rupees=stripe", "expected CURRENCY=PROVIDER"),
        ("inr=paypal", "'paypal' is not registered"),
        ("*=sendgrid", "does not execute charge jobs"),
        ("", "at least one"),
    ],
)
def test_bad_routes_stop_start_up_naming_the_variable(routes: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^ORCHESTRATOR_ROUTES is invalid: .*{message}"):
        load_settings(**BASE, routes=routes)


def test_parse_routes_keeps_the_order() -> None:
    assert parse_routes("INR=stripe,*=stripe") == [("inr", "stripe"), ("*", "stripe")]


def test_the_email_provider_must_send_email() -> None:
    with pytest.raises(ConfigError, match="ORCHESTRATOR_EMAIL_PROVIDER is invalid"):
        load_settings(**BASE, email_provider="stripe")
    settings = load_settings(**BASE, email_from="shop@example.com")
    with pytest.raises(ValidationError, match="'stripe' does not execute email jobs"):
        rq.email_row(settings, "a@example.com", "s", "b", idempotency_key="k", provider="stripe")


def test_the_breaker_metrics_list_every_registered_provider(acme: ModuleType) -> None:
    from orchestrator.breaker.metrics import BreakerCollector

    assert BreakerCollector(breaker=None).providers[-1] == "acme"  # type: ignore[arg-type]


def test_a_bad_entry_point_is_refused_and_a_bad_name_is_never_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken_pay.py").write_text("SPEC = object()\n")
    info = tmp_path / "broken_pay-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-pay\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        f"[{registry.ENTRY_POINT_GROUP}]\nbroken = broken_pay:SPEC\nBad-Name = broken_pay:SPEC\n"
        "stripe = broken_pay:SPEC\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.clear_cache()
    try:
        names = registry.provider_names()
        assert "broken" in names and "Bad-Name" not in names
        assert names.count("stripe") == 1  # a built-in is never replaced
        with pytest.raises(ConfigError, match="broken_pay:SPEC is not a ProviderSpec"):
            registry.spec("broken")
    finally:
        registry.clear_cache()


def test_each_email_provider_checks_its_own_limits() -> None:
    settings = load_settings(**BASE, email_from="shop@example.com")

    def email(provider: str, **extra: Any) -> dict[str, Any]:
        args: dict[str, Any] = {"subject": None, "idempotency_key": "k", "provider": provider}
        args.update(extra)
        return rq.email_row(settings, args.pop("to", "a@example.com"), **args)

    assert email("ses", template="welcome_v2")["params"]["template"] == "welcome_v2"
    with pytest.raises(ValidationError, match="SendGrid template id"):
        email("sendgrid", template="welcome_v2")
    assert email("sendgrid", template="d-" + "a" * 32)["provider"] == "sendgrid"
    many = [f"r{i}@example.com" for i in range(51)]
    assert len(email("sendgrid", to=many, subject="s", body="b")["params"]["to"]) == 51
    with pytest.raises(ValidationError, match="ses takes at most 50 recipients"):
        email("ses", to=many, subject="s", body="b")
    with pytest.raises(ValidationError, match="SES template name"):
        email("ses", template="d:" + "a" * 70)


def test_rate_limits_name_registered_providers_only() -> None:
    assert load_settings(**BASE, rate_limits="stripe=100,razorpay=20,ses=14").rate_limits
    with pytest.raises(ConfigError, match=r"ORCHESTRATOR_RATE_LIMITS is invalid: .*'strpe'"):
        load_settings(**BASE, rate_limits="strpe=100")
