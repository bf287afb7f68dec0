"""Where a secret setting's value comes from: a reference, a file, or the variable itself.

A :class:`Locator` fetches the value afresh each time it is asked; a failure raises
:class:`ResolveError` whose message says why in words that never hold the value (a secret's
name, a JSON key and a file's path are not secret; what they contain is).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

AWS_SM_SCHEME = "aws-sm://"
# A secret is a few hundred bytes; a bigger file is a mistake (a log, /dev/zero), not a key.
MAX_FILE_BYTES = 64 * 1024


class ResolveError(Exception):
    """A secret could not be resolved. The message is the reason only, free of any value."""


class Locator(Protocol):
    """Fetches one secret value from where it lives."""

    @property
    def described(self) -> str:
        """Where the value lives, for messages (a reference or a path, never the value)."""
        ...

    def fetch(self) -> str:
        """The value as it is now; raises :class:`ResolveError`."""
        ...


class SecretStore(Protocol):
    """Reads a whole SecretString by secret name or ARN (``orchestrator.secrets.aws``)."""

    def secret_string(self, secret_id: str) -> str:
        """The secret's current SecretString; raises :class:`ResolveError`."""
        ...


def is_reference(text: str) -> bool:
    """Whether a setting's value is a reference to be resolved rather than the secret."""
    return text.strip().startswith(AWS_SM_SCHEME)


@dataclass(frozen=True)
class AwsReference:
    """``aws-sm://<name or ARN>`` (the whole SecretString) or ``aws-sm://<name>#<json key>``
    (one key of a SecretString holding a JSON object)."""

    secret_id: str
    json_key: str | None = None

    @classmethod
    def parse(cls, text: str) -> AwsReference:
        """Secret names and ARNs cannot contain ``#``, so the first one starts the key."""
        body = text.strip()
        if not body.startswith(AWS_SM_SCHEME):
            raise ResolveError(f"expected {AWS_SM_SCHEME}<secret>[#<json key>]")
        secret_id, sep, key = body[len(AWS_SM_SCHEME) :].partition("#")
        if not secret_id.strip():
            raise ResolveError("the reference names no secret")
        if sep and not key.strip():
            raise ResolveError("the reference has an empty JSON key after '#'")
        return cls(secret_id.strip(), key.strip() if sep else None)

    def __str__(self) -> str:
        key = f"#{self.json_key}" if self.json_key is not None else ""
        return f"{AWS_SM_SCHEME}{self.secret_id}{key}"

    def select_from(self, store: SecretStore) -> str:
        """The referenced value as ``store`` holds it now."""
        return self.select(store.secret_string(self.secret_id))

    def select(self, secret_string: str) -> str:
        """The referenced value out of the secret's SecretString."""
        if self.json_key is None:
            return _non_empty(secret_string, "the secret is empty")
        try:
            document = json.loads(secret_string)
        except ValueError:
            raise ResolveError("the secret is not JSON, so it has no keys") from None
        if not isinstance(document, dict):
            raise ResolveError("the secret is not a JSON object, so it has no keys")
        if self.json_key not in document:
            raise ResolveError(f"the secret has no key {self.json_key!r}")
        value = document[self.json_key]
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ResolveError(f"the secret's key {self.json_key!r} is not a string")
        return _non_empty(str(value), f"the secret's key {self.json_key!r} is empty")


@dataclass(frozen=True)
class AwsLocator:
    """A reference resolved through a Secrets Manager client."""

    reference: AwsReference
    store: SecretStore

    @property
    def described(self) -> str:
        return str(self.reference)

    def fetch(self) -> str:
        return self.reference.select_from(self.store)


@dataclass(frozen=True)
class FileLocator:
    """A file holding the value (``X_FILE=/run/secrets/x``): Docker and Kubernetes secrets,
    whose mounted files are replaced in place when the secret changes."""

    path: str

    @property
    def described(self) -> str:
        return self.path

    def fetch(self) -> str:
        try:
            with Path(self.path).open("rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise ResolveError(f"cannot read {self.path}: {reason}") from None
        if len(data) > MAX_FILE_BYTES:
            raise ResolveError(f"{self.path} is larger than {MAX_FILE_BYTES} bytes")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ResolveError(f"{self.path} is not UTF-8 text") from None
        # Editors and `echo` end a file with a newline that is no part of the secret.
        return _non_empty(text.rstrip("\r\n"), f"{self.path} is empty")


def _non_empty(value: str, problem: str) -> str:
    if not value:
        raise ResolveError(problem)
    return value
