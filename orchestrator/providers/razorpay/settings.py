"""Razorpay's settings, read from the environment (and ``.env``) apart from the core settings.

``RAZORPAY_KEY_ID`` and ``RAZORPAY_KEY_SECRET`` (Basic auth of every API call; without both the
provider is not configured), ``RAZORPAY_API_BASE`` (``https://api.razorpay.com``; the
simulator's ``<url>/razorpay`` in development) and ``RAZORPAY_WEBHOOK_SECRET`` (the webhook
signing secret; several, comma-separated, while a rotation overlaps).

Each secret may be the value itself, an ``aws-sm://`` reference or an ``X_FILE`` file
(:class:`~orchestrator.secrets.SecretSettings`), re-read as it rotates. The provider keeps one
:class:`RazorpaySettings` and asks it for a secret on every call (``require_secret``,
``secret_values``), never caching the value: a rotated key secret is used, and a rotated
webhook secret checked, without a restart (the replaced one still verifies for the overlap).
"""

from __future__ import annotations

from typing import Any

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from orchestrator.secrets import SecretSettings, load_secret_settings

DEFAULT_API_BASE = "https://api.razorpay.com"


class RazorpaySettings(SecretSettings):
    """Razorpay's credentials, API address and webhook secrets."""

    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", populate_by_name=False, frozen=True
    )

    razorpay_key_id: SecretStr | None = Field(
        None, validation_alias=AliasChoices("RAZORPAY_KEY_ID")
    )
    razorpay_key_secret: SecretStr | None = Field(
        None, validation_alias=AliasChoices("RAZORPAY_KEY_SECRET")
    )
    razorpay_api_base: str = Field(
        DEFAULT_API_BASE, validation_alias=AliasChoices("RAZORPAY_API_BASE")
    )
    razorpay_webhook_secret: SecretStr | None = Field(
        None, validation_alias=AliasChoices("RAZORPAY_WEBHOOK_SECRET")
    )

    @field_validator("razorpay_api_base")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s):// URL")
        return value.rstrip("/")

    @property
    def configured(self) -> bool:
        """Whether API calls can be made: a key id and a key secret are both set."""
        return all(
            value is not None and value.get_secret_value().strip()
            for value in (self.razorpay_key_id, self.razorpay_key_secret)
        )


def load_razorpay_settings(**overrides: Any) -> RazorpaySettings:
    """Read and validate Razorpay's settings (``overrides`` by field name win over the
    environment), resolving secret references and files; ConfigError naming the variable at
    fault, never its value."""
    return load_secret_settings(RazorpaySettings, **overrides)
