"""``SecretSettings``: pydantic-settings whose ``SecretStr`` fields may be references or files,
resolved before validation and kept current afterwards (see the package docstring).

Resolution happens in a wrap validator, ahead of field validation: a field's own validators
(an ops token's minimum length) judge the secret, not the reference naming it. Each field
that came from a reference or a file then holds a :class:`RotatingSecret` backed by a
:class:`~orchestrator.secrets.source.SecretSource`, so every reader of
``settings.x.get_secret_value()``, not only ``require_secret``, sees the current value.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from functools import partial
from typing import Any, Self, TypeVar, get_args

from pydantic import (
    AliasChoices,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from orchestrator.errors import ConfigError
from orchestrator.secrets.aws import SecretsManager
from orchestrator.secrets.references import (
    AwsLocator,
    AwsReference,
    FileLocator,
    Locator,
    ResolveError,
    SecretStore,
    is_reference,
)
from orchestrator.secrets.source import SecretSource, split_values

FILE_SUFFIX = "_FILE"
# Set while a rotated value is validated: its inputs are resolved values already. (Not the
# validation context: pydantic runs BaseSettings.__init__ inside model_validate, without it.)
_REVALIDATING: ContextVar[bool] = ContextVar("orchestrator_secrets_revalidating", default=False)

S = TypeVar("S", bound="SecretSettings")


class RotatingSecret(SecretStr):
    """A ``SecretStr`` whose value is its source's current one (looked up per read: a clock
    reading and a comparison, plus starting a refresh in the background once it is due)."""

    def __init__(self, source: SecretSource) -> None:
        super().__init__("")
        self._source = source

    @property
    def source(self) -> SecretSource:
        return self._source

    def get_secret_value(self) -> str:
        return self._source.value()

    def _display(self) -> str:
        return "**********"

    def __len__(self) -> int:
        return len(self._source.current)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretStr) and self.get_secret_value() == other.get_secret_value()

    def __hash__(self) -> int:
        return hash(self.get_secret_value())


class SecretSettings(BaseSettings):
    """Settings whose secrets may be ``aws-sm://`` references or ``X_FILE`` files, re-resolved
    every ``ORCHESTRATOR_SECRETS_REFRESH_S``. Every ``SecretStr`` field takes part; declare
    its variable as ``validation_alias`` (a name or ``AliasChoices``, first name used)."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    # How old a resolved reference or file may get before it is read again (rotation pickup).
    secrets_refresh_s: float = Field(
        300.0, gt=0, le=86400, validation_alias=AliasChoices("ORCHESTRATOR_SECRETS_REFRESH_S")
    )
    # After a rotation is seen, the value it replaced still counts in secret_values() this
    # long: webhooks signed with the previous signing secret keep verifying (0: not at all).
    secrets_overlap_s: float = Field(
        86400.0,
        ge=0,
        le=30 * 86400,
        validation_alias=AliasChoices("ORCHESTRATOR_SECRETS_OVERLAP_S"),
    )

    # The validated inputs, for checking a rotated value the way start-up checked the first.
    _secret_inputs: dict[str, Any] = PrivateAttr(default_factory=dict)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The environment's ``X_FILE`` variables join the inputs (a ``.env`` file's already
        do): the environment source only passes on variables that name a field."""
        file_variables = FileVariables(settings_cls)
        return init_settings, env_settings, file_variables, dotenv_settings, file_secret_settings

    @model_validator(mode="wrap")
    @classmethod
    def _resolve_secrets(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        if not isinstance(data, dict) or _REVALIDATING.get():
            return handler(data)
        resolved, located = _resolve_inputs(cls, data, SecretsManager())
        model = handler(resolved)
        model._track(resolved, located)
        return model

    @classmethod
    def variable_of(cls, name: str) -> str:
        """The environment variable of field ``name`` (KeyError for an unknown field)."""
        return _variable(cls, name, cls.model_fields[name])

    def require_secret(self, name: str) -> str:
        """The current value of secret setting ``name``; ConfigError naming its variable when
        it is not set."""
        value = getattr(self, name)
        secret: str = value.get_secret_value() if value is not None else ""
        if not secret:
            raise ConfigError(f"{self.variable_of(name)} is not set")
        return secret

    def secret_values(self, name: str) -> tuple[str, ...]:
        """Every value of secret setting ``name`` that counts now: the current one, split at
        commas (a list, e.g. webhook signing secrets during a rotation), then the values a
        rotation replaced less than ``ORCHESTRATOR_SECRETS_OVERLAP_S`` ago. () when unset."""
        value = getattr(self, name)
        if isinstance(value, RotatingSecret):
            return value.source.values()
        return split_values(value.get_secret_value()) if value is not None else ()

    def secret_source(self, name: str) -> SecretSource | None:
        """Where secret setting ``name`` is re-resolved from; None for a literal value."""
        value = getattr(self, name)
        return value.source if isinstance(value, RotatingSecret) else None

    def secret_sources(self) -> dict[str, SecretSource]:
        """Field name -> source, for every secret setting given as a reference or a file.
        (Read from the fields themselves: pydantic's private attributes cost microseconds.)"""
        found = {name: self.secret_source(name) for name in secret_fields(type(self))}
        return {name: source for name, source in found.items() if source is not None}

    def refresh_secrets(self) -> list[str]:
        """Re-resolve every reference and file now (not waiting for the interval); returns the
        variables whose value changed. A failure keeps the value and logs a warning."""
        return [s.variable for s in self.secret_sources().values() if s.refresh()]

    def _track(self, resolved: dict[str, Any], located: dict[str, _Located]) -> None:
        """Make each field that came from a reference or a file follow its source."""
        secret_keys = {key for name in secret_fields(type(self)) for key in _keys(type(self), name)}
        # Kept without the secrets: a check of a rotation takes them from the fields.
        self._secret_inputs.update({k: v for k, v in resolved.items() if k not in secret_keys})
        for name, found in located.items():
            initial = getattr(self, name)
            source = SecretSource(
                found.variable,
                found.locator,
                initial.get_secret_value(),
                refresh_s=self.secrets_refresh_s,
                overlap_s=self.secrets_overlap_s,
                check=partial(self._checked_rotation, name),
            )
            self.__dict__[name] = RotatingSecret(source)  # frozen: written past __setattr__

    def _checked_rotation(self, name: str, value: str) -> str:
        """``value`` for field ``name`` after the validation it would get at start-up, with
        every other secret at its current value (a rule may compare two of them)."""
        cls = type(self)
        inputs = dict(self._secret_inputs)
        for other in secret_fields(cls):
            current = getattr(self, other)
            if isinstance(current, RotatingSecret):
                inputs[_input_key(cls, other)] = current.source.current
            elif current is not None:
                inputs[_input_key(cls, other)] = current.get_secret_value()
        inputs[_input_key(cls, name)] = value
        revalidating = _REVALIDATING.set(True)
        try:
            checked = cls(**inputs)
        except ValidationError as exc:
            error = exc.errors()[0]
            where = error["loc"][0] if error["loc"] else "settings"
            # The type, not the message: a validator's message might quote the value.
            raise ResolveError(f"the new value is invalid ({where}: {error['type']})") from None
        finally:
            _REVALIDATING.reset(revalidating)
        result: str = getattr(checked, name).get_secret_value()
        return result


def load_secret_settings(cls: type[S], **overrides: object) -> S:
    """``cls`` read from the environment (``overrides`` by field name win); ConfigError with
    one line naming the variable at fault, never its value."""
    by_variable: dict[str, Any] = {cls.variable_of(k): v for k, v in overrides.items()}
    try:
        return cls(**by_variable)
    except ValidationError as exc:
        first = exc.errors()[0]
        location = first["loc"][0] if first["loc"] else "settings"
        message = "is not set" if first["type"] == "missing" else f"is invalid: {first['msg']}"
        raise ConfigError(f"{location} {message}") from None


class FileVariables(PydanticBaseSettingsSource):
    """``X_FILE`` from the process environment, for every secret field X."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads every variable at once

    def __call__(self) -> dict[str, Any]:
        cls = self.settings_cls
        sensitive = bool(self.config.get("case_sensitive", False))
        environ = os.environ if sensitive else {k.lower(): v for k, v in os.environ.items()}
        found: dict[str, Any] = {}
        for name in secret_fields(cls):
            variable = _variable(cls, name, cls.model_fields[name]) + FILE_SUFFIX
            key = variable if sensitive else variable.lower()
            if environ.get(key):
                found[key] = environ[key]
        return found


# -- resolving ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Located:
    variable: str  # the variable that was set: X for a reference, X_FILE for a file
    locator: Locator


class _MemoStore:
    """Start-up reads each secret once, however many settings name keys of it."""

    def __init__(self, store: SecretStore) -> None:
        self._store = store
        self._read: dict[str, str] = {}

    def secret_string(self, secret_id: str) -> str:
        if secret_id not in self._read:
            self._read[secret_id] = self._store.secret_string(secret_id)
        return self._read[secret_id]


def _resolve_inputs(
    cls: type[BaseSettings], data: dict[str, Any], store: SecretStore
) -> tuple[dict[str, Any], dict[str, _Located]]:
    """The inputs with every reference and file replaced by its value, and where each such
    value came from; ConfigError (one line, naming the variable) when one cannot be read."""
    resolved = dict(data)
    located: dict[str, _Located] = {}
    memo = _MemoStore(store)
    for name in secret_fields(cls):
        variable = _variable(cls, name, cls.model_fields[name])
        file_variable = variable + FILE_SUFFIX
        path = _pop_any(resolved, (file_variable, file_variable.lower()))
        key = _given_key(cls, name, resolved)
        raw = resolved.get(key) if key is not None else None
        text = raw.get_secret_value() if isinstance(raw, SecretStr) else raw
        if path is not None and str(path).strip():
            if text is not None:
                raise ConfigError(f"{variable} and {file_variable} are both set; set only one")
            if key is not None:  # an explicit None: the caller wants it unset
                continue
            file = FileLocator(str(path).strip())
            resolved[_input_key(cls, name)] = _first_value(file_variable, file, file.fetch)
            located[name] = _Located(file_variable, file)
        elif isinstance(text, str) and is_reference(text):
            reference = _parse(variable, text)
            aws = AwsLocator(reference, store)
            select = partial(reference.select_from, memo)
            resolved[key or _input_key(cls, name)] = _first_value(variable, aws, select)
            located[name] = _Located(variable, aws)
    return resolved, located


def _parse(variable: str, text: str) -> AwsReference:
    try:
        return AwsReference.parse(text)
    except ResolveError as exc:
        raise ConfigError(f"{variable}: {text.strip()}: {exc}") from None


def _first_value(variable: str, locator: Locator, fetch: Callable[[], str]) -> str:
    try:
        return fetch()
    except ResolveError as exc:
        where = "" if isinstance(locator, FileLocator) else f"{locator.described}: "
        raise ConfigError(f"{variable}: {where}{exc}") from None


def secret_fields(cls: type[BaseSettings]) -> tuple[str, ...]:
    """The fields typed ``SecretStr`` (or ``SecretStr | None``)."""
    return tuple(
        name
        for name, field in cls.model_fields.items()
        if field.annotation is SecretStr or SecretStr in get_args(field.annotation)
    )


def _variable(cls: type[BaseSettings], name: str, field: FieldInfo) -> str:
    alias = field.validation_alias
    if isinstance(alias, str):
        return alias
    if isinstance(alias, AliasChoices):
        for choice in alias.choices:
            if isinstance(choice, str):
                return choice
    return (str(cls.model_config.get("env_prefix", "")) + (field.alias or name)).upper()


def _input_key(cls: type[BaseSettings], name: str) -> str:
    """The key a value for field ``name`` is validated under."""
    field = cls.model_fields[name]
    alias = field.validation_alias
    if isinstance(alias, str | AliasChoices):
        return _variable(cls, name, field)
    return field.alias or name


def _keys(cls: type[BaseSettings], name: str) -> tuple[str, ...]:
    """Every key the inputs may give field ``name`` under."""
    field = cls.model_fields[name]
    alias = field.validation_alias
    choices = (
        [alias]
        if isinstance(alias, str)
        else [c for c in alias.choices if isinstance(c, str)]
        if isinstance(alias, AliasChoices)
        else []
    )
    return tuple(k for k in (*choices, field.alias, name) if k is not None)


def _given_key(cls: type[BaseSettings], name: str, data: dict[str, Any]) -> str | None:
    """The key under which the inputs give field ``name`` a value, if any."""
    return next((key for key in _keys(cls, name) if key in data), None)


def _pop_any(data: dict[str, Any], keys: tuple[str, ...]) -> Any:
    """Remove every one of ``keys`` (an X_FILE may come from the environment and from .env,
    in either case); the first present wins, as the first source did."""
    found = None
    for key in keys:
        if key in data:
            value = data.pop(key)
            found = value if found is None else found
    return found
