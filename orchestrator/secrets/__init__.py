"""Secret settings from AWS Secrets Manager and from files, kept current without a restart.

Every ``SecretStr`` setting (``STRIPE_API_KEY``, ``STRIPE_WEBHOOK_SECRET``,
``SENDGRID_API_KEY``, ``ORCHESTRATOR_OPS_TOKEN``, ``ORCHESTRATOR_API_TOKEN``,
``ORCHESTRATOR_METRICS_TOKEN``, and those of any :class:`SecretSettings` subclass) may be
given three ways:

``X=value``
    The value itself.
``X=aws-sm://<secret name or ARN>`` / ``X=aws-sm://<name>#<json key>``
    The whole SecretString of that secret, or one key of a SecretString holding a JSON object,
    read with boto3 (the ``aws`` extra; a reference without boto3 installed stops start-up).
    The client follows the standard AWS configuration: the credentials chain, ``AWS_REGION``
    (else ``AWS_DEFAULT_REGION`` or the profile's; an ARN's own region wins), and
    ``AWS_ENDPOINT_URL_SECRETS_MANAGER`` or ``AWS_ENDPOINT_URL``. Calls are bounded (2 s to
    connect, 5 s to read, one retry).
``X_FILE=/run/secrets/x``
    The file's content, a trailing newline stripped (Docker and Kubernetes secrets). Setting
    both ``X`` and ``X_FILE`` is an error.

A value that cannot be resolved stops start-up with a :class:`~orchestrator.errors.ConfigError`
of one line naming the variable and why (``STRIPE_API_KEY: aws-sm://prod/stripe#api_key:
secret not found``; ``STRIPE_API_KEY_FILE: cannot read /run/secrets/stripe: No such file or
directory``), never the value; the CLI exits 2 on it.

Once running, references and files are read again when older than
``ORCHESTRATOR_SECRETS_REFRESH_S`` (default 300): the first access after that starts the
refresh in a background thread, and every access meanwhile gets the last good value at once.
A refresh that fails, or whose new value fails the setting's validation, keeps the last good
value and logs ``secrets.refresh_failed`` (the variable and the reason, never a value); the
next try comes within 30 s. A new value is adopted for every reader of the field
(``settings.x.get_secret_value()`` included), and the value it replaced stays in
:meth:`SecretSettings.secret_values` for ``ORCHESTRATOR_SECRETS_OVERLAP_S`` (default 86400),
so webhooks signed with the old signing secret still verify during a rotation.

The API, for settings classes of other modules::

    from pydantic import AliasChoices, Field, SecretStr
    from orchestrator.secrets import SecretSettings, load_secret_settings

    class RazorpaySettings(SecretSettings):
        key_secret: SecretStr | None = Field(
            None, validation_alias=AliasChoices("RAZORPAY_KEY_SECRET")
        )
        webhook_secret: SecretStr | None = Field(
            None, validation_alias=AliasChoices("RAZORPAY_WEBHOOK_SECRET")
        )

    settings = load_secret_settings(RazorpaySettings)  # ConfigError naming the variable
    settings.require_secret("key_secret")      # the current value, or ConfigError if unset
    settings.secret_values("webhook_secret")   # current value(s) + those in their overlap

* :class:`SecretSettings` -- a ``pydantic_settings.BaseSettings`` (``extra="ignore"``,
  frozen) whose every ``SecretStr`` field takes references and ``X_FILE``; the variable is
  the field's ``validation_alias`` (its first name). It brings the two settings above and
  ``require_secret(name)``, ``secret_values(name)``, ``secret_source(name)``,
  ``refresh_secrets()`` (re-resolve all now; returns the variables that changed) and
  ``variable_of(name)``.
* :func:`load_secret_settings` -- ``cls(**overrides)`` (by field name) with validation errors
  turned into a one-line ConfigError, as ``orchestrator.config.load_settings`` does.
* :class:`SecretSource` -- one field's value, its refresh and its overlap (a clock and a
  thread starter can be passed in for tests); :class:`RotatingSecret` the ``SecretStr`` that
  reads through one.

Hold the settings object, not a value copied out of it: a value read once at start-up (a
client built with the key) does not follow a rotation. Read per call (the Stripe and SendGrid
providers take a callable and rebuild their SDK client when the key changes).
"""

from orchestrator.secrets.references import (
    AWS_SM_SCHEME,
    AwsReference,
    FileLocator,
    ResolveError,
    is_reference,
)
from orchestrator.secrets.settings import (
    RotatingSecret,
    SecretSettings,
    load_secret_settings,
    secret_fields,
)
from orchestrator.secrets.source import SecretSource, split_values

__all__ = [
    "AWS_SM_SCHEME",
    "AwsReference",
    "FileLocator",
    "ResolveError",
    "RotatingSecret",
    "SecretSettings",
    "SecretSource",
    "is_reference",
    "load_secret_settings",
    "secret_fields",
    "split_values",
]
