"""Settings, read from the environment (and a ``.env`` file) and validated once at start.

Secrets are held as :class:`pydantic.SecretStr`, so printing the settings never shows them.
Each may be given as an ``aws-sm://`` reference or through an ``X_FILE`` file, and is then
re-read every ``ORCHESTRATOR_SECRETS_REFRESH_S`` (:mod:`orchestrator.secrets`, whose
:class:`~orchestrator.secrets.SecretSettings` this class extends).
A missing or invalid setting raises :class:`~orchestrator.errors.ConfigError` whose message
names the variable (never its value); the CLI turns that into exit code 2.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import SettingsConfigDict

from orchestrator.errors import ConfigError
from orchestrator.models import JobKind
from orchestrator.secrets import SecretSettings, load_secret_settings

# Stripe keeps idempotency keys for at least 24 hours. Every retry of a job must happen well
# inside that window, or a late retry could execute a second time: the horizon is capped at 20 h.
STRIPE_KEY_RETENTION_S = 24 * 3600
MAX_RETRY_HORIZON_S = 20 * 3600
# The ops token guards replays and discards of money jobs over HTTP: at least 32 characters
# (e.g. `python -c "import secrets; print(secrets.token_urlsafe(32))"`).
MIN_OPS_TOKEN_CHARS = 32

# The brokers ORCHESTRATOR_BROKER_URL may name (orchestrator.brokers picks the broker from it).
BROKER_SCHEMES = ("redis://", "rediss://", "unix://", "amqp://", "amqps://")

ProxyNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_trusted_proxies(text: str) -> tuple[ProxyNetwork, ...]:
    """``"10.0.0.5, 10.1.0.0/16, ::1"`` -> the networks whose direct connections may set
    ``X-Forwarded-For`` / ``X-Forwarded-Proto`` (a bare address is a /32 or /128)."""
    networks: list[ProxyNetwork] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"expected IP addresses or CIDR networks, got {part!r}") from None
    return tuple(networks)


def parse_rate_limits(text: str) -> dict[str, float]:
    """``"stripe=100,sendgrid=600"`` -> {"stripe": 100.0, "sendgrid": 600.0} (calls per s)."""
    limits: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        try:
            rate = float(value)
        except ValueError:
            rate = -1.0
        if not sep or not name.strip() or not rate >= 0:
            raise ValueError(f"expected PROVIDER=CALLS_PER_S, got {part!r}")
        limits[name.strip()] = rate
    return limits


def parse_routes(text: str) -> list[tuple[str, str]]:
    """``"inr=razorpay,*=stripe"`` -> [("inr", "razorpay"), ("*", "stripe")]: the provider of
    a charge by its currency, first match first; a currency is three letters or ``*``."""
    routes: list[tuple[str, str]] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        currency, sep, provider = (s.strip().lower() for s in part.partition("="))
        if not sep or not _PROVIDER_RE.fullmatch(provider) or not _CURRENCY_RE.fullmatch(currency):
            raise ValueError(f"expected CURRENCY=PROVIDER or *=PROVIDER, got {part!r}")
        routes.append((currency, provider))
    if not routes:
        raise ValueError("expected at least one CURRENCY=PROVIDER")
    return routes


_PROVIDER_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
_CURRENCY_RE = re.compile(r"[a-z]{3}|\*")


def parse_settle_hooks(text: str) -> list[tuple[str, str]]:
    """``"billing:order_paid,notify"`` -> [("billing", "order_paid"), ("default", "notify")]:
    dramatiq actors (``QUEUE:ACTOR``; the queue defaults to ``default``) told of every settle."""
    hooks: list[tuple[str, str]] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        queue, sep, actor = part.rpartition(":")
        queue = queue if sep else "default"
        if not (_NAME_RE.fullmatch(queue) and _NAME_RE.fullmatch(actor)):
            raise ValueError(f"expected QUEUE:ACTOR or ACTOR, got {part!r}")
        hooks.append((queue, actor))
    return hooks


_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,127}")


def parse_bind(text: str) -> tuple[str, int]:
    """``"127.0.0.1:9100"`` -> ("127.0.0.1", 9100); ``"[::1]:9100"`` -> ("::1", 9100)."""
    host, sep, port = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        host = ""  # an IPv6 address needs its brackets: [::1]:9100
    valid_host = bool(host) and all(c.isalnum() or c in ".-_:" for c in host) and host.isascii()
    if not sep or not valid_host or not (port.isascii() and port.isdigit()):
        raise ValueError(f"expected HOST:PORT (e.g. 127.0.0.1:9100), got {text!r}")
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"port must be 1..65535, got {port}")
    return host, int(port)


def _env(name: str) -> AliasChoices:
    return AliasChoices(name)


class Settings(SecretSettings):
    """Every tunable of the orchestrator. Field aliases are the environment variable names.

    ``ORCHESTRATOR_SECRETS_REFRESH_S`` and ``ORCHESTRATOR_SECRETS_OVERLAP_S`` (the refresh of
    references and files, and the overlap of rotated values) come from SecretSettings, as do
    ``require_secret`` and ``secret_values``.
    """

    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", populate_by_name=False, frozen=True
    )

    database_url: str = Field(validation_alias=_env("DATABASE_URL"), min_length=1)
    redis_url: str = Field(validation_alias=_env("REDIS_URL"), min_length=1)
    # Where dramatiq's messages go: redis://, rediss:// (dramatiq's RedisBroker) or amqp://,
    # amqps:// (its RabbitmqBroker, publisher confirms on; pika's URL options such as
    # ?heartbeat=30 are honoured). Unset: REDIS_URL. Redis (REDIS_URL) stays required whatever
    # the broker: breaker, rate limits, heartbeats and dashboard sessions live there.
    broker_url: str | None = Field(None, validation_alias=_env("ORCHESTRATOR_BROKER_URL"))

    stripe_api_key: SecretStr | None = Field(None, validation_alias=_env("STRIPE_API_KEY"))
    stripe_api_base: str = Field("https://api.stripe.com", validation_alias=_env("STRIPE_API_BASE"))
    stripe_webhook_secret: SecretStr | None = Field(
        None, validation_alias=_env("STRIPE_WEBHOOK_SECRET")
    )
    sendgrid_api_key: SecretStr | None = Field(None, validation_alias=_env("SENDGRID_API_KEY"))
    sendgrid_api_base: str = Field(
        "https://api.sendgrid.com", validation_alias=_env("SENDGRID_API_BASE")
    )
    # The payment provider of a charge that names none, by currency: "inr=razorpay,*=stripe"
    # (the first match wins; "*" is any currency). Every name must be a registered provider.
    routes: str = Field("*=stripe", validation_alias=_env("ORCHESTRATOR_ROUTES"))
    # The email provider of orch.send_email() when the call names none.
    email_provider: str = Field("sendgrid", validation_alias=_env("ORCHESTRATOR_EMAIL_PROVIDER"))
    # The sender of orch.send_email() when the call names none (a verified SendGrid sender).
    email_from: str | None = Field(None, validation_alias=_env("ORCHESTRATOR_EMAIL_FROM"))
    ops_token: SecretStr | None = Field(None, validation_alias=_env("ORCHESTRATOR_OPS_TOKEN"))
    # The app HTTP API (/api/v1, orchestrator.app.http) for services in other languages:
    # `Authorization: Bearer <token>`, 32+ characters, never the ops token. Unset: refused.
    api_token: SecretStr | None = Field(None, validation_alias=_env("ORCHESTRATOR_API_TOKEN"))
    # The dashboard's public address; https://... marks its session cookie Secure always (the
    # web process behind a TLS-terminating proxy sees plain http).
    public_url: str | None = Field(None, validation_alias=_env("ORCHESTRATOR_PUBLIC_URL"))
    # Proxies (IPs or CIDRs, comma-separated) whose X-Forwarded-For / X-Forwarded-Proto the ops
    # web surface believes, and only when one of them is the direct peer. Empty: nobody's.
    trusted_proxies: str = Field("", validation_alias=_env("ORCHESTRATOR_TRUSTED_PROXIES"))
    # /metrics: when set, a scrape needs `Authorization: Bearer <token>` (32+ characters).
    metrics_token: SecretStr | None = Field(
        None, validation_alias=_env("ORCHESTRATOR_METRICS_TOKEN")
    )
    # /metrics served only on this HOST:PORT (a second listener of `orchestrator web`), e.g.
    # 127.0.0.1:9100 or [::1]:9100; the main app's /metrics then answers 404.
    metrics_bind: str | None = Field(None, validation_alias=_env("ORCHESTRATOR_METRICS_BIND"))

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
    # Stripe search is eventually consistent: "under normal conditions < 1 minute", "up to an
    # hour behind during outages" (Stripe's search docs), exactly when 5xx happen. A charge
    # without a customer can only be found by search, so it is proven absent only when a
    # search made this long after its last attempt finished finds nothing. Charges with a
    # customer and refunds are looked up through consistent lists and need no grace.
    search_grace_s: float = Field(
        3600.0, ge=0, le=6 * 3600, validation_alias=_env("ORCHESTRATOR_SEARCH_GRACE_S")
    )
    # How often a charge the provider reports as `processing` is polled.
    processing_poll_s: float = Field(
        5.0, gt=0, le=3600, validation_alias=_env("ORCHESTRATOR_PROCESSING_POLL_S")
    )
    # A `processing` charge still pending after this long goes `dead` (stuck_pending) for an
    # operator: bank debits can take days, so the default is a week.
    stuck_pending_s: float = Field(
        7 * 24 * 3600.0, gt=0, validation_alias=_env("ORCHESTRATOR_STUCK_PENDING_S")
    )
    # Safety margin added to a lease beyond two full provider calls (clock skew, GC pauses).
    lease_margin_s: float = Field(
        10.0, ge=0, le=600, validation_alias=_env("ORCHESTRATOR_LEASE_MARGIN_S")
    )
    # Attempt rows of finished jobs are deleted after this many days (job rows never are).
    attempt_retention_days: int = Field(
        90, ge=1, le=3650, validation_alias=_env("ORCHESTRATOR_ATTEMPT_RETENTION_DAYS")
    )
    # Webhook event rows are deleted after this many days (well past providers' redelivery).
    event_retention_days: int = Field(
        30, ge=1, le=3650, validation_alias=_env("ORCHESTRATOR_EVENT_RETENTION_DAYS")
    )
    # A dispatched job nobody claimed for this long gets its message sent again.
    dispatch_grace_s: float = Field(
        30.0, ge=0, le=3600, validation_alias=_env("ORCHESTRATOR_DISPATCH_GRACE_S")
    )
    clock_interval_s: float = Field(
        5.0, gt=0, le=3600, validation_alias=_env("ORCHESTRATOR_CLOCK_INTERVAL_S")
    )
    # PostgreSQL owns the schedule: a job due again within this many seconds (a short backoff
    # or poll) gets a broker-delayed message; a later one gets none, and the clock dispatches
    # it from `next_attempt_at` when it comes due (0: the broker never holds a delayed message).
    broker_delay_window_s: float = Field(
        2.0, ge=0, le=60, validation_alias=_env("ORCHESTRATOR_BROKER_DELAY_WINDOW_S")
    )
    # The clock audits the ledger against Stripe's lists this often (0: never); see
    # orchestrator.maintenance.audit.
    audit_interval_s: float = Field(
        86400.0, ge=0, le=31 * 86400, validation_alias=_env("ORCHESTRATOR_AUDIT_INTERVAL_S")
    )
    # Circuit breaker, per provider, shared in Redis (orchestrator.breaker). It opens after
    # this many consecutive failures (5xx, timeouts, connection errors) ...
    breaker_failure_threshold: int = Field(
        5, ge=1, le=1000, validation_alias=_env("ORCHESTRATOR_BREAKER_FAILURE_THRESHOLD")
    )
    # ... or when at least this share of the last `window_calls` calls made within
    # `window_s` failed, once the window holds at least `min_calls` calls.
    breaker_failure_rate: float = Field(
        0.5, gt=0, le=1, validation_alias=_env("ORCHESTRATOR_BREAKER_FAILURE_RATE")
    )
    breaker_window_calls: int = Field(
        20, ge=1, le=1000, validation_alias=_env("ORCHESTRATOR_BREAKER_WINDOW_CALLS")
    )
    breaker_window_s: float = Field(
        60.0, gt=0, le=3600, validation_alias=_env("ORCHESTRATOR_BREAKER_WINDOW_S")
    )
    breaker_min_calls: int = Field(
        20, ge=1, le=1000, validation_alias=_env("ORCHESTRATOR_BREAKER_MIN_CALLS")
    )
    # Open this long before one probe is let through; each failed probe doubles it, up to max.
    breaker_cooldown_s: float = Field(
        30.0, gt=0, le=3600, validation_alias=_env("ORCHESTRATOR_BREAKER_COOLDOWN_S")
    )
    breaker_cooldown_max_s: float = Field(
        300.0, gt=0, le=6 * 3600, validation_alias=_env("ORCHESTRATOR_BREAKER_COOLDOWN_MAX_S")
    )
    # While this process's calls to a provider without a rate limit keep succeeding and Redis
    # says its breaker is closed, calls go ahead without asking Redis for this long (ms): a
    # breaker opened elsewhere (another process, an operator) is seen here within it. Any
    # other outcome ends it at once. 0: every call asks Redis.
    breaker_closed_lease_ms: int = Field(
        100, ge=0, le=10_000, validation_alias=_env("ORCHESTRATOR_BREAKER_CLOSED_LEASE_MS")
    )
    # Connect and read timeout of every other Redis client (the broker's, the clock's dead
    # letter reads): a frozen Redis (not refusing, just silent) fails calls after this long
    # instead of blocking the clock while it holds its lock, or web and worker threads. On
    # RabbitMQ it bounds connecting (socket and handshake) and a publisher blocked by an alarm.
    redis_timeout_s: float = Field(
        5.0, gt=0, le=60, validation_alias=_env("ORCHESTRATOR_REDIS_TIMEOUT_S")
    )
    # Redis socket timeouts for breaker calls (ms): a slow Redis must not slow every job;
    # past it the process falls back to its local breaker.
    breaker_redis_timeout_ms: int = Field(
        250, ge=10, le=10_000, validation_alias=_env("ORCHESTRATOR_BREAKER_REDIS_TIMEOUT_MS")
    )
    # Fleet-wide calls per second per provider, "stripe=100,sendgrid=600"; a provider not
    # listed is not rate limited. Stripe's live-mode limit is 100 operations per second.
    rate_limits: str = Field("stripe=100", validation_alias=_env("ORCHESTRATOR_RATE_LIMITS"))
    # A 429's Retry-After pauses every worker's calls to that provider, for at most this long
    # (0: only the job that got the 429 waits). A provider asking for more is still honoured
    # by that job's own backoff.
    rate_limit_pause_max_s: float = Field(
        60.0, ge=0, le=3600, validation_alias=_env("ORCHESTRATOR_RATE_LIMIT_PAUSE_MAX_S")
    )
    db_pool_max_size: int = Field(
        10, ge=1, le=200, validation_alias=_env("ORCHESTRATOR_DB_POOL_MAX_SIZE")
    )
    queue_name: str = Field(
        "orchestrator", min_length=1, max_length=64, validation_alias=_env("ORCHESTRATOR_QUEUE")
    )
    # Settlement hooks: dramatiq actors of the application ("QUEUE:ACTOR,..."), each sent
    # (job_id, state) at least once per settle, after it committed (the clock's outbox drain).
    settle_hooks: str = Field("", validation_alias=_env("ORCHESTRATOR_SETTLE_HOOKS"))
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

    @field_validator("broker_url")
    @classmethod
    def _broker_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not value.strip().lower().startswith(BROKER_SCHEMES):
            raise ValueError("must be a redis://, rediss://, amqp:// or amqps:// URL")
        return value.strip()

    @property
    def dramatiq_broker_url(self) -> str:
        """ORCHESTRATOR_BROKER_URL, or REDIS_URL when it is unset."""
        return self.broker_url or self.redis_url

    @field_validator("rate_limits")
    @classmethod
    def _rate_limits(cls, value: str) -> str:
        from orchestrator.providers.registry import spec

        for provider in parse_rate_limits(value):
            spec(provider)  # ValidationError names a provider that is not registered
        return value

    @field_validator("settle_hooks")
    @classmethod
    def _settle_hooks(cls, value: str) -> str:
        parse_settle_hooks(value)
        return value

    @field_validator("routes")
    @classmethod
    def _routes(cls, value: str) -> str:
        from orchestrator.providers.registry import provider_for

        for _currency, provider in parse_routes(value):
            provider_for(provider, JobKind.CHARGE)  # ValidationError names an unknown one
        return value

    @field_validator("email_provider")
    @classmethod
    def _email_provider(cls, value: str) -> str:
        from orchestrator.providers.registry import provider_for

        provider_for(value.strip(), JobKind.EMAIL)
        return value.strip()

    def charge_provider(self, currency: str) -> str:
        """The provider ORCHESTRATOR_ROUTES names for a charge in ``currency``."""
        for route, provider in parse_routes(self.routes):
            if route in ("*", currency.lower()):
                return provider
        raise ConfigError(f"ORCHESTRATOR_ROUTES names no provider for {currency.upper()}")

    @field_validator("breaker_min_calls")
    @classmethod
    def _min_calls_fit_window(cls, value: int, info: ValidationInfo) -> int:
        window = info.data.get("breaker_window_calls")
        if window is not None and value > window:
            raise ValueError("must not exceed ORCHESTRATOR_BREAKER_WINDOW_CALLS")
        return value

    @field_validator("breaker_cooldown_max_s")
    @classmethod
    def _cooldown_max_covers_cooldown(cls, value: float, info: ValidationInfo) -> float:
        cooldown = info.data.get("breaker_cooldown_s")
        if cooldown is not None and value < cooldown:
            raise ValueError("must be at least ORCHESTRATOR_BREAKER_COOLDOWN_S")
        return value

    @field_validator("stripe_api_base", "sendgrid_api_base")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s):// URL")
        return value.rstrip("/")

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        scheme, sep, rest = value.strip().partition("://")
        if scheme.lower() not in ("http", "https") or not sep or not rest.strip("/"):
            raise ValueError("must be an http(s)://HOST URL")
        return value.strip().rstrip("/")

    @field_validator("trusted_proxies")
    @classmethod
    def _trusted_proxies(cls, value: str) -> str:
        parse_trusted_proxies(value)
        return value

    @field_validator("ops_token", "metrics_token")
    @classmethod
    def _long_ops_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_OPS_TOKEN_CHARS:
            raise ValueError(f"must be at least {MIN_OPS_TOKEN_CHARS} characters")
        return value

    @field_validator("api_token")
    @classmethod
    def _api_token(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if value is None:
            return value
        if len(value.get_secret_value()) < MIN_OPS_TOKEN_CHARS:
            raise ValueError(f"must be at least {MIN_OPS_TOKEN_CHARS} characters")
        ops = info.data.get("ops_token")
        if ops is not None and ops.get_secret_value() == value.get_secret_value():
            raise ValueError("must differ from ORCHESTRATOR_OPS_TOKEN")
        return value

    @field_validator("metrics_bind")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        host, port = parse_bind(value)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @property
    def metrics_bind_address(self) -> tuple[str, int] | None:
        """ORCHESTRATOR_METRICS_BIND as (host, port), None when /metrics stays on the app."""
        return parse_bind(self.metrics_bind) if self.metrics_bind else None

    @field_validator("email_from")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        from orchestrator.validation import email

        return None if value is None else email("ORCHESTRATOR_EMAIL_FROM", value)

    @property
    def lease_s(self) -> float:
        """How long a claim holds a job: one full provider call plus a safety margin."""
        calls_s = 2 * (self.provider_connect_timeout_s + self.provider_read_timeout_s)
        return calls_s + self.lease_margin_s


# Field name -> environment variable (tests reproduce settings in child processes with it).
_ALIASES = {name: Settings.variable_of(name) for name in Settings.model_fields}


def load_settings(**overrides: object) -> Settings:
    """Read and validate the settings (``overrides`` by field name win over the environment),
    resolving secret references and files; raise ConfigError with one line naming the
    culprit."""
    return load_secret_settings(Settings, **overrides)
