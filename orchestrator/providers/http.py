"""What every provider's HTTP answers need read the same way: headers, Retry-After, and error
messages cut to what a job row keeps."""

from __future__ import annotations

from typing import Any

# Provider error messages are stored on the job (last_error): bounded, like every text column.
MAX_ERROR_MESSAGE_CHARS = 500


def clip(message: str) -> str:
    """A provider's message, cut to what a job row keeps."""
    return message[:MAX_ERROR_MESSAGE_CHARS]


def header(headers: Any, name: str) -> str | None:
    """A response header by name, case-insensitively, from a mapping or an HTTPMessage."""
    if not headers:
        return None
    wanted = name.lower()
    for key, value in headers.items():
        if str(key).lower() == wanted:
            return str(value) if value else None
    return None


def retry_after_s(headers: Any) -> float | None:
    """A ``Retry-After`` header in seconds (never negative); None when absent or a date."""
    value = header(headers, "Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
