"""What every provider module implements, and the outcome of one provider call.

A provider is one module: it executes a job with a given idempotency key, looks a job's
object up, and maps its SDK's exceptions to an :class:`Outcome` in exactly one place. The
executor never sees a foreign exception.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from orchestrator.models import AttemptOutcome, Job

# Ambiguity causes (jobs.unknown_cause).
NO_RESPONSE = "no_response"  # nothing came back: resending the same key is safe
SERVER_ERROR = "server_error"  # a 5xx was saved against the key: only a lookup settles it


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one provider call (or lookup) ended, classified for the executor."""

    kind: AttemptOutcome
    provider_ref: str | None = None
    provider_status: str | None = None
    error_class: str | None = None
    error_code: str | None = None
    message: str | None = None
    http_status: int | None = None
    request_id: str | None = None
    retry_after_s: float | None = None
    unknown_cause: str | None = None
    # What the app needs to finish with the customer (e.g. a PaymentIntent's next_action and
    # client_secret when it requires_action); stored on the job, never logged.
    details: Mapping[str, Any] | None = None

    @property
    def error_summary(self) -> str | None:
        if self.error_class is None:
            return None
        parts = [self.error_class]
        if self.http_status:
            parts.append(f"HTTP {self.http_status}")
        if self.error_code:
            parts.append(self.error_code)
        head = " ".join(parts)
        return f"{head}: {self.message}" if self.message else head


class Provider(Protocol):
    """One external service. Implementations must be safe to share between threads."""

    name: str
    # Whether the provider saves and replays results per idempotency key (Stripe does,
    # SendGrid does not). Without it, an ambiguous outcome is never retried blindly.
    honours_idempotency_keys: bool

    def execute(self, job: Job, idempotency_key: str) -> Outcome:
        """Make the job's call once. Never raises for a provider or network failure."""
        ...

    def lookup(self, job: Job) -> Outcome | None:
        """The job's object at the provider, or None when nothing is found."""
        ...

    def lookup_is_consistent(self, job: Job) -> bool:
        """Whether :meth:`lookup` returning None proves, right away, that the provider holds
        nothing for the job (a strongly consistent read); else absence is concluded only once
        the search grace has passed since the last attempt finished."""
        ...
