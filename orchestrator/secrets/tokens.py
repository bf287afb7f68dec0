"""Bearer tokens read per request, so a rotated token (a reference or a file re-read by
:class:`~orchestrator.secrets.SecretSettings`) applies without restarting the web process."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

# A token as the web surfaces take it: a value, a reader of the current value, or none.
Token: TypeAlias = str | Callable[[], str | None] | None


def token_reader(token: Token) -> Callable[[], bytes | None]:
    """The current token as bytes (None: no token configured, so every request is refused)."""
    if callable(token):
        read = token

        def current() -> bytes | None:
            value = read()
            return value.encode() if value else None

        return current
    fixed = token.encode() if token else None
    return lambda: fixed


def setting_token(settings: object, name: str) -> Callable[[], str | None]:
    """A reader of the secret setting ``name`` (None when unset) for :func:`token_reader`."""

    def read() -> str | None:
        value = getattr(settings, name)
        return value.get_secret_value() if value is not None else None

    return read
