"""What a provider call's outcome tells the breaker (the one place that decides).

5xx, timeouts and connection failures are failures; successes, pending results and
permanent refusals (declines, validation, auth) show a healthy provider; a 429 only feeds
the rate limiter; a 409 proves nothing.
"""

from __future__ import annotations

import enum

from orchestrator.models import AttemptOutcome
from orchestrator.providers.base import Outcome


class Signal(enum.StrEnum):
    """What one provider call says about the provider's health."""

    SUCCESS = "success"
    FAILURE = "failure"
    NEUTRAL = "neutral"
    RATE_LIMITED = "rate_limited"


def signal_of(outcome: Outcome) -> Signal:
    """Classify an attempt's outcome for the breaker (the one place that decides)."""
    kind = outcome.kind
    status = outcome.http_status
    if kind in (AttemptOutcome.SUCCEEDED, AttemptOutcome.PENDING, AttemptOutcome.PERMANENT):
        return Signal.SUCCESS
    if status == 429 or outcome.error_code == "rate_limited":
        # A throttle however it is spelled (SES's v1 Throttling comes as a 400).
        return Signal.RATE_LIMITED
    if status is not None and status >= 500:
        return Signal.FAILURE
    if kind is AttemptOutcome.AMBIGUOUS:
        # No response at all is a failure; a 4xx classified ambiguous (an idempotency
        # mismatch: our bug) came from a healthy provider.
        return Signal.FAILURE if status is None else Signal.NEUTRAL
    return Signal.FAILURE if outcome.error_code == "connect_failed" else Signal.NEUTRAL


def signal_of_lookup_failure(exc: BaseException) -> Signal:
    """Classify a failed lookup from the HTTP status of the provider error behind it."""
    status = getattr(exc.__cause__, "http_status", None)
    if status == 429:
        return Signal.RATE_LIMITED
    if isinstance(status, int) and status < 500:
        return Signal.NEUTRAL  # the provider answered: a 404 or 400 says nothing of health
    return Signal.FAILURE
