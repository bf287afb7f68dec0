"""Settings and the CLI's contract: bad configuration or usage exits 2 with one line."""

from __future__ import annotations

import pytest

from orchestrator.cli import main
from orchestrator.config import load_settings
from orchestrator.errors import ConfigError

BASE = {"DATABASE_URL": "postgresql://127.0.0.1/x", "REDIS_URL": "redis://127.0.0.1:6379/0"}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> pytest.MonkeyPatch:
    monkeypatch.chdir(tmp_path)  # type: ignore[arg-type]  (no stray .env)
    for key, value in BASE.items():
        monkeypatch.setenv(key, value)
    return monkeypatch


def test_missing_setting_names_the_variable(env: pytest.MonkeyPatch) -> None:
    """A missing DATABASE_URL raises ConfigError naming it."""
    env.delenv("DATABASE_URL")
    with pytest.raises(ConfigError, match=r"^DATABASE_URL is not set$"):
        load_settings()


def test_invalid_tunable_names_the_variable_not_the_value(env: pytest.MonkeyPatch) -> None:
    """A bad value is reported by name; secrets are never echoed."""
    env.setenv("ORCHESTRATOR_MAX_ATTEMPTS", "0")
    with pytest.raises(ConfigError, match="ORCHESTRATOR_MAX_ATTEMPTS is invalid"):
        load_settings()
    env.setenv("ORCHESTRATOR_MAX_ATTEMPTS", "3")
    env.setenv("REDIS_URL", "http://secret-host")
    with pytest.raises(ConfigError, match="REDIS_URL") as info:
        load_settings()
    assert "secret-host" not in str(info.value)


def test_horizon_stays_inside_stripe_key_retention(env: pytest.MonkeyPatch) -> None:
    """A retry horizon of 24 h or more is refused: keys would expire before the last retry."""
    env.setenv("ORCHESTRATOR_RETRY_HORIZON_S", str(24 * 3600))
    with pytest.raises(ConfigError, match="ORCHESTRATOR_RETRY_HORIZON_S"):
        load_settings()


def test_secrets_are_not_printed(env: pytest.MonkeyPatch) -> None:
    """The settings' repr never shows the Stripe key."""
    env.setenv("STRIPE_API_KEY", "sk_test_supersecret123")
    assert "supersecret" not in repr(load_settings())


def test_cli_config_error_exits_2_with_one_line(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`orchestrator migrate` without DATABASE_URL: exit 2, one line naming it."""
    env.delenv("DATABASE_URL")
    assert main(["migrate"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["orchestrator: DATABASE_URL is not set"]


def test_cli_usage_error_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown option: exit 2 and a single line."""
    assert main(["charge", "--amount", "ten"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "amount" in err[0]


def test_cli_bad_charge_exits_2_and_names_the_field(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A charge with a bad currency exits 2 before touching the database."""
    code = main(
        [
            "charge",
            "--amount",
            "100",
            "--currency",
            "zzz",
            "--payment-method",
            "pm_card_visa",
            "--idempotency-key",
            "k1",
        ]
    )
    assert code == 2
    assert "currency" in capsys.readouterr().err


def test_a_short_ops_token_stops_start_up_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An ops token under 32 characters is a configuration error (exit 2, one line naming the
    setting, never the value)."""
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@127.0.0.1:1/db")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("ORCHESTRATOR_OPS_TOKEN", "hunter2hunter2")
    assert main(["jobs", "list"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "ORCHESTRATOR_OPS_TOKEN" in err and "32" in err and "hunter2" not in err
