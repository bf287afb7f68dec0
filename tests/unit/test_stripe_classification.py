"""stripe exceptions mapped to outcomes, in one place, with no exception left unmapped."""

from __future__ import annotations

import http.client
from typing import Any

import pytest
import requests
import stripe
import urllib3

from orchestrator.models import AttemptOutcome
from orchestrator.providers.base import NO_RESPONSE, SERVER_ERROR
from orchestrator.providers.stripe import classify_error


def _err(
    cls: type[stripe.StripeError],
    status: int | None,
    headers: dict[str, str] | None = None,
    code: str | None = None,
    body: dict[str, Any] | None = None,
) -> stripe.StripeError:
    kwargs: dict[str, Any] = {
        "http_status": status,
        "headers": headers or {},
        "json_body": body,
        "code": code,
    }
    if cls is stripe.CardError:
        return stripe.CardError(
            "declined",
            None,
            code or "card_declined",
            **{k: v for k, v in kwargs.items() if k != "code"},
        )
    if cls in (stripe.InvalidRequestError, stripe.IdempotencyError):
        return cls("bad", None, **kwargs)  # type: ignore[call-arg]
    return cls("boom", **kwargs)  # type: ignore[call-arg]


def _connection_error(cause: BaseException) -> stripe.APIConnectionError:
    try:
        raise stripe.APIConnectionError("network") from cause
    except stripe.APIConnectionError as exc:
        return exc


@pytest.mark.parametrize(
    ("exc", "kind", "cause"),
    [
        (_err(stripe.CardError, 402), AttemptOutcome.PERMANENT, None),
        (_err(stripe.InvalidRequestError, 400), AttemptOutcome.PERMANENT, None),
        (_err(stripe.AuthenticationError, 401), AttemptOutcome.PERMANENT, None),
        (_err(stripe.PermissionError, 403), AttemptOutcome.PERMANENT, None),
        (_err(stripe.RateLimitError, 429, {"Retry-After": "3"}), AttemptOutcome.NOT_EXECUTED, None),
        (
            _err(stripe.APIError, 409, code="idempotency_key_in_use"),
            AttemptOutcome.NOT_EXECUTED,
            None,
        ),
        (_err(stripe.APIError, 500), AttemptOutcome.AMBIGUOUS, SERVER_ERROR),
        (
            _err(stripe.APIError, 503, {"Stripe-Should-Retry": "true"}),
            AttemptOutcome.NOT_EXECUTED,
            None,
        ),
        (_err(stripe.IdempotencyError, 400), AttemptOutcome.AMBIGUOUS, SERVER_ERROR),
        (
            _connection_error(requests.exceptions.ReadTimeout()),
            AttemptOutcome.AMBIGUOUS,
            NO_RESPONSE,
        ),
        (
            _connection_error(requests.exceptions.ConnectionError("Connection aborted.")),
            AttemptOutcome.AMBIGUOUS,
            NO_RESPONSE,
        ),
        (
            _connection_error(requests.exceptions.ConnectTimeout()),
            AttemptOutcome.NOT_EXECUTED,
            None,
        ),
        (
            _connection_error(requests.exceptions.ConnectionError(ConnectionRefusedError(111))),
            AttemptOutcome.NOT_EXECUTED,
            None,
        ),
        (
            _connection_error(urllib3.exceptions.ReadTimeoutError(None, "/", "timed out")),  # type: ignore[arg-type]
            AttemptOutcome.AMBIGUOUS,
            NO_RESPONSE,
        ),
        (
            _connection_error(
                urllib3.exceptions.ProtocolError(
                    "Connection aborted.", http.client.RemoteDisconnected("closed")
                )
            ),
            AttemptOutcome.AMBIGUOUS,
            NO_RESPONSE,
        ),
        (
            _connection_error(urllib3.exceptions.ConnectTimeoutError()),
            AttemptOutcome.NOT_EXECUTED,
            None,
        ),
        (
            _connection_error(urllib3.exceptions.NewConnectionError(None, "refused")),  # type: ignore[arg-type]
            AttemptOutcome.NOT_EXECUTED,
            None,
        ),
    ],
    ids=[
        "card",
        "invalid",
        "auth",
        "permission",
        "429",
        "409-in-use",
        "500",
        "503-should-retry",
        "idempotency-mismatch",
        "read-timeout",
        "cut",
        "connect-timeout",
        "refused",
        "urllib3-read-timeout",
        "urllib3-cut",
        "urllib3-connect-timeout",
        "urllib3-refused",
    ],
)
def test_classification(exc: stripe.StripeError, kind: AttemptOutcome, cause: str | None) -> None:
    """Declines and bad requests are permanent; 429/409/unsent are not executed; timeouts,
    cuts and 5xx are ambiguous with the cause that decides how they are resolved."""
    outcome = classify_error(exc)
    assert outcome.kind is kind
    assert outcome.unknown_cause == cause
    assert outcome.error_class == type(exc).__name__


