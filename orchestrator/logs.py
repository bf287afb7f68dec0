"""Structured logging: JSON when not on a terminal, console on one; secrets always redacted.

Events are named ``area.noun_verbed`` with data as fields. Context (job id, kind, provider,
attempt) is bound with contextvars and cleared at the start of each message, since dramatiq
reuses threads. Tracebacks never carry frame locals, and :func:`redact` scrubs API keys,
webhook secrets, bearer tokens and card numbers from every event, stdlib records included.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, Protocol, TextIO

import structlog
from structlog.tracebacks import ExceptionDictTransformer
from structlog.types import EventDict, Processor

REDACTED = "[redacted]"
_SECRET_KEY_RE = re.compile(
    r"(secret|password|passwd|api_key|apikey|token|authorization|card_number|cvc|cvv|pan)$",
    re.IGNORECASE,
)
_SECRET_VALUE_RES = [
    re.compile(r"\b(?:sk|rk|pk)_(?:test|live)_[A-Za-z0-9]{4,}"),  # Stripe keys
    re.compile(r"\bwhsec_[A-Za-z0-9+/=]{4,}"),  # Stripe webhook secrets
    re.compile(r"\b(?:pi|seti)_[A-Za-z0-9]+_secret_[A-Za-z0-9]+"),  # client secrets
    re.compile(r"\bSG\.[A-Za-z0-9_\-]{4,}(?:\.[A-Za-z0-9_\-]+)?"),  # SendGrid keys
    re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=\-]{8,}"),  # bearer tokens
    re.compile(r"(?<=://)[^/\s:@]+:[^/\s@]+(?=@)"),  # user:password in URLs
]
# 13-19 digits, optionally grouped by spaces or dashes: the shape of a card number (PAN).
_PAN_RE = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
_MAX_DEPTH = 6
# What each pattern above needs in the lower-cased text: an ASCII string with none of these
# (and fewer than 13 digits) is returned as it is, without running them, and most values
# logged (ids, states, reasons) are such strings. Any other string takes every pattern: \d
# matches the digits of every script.
_SECRET_MARKERS = ("_test_", "_live_", "whsec_", "_secret_", "sg.", "bearer", "://")
# At least 13 digits anywhere in an ASCII string (the least a card number has); matched from
# the start only, so it costs one pass whatever the string.
_ENOUGH_DIGITS_RE = re.compile(r"(?:[^0-9]*[0-9]){13}")


def redact_text(text: str) -> str:
    ascii_only = text.isascii()
    if not ascii_only or any(map(text.lower().__contains__, _SECRET_MARKERS)):
        for pattern in _SECRET_VALUE_RES:
            text = pattern.sub(REDACTED, text)
    if not ascii_only or _ENOUGH_DIGITS_RE.match(text):
        text = _PAN_RE.sub(_mask_pan, text)
    return text


def _mask_pan(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    return REDACTED if _luhn_ok(digits) or len(digits) == 16 else match.group(0)


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch)
        if i % 2 == 1:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


# Types that never hold anything to redact: returned at once, before the costlier checks.
_PLAIN_TYPES = frozenset({int, float, bool, type(None)})


def _scrub(value: Any, depth: int = 0) -> Any:
    if depth > _MAX_DEPTH or type(value) in _PLAIN_TYPES:
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, MutableMapping):
        return {
            k: REDACTED if isinstance(k, str) and _secret_key(k) else _scrub(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_scrub(v, depth + 1) for v in value]
    if hasattr(value, "get_secret_value"):
        return REDACTED
    return value


@functools.lru_cache(maxsize=1024)
def _secret_key(key: str) -> bool:
    """Whether a field of this name holds a secret (field names repeat: the answer is kept)."""
    return _SECRET_KEY_RE.search(key) is not None


def redact(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: scrub secrets and card numbers from every field, nested ones too."""
    scrubbed: EventDict = _scrub(event_dict)
    return scrubbed


class Stream(Protocol):
    """Where log lines go: stderr, a file, anything a ``logging.StreamHandler`` writes to."""

    def write(self, text: str, /) -> int: ...
    def flush(self) -> None: ...
    def isatty(self) -> bool: ...


def _use_json(fmt: str, stream: Stream) -> bool:
    if fmt == "json":
        return True
    if fmt == "console":
        return False
    return not stream.isatty()


_SHARED: list[Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def make_handler(stream: Stream | None, fmt: str = "auto") -> logging.Handler:
    """A stdlib handler rendering every record (ours and libraries') through the pipeline, to
    ``stream``; None: to whatever ``sys.stderr`` is when a record is written."""
    renderer: Processor
    target = sys.stderr if stream is None else stream  # what auto format and colours look at
    if _use_json(fmt, target):
        tracebacks: Processor = structlog.processors.ExceptionRenderer(
            ExceptionDictTransformer(show_locals=False)
        )
        renderer = structlog.processors.JSONRenderer()
    else:
        tracebacks = structlog.processors.format_exc_info
        renderer = structlog.dev.ConsoleRenderer(colors=target.isatty())
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            tracebacks,
            redact,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.setFormatter(formatter)
    return handler


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to ``sys.stderr`` as it is when each record is written, not as it was when
    logging was configured: a stream swapped in meanwhile (by an embedding application, or a
    test's capture that is closed later) never leaves the handler writing to a closed file."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def configure_logging(fmt: str = "auto", level: str = "info", stream: Stream | None = None) -> None:
    """Configure structlog and route stdlib logging (dramatiq, psycopg) through it, to
    ``stream`` (default stderr)."""
    structlog.configure(
        # Drop events below the level before any processor runs (they cost nothing then).
        processors=[
            structlog.stdlib.filter_by_level,
            *_SHARED,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = make_handler(stream, fmt)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The stripe SDK logs request lines at INFO; keep it to warnings. SendGrid's HTTP client
    # logs whole payloads and headers (addresses, bodies, the API key) at DEBUG: never below
    # warnings, whatever ORCHESTRATOR_LOG_LEVEL says. Every registered provider names its
    # SDK's loggers (ProviderSpec.sdk_loggers).
    for name in {*QUIET_LOGGERS, *_provider_sdk_loggers()}:
        logging.getLogger(name).setLevel(logging.WARNING)


# Quiet whatever the registry says: the SDKs of the built-in providers.
QUIET_LOGGERS = ("stripe", "python_http_client")


def _provider_sdk_loggers() -> set[str]:
    from orchestrator.providers.registry import provider_names, spec

    names: set[str] = set()
    for provider in provider_names():
        # A broken third-party provider fails where it is used, not in logging's set-up.
        with contextlib.suppress(Exception):
            names.update(spec(provider).sdk_loggers)
    return names


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger


def bind_job(job_id: str, **fields: Any) -> None:
    """Start a fresh log context for one message (threads are reused)."""
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(job_id=job_id, **fields)
