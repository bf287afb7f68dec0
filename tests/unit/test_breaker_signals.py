"""What each provider outcome tells the breaker, and the rate-limit setting's format."""

from __future__ import annotations

import pytest

from orchestrator.breaker import Signal, signal_of, signal_of_lookup_failure
from orchestrator.config import parse_rate_limits
from orchestrator.errors import ProviderUnavailable
from orchestrator.models import AttemptOutcome
from orchestrator.providers.base import NO_RESPONSE, SERVER_ERROR, Outcome

A = AttemptOutcome
CASES = [
    ("success", Outcome(A.SUCCEEDED), Signal.SUCCESS),
    ("pending", Outcome(A.PENDING), Signal.SUCCESS),
    ("card declined", Outcome(A.PERMANENT, http_status=402), Signal.SUCCESS),
    ("invalid request", Outcome(A.PERMANENT, http_status=400), Signal.SUCCESS),
    (
        "5xx saved",
        Outcome(A.AMBIGUOUS, http_status=503, unknown_cause=SERVER_ERROR),
        Signal.FAILURE,
    ),
    ("read timeout", Outcome(A.AMBIGUOUS, unknown_cause=NO_RESPONSE), Signal.FAILURE),
    ("connect failed", Outcome(A.NOT_EXECUTED, error_code="connect_failed"), Signal.FAILURE),
    ("5xx should-retry", Outcome(A.NOT_EXECUTED, http_status=500), Signal.FAILURE),
    ("429", Outcome(A.NOT_EXECUTED, http_status=429, retry_after_s=1.0), Signal.RATE_LIMITED),
    (
        "throttled as a 400 (SES v1 Throttling)",
        Outcome(A.NOT_EXECUTED, http_status=400, error_code="rate_limited"),
        Signal.RATE_LIMITED,
    ),
    ("409 key in use", Outcome(A.NOT_EXECUTED, http_status=409), Signal.NEUTRAL),
    ("idempotency mismatch", Outcome(A.AMBIGUOUS, http_status=400), Signal.NEUTRAL),
]


@pytest.mark.parametrize(("case", "outcome", "expected"), CASES, ids=[c[0] for c in CASES])
def test_signal_of_outcome(case: str, outcome: Outcome, expected: Signal) -> None:
    """5xx, timeouts and connection failures are failures; declines and validation errors
    show a healthy provider; 429 goes to the rate limiter; 409 proves nothing."""
    assert signal_of(outcome) is expected


class _HttpError(Exception):
    def __init__(self, status: int | None) -> None:
        self.http_status = status


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (None, Signal.FAILURE),
        (502, Signal.FAILURE),
        (429, Signal.RATE_LIMITED),
        (404, Signal.NEUTRAL),
    ],
)
def test_signal_of_failed_lookup(status: int | None, expected: Signal) -> None:
    """A lookup that failed is classified by the HTTP status of the error behind it."""
    try:
        raise ProviderUnavailable("lookup failed") from _HttpError(status)
    except ProviderUnavailable as exc:
        assert signal_of_lookup_failure(exc) is expected


def test_rate_limits_parse_and_reject_garbage() -> None:
    """`stripe=100,sendgrid=600` parses to calls per second; a malformed entry is refused."""
    assert parse_rate_limits(" stripe=100, sendgrid=600 ,") == {"stripe": 100.0, "sendgrid": 600.0}
    assert parse_rate_limits("") == {}
    for bad in ("stripe", "stripe=fast", "=5", "stripe=-1"):
        with pytest.raises(ValueError):
            parse_rate_limits(bad)