def test_retry_after_is_honoured() -> None:
    """A 429's Retry-After becomes the minimum wait before the next attempt."""
    outcome = classify_error(_err(stripe.RateLimitError, 429, {"Retry-After": "3"}))
    assert outcome.retry_after_s == 3.0


def test_decline_code_and_payment_intent_are_kept() -> None:
    """A decline keeps Stripe's decline code and the PaymentIntent it created."""
    body = {"error": {"decline_code": "insufficient_funds", "payment_intent": {"id": "pi_9"}}}
    outcome = classify_error(_err(stripe.CardError, 402, body=body))
    assert outcome.error_code == "insufficient_funds"
    assert outcome.provider_ref == "pi_9"


def _all_subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub, *_all_subclasses(sub)}
    return found


def test_every_stripe_exception_is_mapped() -> None:
    """Every StripeError subclass the SDK defines classifies without raising."""
    for cls in sorted(_all_subclasses(stripe.StripeError), key=lambda c: c.__name__):
        try:
            exc = cls("x")
        except TypeError:
            exc = cls("x", None, "code")
        outcome = classify_error(exc)
        assert outcome.kind in AttemptOutcome


def test_a_real_refused_connection_is_not_executed() -> None:
    """The SDK against a closed local port: nothing was sent, so the job may simply retry."""
    client = stripe.StripeClient(
        "sk_test_x",
        base_addresses={"api": "http://127.0.0.1:9"},
        http_client=stripe.RequestsClient(timeout=(1, 1)),
    )
    with pytest.raises(stripe.APIConnectionError) as info:
        client.v1.payment_intents.create({"amount": 1, "currency": "usd"})
    outcome = classify_error(info.value)
    assert outcome.kind is AttemptOutcome.NOT_EXECUTED
    assert outcome.error_code == "connect_failed"


def test_outcomes_are_read_from_plain_json() -> None:
    """A PaymentIntent or Refund as JSON (what the create call and webhooks hand over)."""
    from orchestrator.providers.stripe import outcome_of_intent, outcome_of_refund

    failed = outcome_of_intent(
        {
            "id": "pi_1",
            "status": "requires_payment_method",
            "last_payment_error": {"code": "card_declined", "decline_code": "insufficient_funds"},
        },
        "req_1",
    )
    assert (failed.kind, failed.error_code, failed.provider_ref, failed.request_id) == (
        AttemptOutcome.PERMANENT,
        "insufficient_funds",
        "pi_1",
        "req_1",
    )
    assert outcome_of_intent({"id": "pi_2", "status": "succeeded"}, None).kind is (
        AttemptOutcome.SUCCEEDED
    )
    refund = outcome_of_refund({"id": "re_1", "status": "failed", "failure_reason": "x"}, None)
    assert (refund.kind, refund.error_code) == (AttemptOutcome.PERMANENT, "x")


def test_a_success_status_with_an_unreadable_body_is_ambiguous() -> None:
    """A 200 whose body is no PaymentIntent (a proxy's page, a truncated answer): the charge
    may have happened, so the job is looked up rather than charged again or failed."""
    from orchestrator.models import Job
    from orchestrator.providers.stripe import StripeProvider
    from tests.json_server import json_server

    with json_server(b'{"object": "list"}') as (url, _):
        provider = StripeProvider(
            "sk_test_unreadable", api_base=url, connect_timeout_s=2, read_timeout_s=2
        )
        job = Job.from_row(
            {
                **{name: None for name in Job.__dataclass_fields__},
                "id": "3f1e3c55-6d0e-4a53-9f7e-2b9c4d1e0a11",
                "kind": "charge",
                "provider": "stripe",
                "state": "running",
                "amount": 1000,
                "currency": "usd",
                "payment_method": "pm_card_visa",
                "params": {"metadata": {}},
                "key_generation": 0,
                "attempts": 1,
            }
        )
        outcome = provider.execute(job, "orch-x-g0")
    assert (outcome.kind, outcome.unknown_cause) == (AttemptOutcome.AMBIGUOUS, SERVER_ERROR)
