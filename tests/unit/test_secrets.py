"""Secret settings from references and files (orchestrator.secrets), without AWS: reference
parsing, *_FILE, one-line errors that never hold a value, refresh and the rotation overlap
under a fake clock, and the providers reading their key per call."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import AliasChoices, Field, SecretStr

from orchestrator.cli import main
from orchestrator.config import Settings, load_settings
from orchestrator.errors import ConfigError
from orchestrator.logs import configure_logging, make_handler
from orchestrator.providers.sendgrid import SendGridProvider
from orchestrator.providers.stripe.provider import StripeProvider
from orchestrator.providers.stripe.webhooks import webhook_secrets
from orchestrator.secrets import (
    AwsReference,
    FileLocator,
    ResolveError,
    RotatingSecret,
    SecretSettings,
    SecretSource,
    load_secret_settings,
)
from orchestrator.secrets import settings as secret_settings

BASE = {"DATABASE_URL": "postgresql://127.0.0.1/x", "REDIS_URL": "redis://127.0.0.1:6379/0"}
# Values no log redaction pattern matches: absent from output only if never written.
OLD = "plain-old-value-0123456789abcdefghijklmn"
NEW = "plain-new-value-9876543210zyxwvutsrqponm"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    monkeypatch.chdir(tmp_path)  # no stray .env
    for key, value in BASE.items():
        monkeypatch.setenv(key, value)
    return monkeypatch


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    """Everything logged (JSON lines) while the test runs."""
    configure_logging("json", "debug")
    stream = io.StringIO()
    handler = make_handler(stream, "json")
    logging.getLogger().addHandler(handler)
    yield stream
    logging.getLogger().removeHandler(handler)


class FakeStore:
    """Secrets Manager as a dict: unknown names are not found."""

    def __init__(self, secrets: dict[str, str]) -> None:
        self.secrets = secrets
        self.reads = 0
        self.down = False

    def secret_string(self, secret_id: str) -> str:
        self.reads += 1
        if self.down:
            raise ResolveError("Secrets Manager is unreachable (EndpointConnectionError)")
        if secret_id not in self.secrets:
            raise ResolveError("secret not found")
        return self.secrets[secret_id]


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> FakeStore:
    fake = FakeStore({})
    monkeypatch.setattr(secret_settings, "SecretsManager", lambda: fake)
    return fake


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Value:
    """A locator whose value (or failure) the test sets."""

    described = "test://value"

    def __init__(self, value: str) -> None:
        self.value = value
        self.error: str | None = None

    def fetch(self) -> str:
        if self.error:
            raise ResolveError(self.error)
        return self.value


def _source(locator: Value, clock: Clock, **kwargs: Any) -> SecretSource:
    kwargs.setdefault("refresh_s", 60.0)
    kwargs.setdefault("overlap_s", 600.0)
    return SecretSource(
        "TEST_SECRET", locator, locator.value, clock=clock, spawn=lambda run: run(), **kwargs
    )


# -- references and files ----------------------------------------------------------------


def test_references_parse_the_secret_and_the_optional_json_key() -> None:
    assert AwsReference.parse("aws-sm://prod/stripe") == AwsReference("prod/stripe")
    assert AwsReference.parse(" aws-sm://prod/stripe#api_key ") == AwsReference(
        "prod/stripe", "api_key"
    )
    arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/stripe-AbCdEf"
    assert AwsReference.parse(f"aws-sm://{arn}#k") == AwsReference(arn, "k")
    assert str(AwsReference(arn, "k")) == f"aws-sm://{arn}#k"
    with pytest.raises(ResolveError, match="names no secret"):
        AwsReference.parse("aws-sm://#key")
    with pytest.raises(ResolveError, match="empty JSON key"):
        AwsReference.parse("aws-sm://prod/stripe#")


def test_a_json_key_is_picked_out_of_the_secret_string() -> None:
    ref = AwsReference("s", "api_key")
    assert ref.select(json.dumps({"api_key": OLD, "other": "x"})) == OLD
    assert ref.select('{"api_key": 42}') == "42"
    for text, reason in [
        ('{"other": "x"}', "has no key 'api_key'"),
        (OLD, "not JSON"),
        ('["api_key"]', "not a JSON object"),
        ('{"api_key": ["x"]}', "is not a string"),
        ('{"api_key": ""}', "is empty"),
    ]:
        with pytest.raises(ResolveError, match=reason) as info:
            ref.select(text)
        assert OLD not in str(info.value)
    assert AwsReference("s").select(OLD) == OLD


def test_a_file_loses_its_trailing_newline_only(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(f"  {OLD}\r\n")
    assert FileLocator(str(path)).fetch() == f"  {OLD}"
    path.write_text("\n")
    with pytest.raises(ResolveError, match="is empty"):
        FileLocator(str(path)).fetch()
    path.write_bytes(b"x" * 70_000)
    with pytest.raises(ResolveError, match="larger than"):
        FileLocator(str(path)).fetch()


def test_a_secret_setting_is_read_from_its_file(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "stripe").write_text(f"{OLD}\n")
    env.setenv("STRIPE_API_KEY_FILE", str(tmp_path / "stripe"))
    settings = load_settings()
    assert settings.require_secret("stripe_api_key") == OLD
    assert isinstance(settings.stripe_api_key, RotatingSecret)
    assert OLD not in repr(settings) and OLD not in str(settings.stripe_api_key)


def test_a_dotenv_file_variable_counts_too(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "sendgrid").write_text(OLD)
    (tmp_path / ".env").write_text(f"SENDGRID_API_KEY_FILE={tmp_path / 'sendgrid'}\n")
    assert load_settings().require_secret("sendgrid_api_key") == OLD


def test_a_variable_and_its_file_together_are_refused(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "stripe").write_text(OLD)
    env.setenv("STRIPE_API_KEY", NEW)
    env.setenv("STRIPE_API_KEY_FILE", str(tmp_path / "stripe"))
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value) == ("STRIPE_API_KEY and STRIPE_API_KEY_FILE are both set; set only one")


def test_an_unreadable_file_names_the_variable_and_path_not_content(
    env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope"
    env.setenv("ORCHESTRATOR_OPS_TOKEN_FILE", str(missing))
    assert main(["jobs", "list"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"orchestrator: ORCHESTRATOR_OPS_TOKEN_FILE: cannot read {missing}: "
        "No such file or directory"
    ]
    # A file whose content fails validation: named, the content never echoed.
    missing.write_text("short-token-value")
    with pytest.raises(ConfigError, match="ORCHESTRATOR_OPS_TOKEN is invalid") as info:
        load_settings()
    assert "short-token-value" not in str(info.value)


# -- references (a fake store) -------------------------------------------------------------


def test_references_resolve_through_the_store_once_per_secret(
    env: pytest.MonkeyPatch, store: FakeStore
) -> None:
    store.secrets["prod/stripe"] = json.dumps({"api_key": OLD, "webhook": f"{NEW}, other"})
    env.setenv("STRIPE_API_KEY", "aws-sm://prod/stripe#api_key")
    env.setenv("STRIPE_WEBHOOK_SECRET", "aws-sm://prod/stripe#webhook")
    settings = load_settings()
    assert settings.require_secret("stripe_api_key") == OLD
    assert webhook_secrets(settings) == (NEW, "other")
    assert store.reads == 1  # both keys of one secret: read once at start-up


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("aws-sm://missing", "STRIPE_API_KEY: aws-sm://missing: secret not found"),
        ("aws-sm://prod/stripe#nokey", "STRIPE_API_KEY: aws-sm://prod/stripe#nokey: "),
        ("aws-sm://", "STRIPE_API_KEY: aws-sm://: the reference names no secret"),
    ],
)
def test_an_unresolvable_reference_is_one_line_naming_the_variable(
    env: pytest.MonkeyPatch, store: FakeStore, reference: str, message: str
) -> None:
    store.secrets["prod/stripe"] = json.dumps({"api_key": OLD})
    env.setenv("STRIPE_API_KEY", reference)
    with pytest.raises(ConfigError) as info:
        load_settings()
    text = str(info.value)
    assert text.startswith(message) and "\n" not in text and OLD not in text


def test_a_reference_without_boto3_stops_start_up_with_a_hint(
    env: pytest.MonkeyPatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)  # `import boto3` raises ImportError
    env.setenv("SENDGRID_API_KEY", "aws-sm://prod/sendgrid")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value) == (
        "SENDGRID_API_KEY: aws-sm://prod/sendgrid: aws-sm:// references need boto3 "
        "(pip install 'durable-payment-orchestrator[aws]')"
    )


def test_a_rotated_reference_reaches_every_reader_after_the_refresh(
    env: pytest.MonkeyPatch, store: FakeStore
) -> None:
    store.secrets["ops"] = OLD
    env.setenv("ORCHESTRATOR_OPS_TOKEN", "aws-sm://ops")
    settings = load_settings()
    store.secrets["ops"] = NEW
    assert settings.refresh_secrets() == ["ORCHESTRATOR_OPS_TOKEN"]
    assert settings.require_secret("ops_token") == NEW
    assert settings.ops_token is not None and settings.ops_token.get_secret_value() == NEW


def test_a_rotated_value_failing_validation_is_not_adopted(
    env: pytest.MonkeyPatch, store: FakeStore, logs: io.StringIO
) -> None:
    """The ops token must stay 32+ characters and differ from the API token."""
    store.secrets.update(ops=OLD, api=NEW)
    env.setenv("ORCHESTRATOR_OPS_TOKEN", "aws-sm://ops")
    env.setenv("ORCHESTRATOR_API_TOKEN", "aws-sm://api")
    settings = load_settings()
    store.secrets["ops"] = "too-short"
    store.secrets["api"] = OLD  # the ops token's value
    assert settings.refresh_secrets() == []
    assert settings.require_secret("ops_token") == OLD
    assert settings.require_secret("api_token") == NEW
    warnings = [json.loads(line) for line in logs.getvalue().splitlines()]
    assert {w["variable"] for w in warnings if w["event"] == "secrets.refresh_failed"} == {
        "ORCHESTRATOR_OPS_TOKEN",
        "ORCHESTRATOR_API_TOKEN",
    }
    assert "too-short" not in logs.getvalue() and OLD not in logs.getvalue()


def test_a_failed_refresh_keeps_the_value_and_logs_no_secret(
    env: pytest.MonkeyPatch,
    store: FakeStore,
    logs: io.StringIO,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store.secrets["stripe"] = OLD
    env.setenv("STRIPE_API_KEY", "aws-sm://stripe")
    settings = load_settings()
    store.secrets["stripe"] = NEW
    store.down = True
    assert settings.refresh_secrets() == []
    assert settings.require_secret("stripe_api_key") == OLD
    (warning,) = [json.loads(line) for line in logs.getvalue().splitlines()]
    assert warning["event"] == "secrets.refresh_failed"
    assert warning["variable"] == "STRIPE_API_KEY"
    assert "unreachable" in warning["reason"]
    store.down = False
    assert settings.refresh_secrets() == ["STRIPE_API_KEY"]
    captured = capsys.readouterr()
    everything = logs.getvalue() + captured.out + captured.err + repr(settings)
    assert OLD not in everything and NEW not in everything


# -- refresh and overlap (a fake clock) --------------------------------------------------


def test_the_value_is_re_resolved_once_older_than_the_interval() -> None:
    clock, locator = Clock(), Value(OLD)
    source = _source(locator, clock)
    locator.value = NEW
    clock.now += 59.9
    assert source.value() == OLD  # still fresh: not even fetched
    clock.now += 0.2
    assert source.value() == NEW


def test_a_failed_refresh_is_retried_sooner_than_the_interval() -> None:
    clock, locator = Clock(), Value(OLD)
    source = _source(locator, clock, refresh_s=300.0)
    clock.now += 300
    locator.error = "Secrets Manager is unreachable (ConnectTimeoutError)"
    assert source.value() == OLD
    locator.error, locator.value = None, NEW
    clock.now += 29
    assert source.value() == OLD
    clock.now += 2
    assert source.value() == NEW


def test_replaced_values_verify_for_the_overlap_window() -> None:
    clock, locator = Clock(), Value("whsec_one, whsec_two")
    source = _source(locator, clock, refresh_s=60.0, overlap_s=600.0)
    assert source.values() == ("whsec_one", "whsec_two")
    locator.value = "whsec_three"
    clock.now += 60
    assert source.values() == ("whsec_three", "whsec_one", "whsec_two")
    locator.value = "whsec_four"  # a second rotation inside the first one's overlap
    clock.now += 60
    assert source.values() == ("whsec_four", "whsec_one", "whsec_two", "whsec_three")
    clock.now += 481 + 60  # 601 s after the first rotation was seen
    assert source.values() == ("whsec_four", "whsec_three")
    clock.now += 60
    assert source.values() == ("whsec_four",)


def test_no_overlap_when_it_is_zero() -> None:
    clock, locator = Clock(), Value(OLD)
    source = _source(locator, clock, overlap_s=0.0)
    locator.value = NEW
    assert source.refresh() is True
    assert source.values() == (NEW,)


def test_readers_never_wait_for_a_refresh_in_flight() -> None:
    """The stale reader starts the refresh in a thread; every reader gets the old value until
    it is done, and only one refresh runs."""
    gate, fetches = threading.Event(), []

    class Slow:
        described = "test://slow"

        def fetch(self) -> str:
            fetches.append(1)
            gate.wait(5)
            return NEW

    clock = Clock()
    source = SecretSource("TEST_SECRET", Slow(), OLD, refresh_s=1, overlap_s=0, clock=clock)
    clock.now += 2
    assert [source.value() for _ in range(100)] == [OLD] * 100
    gate.set()
    deadline = threading.Event()
    for _ in range(100):
        if source.current == NEW:
            break
        deadline.wait(0.02)
    assert source.value() == NEW and len(fetches) == 1


def test_a_forked_child_does_not_inherit_a_refresh_in_flight() -> None:
    """dramatiq forks its workers: a child must not find the refresh lock held for good."""
    from orchestrator.secrets import source as source_module

    clock, locator = Clock(), Value(OLD)
    source = _source(locator, clock)
    source._refreshing.acquire()  # a refresh running in the parent at fork time
    source_module._after_fork_in_child()
    locator.value = NEW
    clock.now += 60
    assert source.value() == NEW


# -- other modules' settings ----------------------------------------------------------------


class DemoProviderSettings(SecretSettings):
    """What a provider module declares for itself (as Razorpay's settings would)."""

    key_secret: SecretStr | None = Field(None, validation_alias=AliasChoices("DEMO_KEY_SECRET"))
    webhook_secret: SecretStr | None = Field(
        None, validation_alias=AliasChoices("DEMO_WEBHOOK_SECRET")
    )
    api_base: str = Field("https://demo", validation_alias=AliasChoices("DEMO_API_BASE"))


def test_another_module_settings_get_files_references_and_refresh(
    env: pytest.MonkeyPatch, store: FakeStore, tmp_path: Path
) -> None:
    (tmp_path / "key").write_text(OLD)
    store.secrets["demo"] = json.dumps({"webhook": "whsec_a"})
    env.setenv("DEMO_KEY_SECRET_FILE", str(tmp_path / "key"))
    env.setenv("DEMO_WEBHOOK_SECRET", "aws-sm://demo#webhook")
    env.setenv("ORCHESTRATOR_SECRETS_REFRESH_S", "1")
    settings = load_secret_settings(DemoProviderSettings)
    assert settings.secrets_refresh_s == 1
    assert settings.require_secret("key_secret") == OLD
    (tmp_path / "key").write_text(NEW)
    store.secrets["demo"] = json.dumps({"webhook": "whsec_b"})
    assert sorted(settings.refresh_secrets()) == ["DEMO_KEY_SECRET_FILE", "DEMO_WEBHOOK_SECRET"]
    assert settings.require_secret("key_secret") == NEW
    assert settings.secret_values("webhook_secret") == ("whsec_b", "whsec_a")
    assert OLD not in repr(settings) and NEW not in repr(settings)


def test_another_module_settings_errors_name_the_variable(env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"^DEMO_KEY_SECRET is not set$"):
        load_secret_settings(DemoProviderSettings).require_secret("key_secret")
    env.setenv("DEMO_KEY_SECRET_FILE", "/nonexistent/key")
    with pytest.raises(ConfigError, match=r"^DEMO_KEY_SECRET_FILE: cannot read /nonexistent/key"):
        load_secret_settings(DemoProviderSettings)
    env.delenv("DEMO_KEY_SECRET_FILE")
    with pytest.raises(ConfigError, match=r"^ORCHESTRATOR_SECRETS_REFRESH_S is invalid"):
        load_secret_settings(DemoProviderSettings, secrets_refresh_s=0)


def test_settings_inherit_the_mechanism() -> None:
    assert issubclass(Settings, SecretSettings)
    assert Settings.variable_of("secrets_overlap_s") == "ORCHESTRATOR_SECRETS_OVERLAP_S"


# -- providers read the key per call ------------------------------------------------------


def test_the_stripe_client_follows_the_key_and_keeps_its_pool() -> None:
    key = ["sk_test_first"]
    provider = StripeProvider(
        lambda: key[0], api_base="http://127.0.0.1:9", connect_timeout_s=1, read_timeout_s=1
    )
    first = provider._client
    assert provider._client is first  # unchanged key: the same client
    key[0] = "sk_test_second"
    second = provider._client
    assert second is not first and provider._client is second
    assert second._requestor.api_key == "sk_test_second"  # type: ignore[attr-defined]
    assert second._requestor._client is first._requestor._client  # type: ignore[attr-defined]


def test_the_sendgrid_client_follows_the_key() -> None:
    key = ["SG.first"]
    provider = SendGridProvider(lambda: key[0], api_base="http://127.0.0.1:9", timeout_s=1)
    assert provider._keyed_client[1].api_key == "SG.first"
    key[0] = "SG.second"
    provider.execute(_email_job(), "unused")  # refused connection: nothing sent
    assert provider._keyed_client[1].api_key == "SG.second"
    assert provider._keyed_client[1].client.timeout == 1


def _email_job() -> Any:
    from orchestrator.models import Job

    return Job.from_row(
        {
            **{name: None for name in Job.__dataclass_fields__},
            "id": "3f1e3c55-6d0e-4a53-9f7e-2b9c4d1e0a12",
            "kind": "email",
            "provider": "sendgrid",
            "state": "running",
            "params": {"to": ["a@example.com"], "from": "b@example.com", "body": "hi"},
        }
    )
