"""Settings, read from the environment (and a ``.env`` file) and validated once at start.

Secrets are held as :class:`pydantic.SecretStr`, so printing the settings never shows them.
A missing or invalid setting raises :class:`~orchestrator.errors.ConfigError` whose message
names the variable (never its value); the CLI turns that into exit code 2.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from orchestrator.errors import ConfigError

# Stripe keeps idempotency keys for at least 24 hours. Every retry of a job must happen well
# inside that window, or a late retry could execute a second time: the horizon is capped at 20 h.
STRIPE_KEY_RETENTION_S = 24 * 3600
MAX_RETRY_HORIZON_S = 20 * 3600


def _env(name: str) -> AliasChoices:
    return AliasChoices(name)


class Settings(BaseSettings):
    """Every tunable of the orchestrator. Field aliases are the environment variable names."""

    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", populate_by_name=False, frozen=True
    )

    database_url: str = Field(validation_alias=_env("DATABASE_URL"), min_length=1)
    redis_url: str = Field(validation_alias=_env("REDIS_URL"), min_length=1)

    stripe_api_key: SecretStr | None = Field(None, validation_alias=_env("STRIPE_API_KEY"))
    stripe_api_base: str = Field("https://api.stripe.com", validation_alias=_env("STRIPE_API_BASE"))
    stripe_webhook_secret: SecretStr | None = Field(
        None, validation_alias=_env("STRIPE_WEBHOOK_SECRET")
    )
    sendgrid_api_key: SecretStr | None = Field(None, validation_alias=_env("SENDGRID_API_KEY"))
    sendgrid_api_base: str = Field(
        "https://api.sendgrid.com", validation_alias=_env("SENDGRID_API_BASE")
    )
    ops_token: SecretStr | None = Field(None, validation_alias=_env("ORCHESTRATOR_OPS_TOKEN"))

    # Attempts per job, counting every provider call (a retry with the same key included).
    max_attempts: int = Field(8, ge=1, le=100, validation_alias=_env("ORCHESTRATOR_MAX_ATTEMPTS"))
    # Backoff before attempt n+1: min(base * 2**(n-1), max), then "equal jitter" (50-100 %).
    backoff_base_s: float = Field(
        1.0, gt=0, le=3600, validation_alias=_env("ORCHESTRATOR_BACKOFF_BASE_S")
    )
    backoff_max_s: float = Field(
        300.0, gt=0, le=6 * 3600, validation_alias=_env("ORCHESTRATOR_BACKOFF_MAX_S")
    )
    # No attempt is ever scheduled later than created_at + horizon (inside key retention).
    retry_horizon_s: float = Field(
        12 * 3600.0,
        gt=0,
        le=MAX_RETRY_HORIZON_S,
        validation_alias=_env("ORCHESTRATOR_RETRY_HORIZON_S"),
    )
    # Provider HTTP timeouts: connect is short (nothing was sent yet when it fires); read is
    # longer (when it fires the outcome is unknown and must be resolved by lookup).
    provider_connect_timeout_s: float = Field(
        3.0, gt=0, le=60, validation_alias=_env("ORCHESTRATOR_PROVIDER_CONNECT_TIMEOUT_S")
    )
    provider_read_timeout_s: float = Field(
        20.0, gt=0, le=120, validation_alias=_env("ORCHESTRATOR_PROVIDER_READ_TIMEOUT_S")
    )
    # Stripe search is eventually consistent (usually < 1 min): an object is proven absent
    # only when a search made this long after the last attempt finds nothing.
    search_grace_s: float = Field(
        60.0, ge=0, le=3600, validation_alias=_env("ORCHESTRATOR_SEARCH_GRACE_S")
    )
    # How often a charge the provider reports as `processing` is polled.
    processing_poll_s: float = Field(
        5.0, gt=0, le=3600, validation_alias=_env("ORCHESTRATOR_PROCESSING_POLL_S")
    )
    # A dispatched job nobody claimed for this long gets its message sent again.
    dispatch_grace_s: float = Field(
        30.0, ge=0, le=3600, validation_alias=_env("ORCHESTRATOR_DISPATCH_GRACE_S")
    )
    clock_interval_s: float = Field(
        5.0, gt=0, le=3600, validation_alias=_env("ORCHESTRATOR_CLOCK_INTERVAL_S")
    )
    db_pool_max_size: int = Field(
        10, ge=1, le=200, validation_alias=_env("ORCHESTRATOR_DB_POOL_MAX_SIZE")
    )
    queue_name: str = Field(
        "orchestrator", min_length=1, max_length=64, validation_alias=_env("ORCHESTRATOR_QUEUE")
    )
    redis_namespace: str = Field(
        "dramatiq",
        min_length=1,
        max_length=64,
        validation_alias=_env("ORCHESTRATOR_REDIS_NAMESPACE"),
    )
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", validation_alias=_env("ORCHESTRATOR_LOG_FORMAT")
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", validation_alias=_env("ORCHESTRATOR_LOG_LEVEL")
    )

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: str) -> str:
        if not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis:// URL")
        return value

    @field_validator("stripe_api_base", "sendgrid_api_base")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s):// URL")
        return value.rstrip("/")

    @property
    def lease_s(self) -> float:
        """How long a claim holds a job: one full provider call plus a safety margin."""
        return 2 * (self.provider_connect_timeout_s + self.provider_read_timeout_s) + 10

    def require_secret(self, name: str) -> str:
        """Return a secret setting's value, or raise ConfigError naming its variable."""
        value = getattr(self, name)
        if value is None or not value.get_secret_value():
            raise ConfigError(f"{_ALIASES[name]} is not set")
        secret: str = value.get_secret_value()
        return secret


_ALIASES = {
    name: str(field.validation_alias.choices[0])  # type: ignore[union-attr]
    for name, field in Settings.model_fields.items()
}


def load_settings(**overrides: object) -> Settings:
    """Read and validate the settings; raise ConfigError with one line naming the culprit."""
    try:
        env_overrides: dict[str, Any] = {_ALIASES[k]: value for k, value in overrides.items()}
        return Settings(**env_overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        location = first["loc"][0] if first["loc"] else "settings"
        message = "is not set" if first["type"] == "missing" else f"is invalid: {first['msg']}"
        raise ConfigError(f"{location} {message}") from None
