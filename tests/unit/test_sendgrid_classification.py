"""SendGrid SDK exceptions mapped to outcomes, in one place, with no exception left unmapped."""

from __future__ import annotations

import http.client
import urllib.error
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.message import Message

import pytest
import python_http_client.exceptions as sg_errors
import sendgrid

from orchestrator.executor import decide_lookup
from orchestrator.models import AttemptOutcome, JobKind, JobState
from orchestrator.providers.sendgrid import classify_error, mail_body, outcome_of_response
from tests.unit.test_decisions import make_job


def _http_error(status: int, headers: dict[str, str] | None = None) -> sg_errors.HTTPError:
    cls = sg_errors.err_dict.get(status, sg_errors.HTTPError)
    body = b'{"errors": [{"message": "The from email does not contain a valid address.", '
    body += b'"field": "from.email"}]}'
    return cls(status, "reason", body, headers or {})


@pytest.mark.parametrize(
    ("exc", "kind", "code"),
    [
        (_http_error(400), AttemptOutcome.PERMANENT, "http_400"),
        (_http_error(401), AttemptOutcome.PERMANENT, "http_401"),
        (_http_error(403), AttemptOutcome.PERMANENT, "http_403"),
        (_http_error(404), AttemptOutcome.PERMANENT, "http_404"),
        (_http_error(405), AttemptOutcome.PERMANENT, "http_405"),
        (_http_error(413), AttemptOutcome.PERMANENT, "http_413"),
        (_http_error(415), AttemptOutcome.PERMANENT, "http_415"),
        (_http_error(429, {"Retry-After": "2"}), AttemptOutcome.NOT_EXECUTED, "rate_limited"),
        (_http_error(503), AttemptOutcome.NOT_EXECUTED, "http_503"),
        (_http_error(500), AttemptOutcome.AMBIGUOUS, "http_500"),
        (_http_error(502), AttemptOutcome.AMBIGUOUS, "http_502"),
        (_http_error(504), AttemptOutcome.AMBIGUOUS, "http_504"),
        (
            urllib.error.URLError(ConnectionRefusedError(111, "refused")),
            AttemptOutcome.NOT_EXECUTED,
            "connect_failed",
        ),
        (urllib.error.URLError(TimeoutError("timed out")), AttemptOutcome.NOT_EXECUTED, None),
        (ConnectionRefusedError(111, "refused"), AttemptOutcome.NOT_EXECUTED, "connect_failed"),
        (TimeoutError("timed out"), AttemptOutcome.AMBIGUOUS, "read_timeout"),
        (http.client.RemoteDisconnected("closed"), AttemptOutcome.AMBIGUOUS, "no_response"),
        (ConnectionResetError(104, "reset"), AttemptOutcome.AMBIGUOUS, "no_response"),
        (http.client.IncompleteRead(b""), AttemptOutcome.AMBIGUOUS, "no_response"),
        (RuntimeError("bug"), AttemptOutcome.AMBIGUOUS, "unexpected_error"),
    ],
    ids=[
        "400",
        "401",
        "403",
        "404",
        "405",
        "413",
        "415",
        "429",
        "503",
        "500",
        "502",
        "504",
        "url-refused",
        "url-connect-timeout",
        "raw-refused",
        "read-timeout",
        "remote-disconnected",
        "reset",
        "incomplete-read",
        "unexpected",
    ],
)
def test_classification(exc: BaseException, kind: AttemptOutcome, code: str | None) -> None:
    """Refusals are permanent; 429, 503 and unsent requests are not executed; anything that
    may have delivered (read timeout, cut after sending, other 5xx, unknown errors) is
    ambiguous, which for a provider without idempotency keys means never resent blindly."""
    outcome = classify_error(exc)
    assert outcome.kind is kind
    assert outcome.error_class == type(exc).__name__
    if code is not None:
        assert outcome.error_code == code


def test_error_body_and_retry_after_are_kept() -> None:
    """SendGrid's error list becomes the message; a 429's Retry-After the minimum wait."""
    outcome = classify_error(_http_error(400))
    assert outcome.message == "from.email: The from email does not contain a valid address."
    assert outcome.http_status == 400
    assert classify_error(_http_error(429, {"Retry-After": "2"})).retry_after_s == 2.0


def _all_subclasses(cls: type) -> set[type]:
    found: set[type] = set()
    subclasses: list[type] = cls.__subclasses__()
    for sub in subclasses:
        found |= {sub, *_all_subclasses(sub)}
    return found


def test_every_sdk_exception_is_mapped() -> None:
    """Every HTTPError class python_http_client defines (each in its status table, and any
    other subclass) classifies without raising and keeps its class name."""
    classes = {sg_errors.HTTPError, *_all_subclasses(sg_errors.HTTPError)}
    by_class = {cls: status for status, cls in sg_errors.err_dict.items()}
    assert set(by_class) <= classes
    for cls in sorted(classes, key=lambda c: c.__name__):
        exc = cls(by_class.get(cls, 418), "reason", b"not json", {})
        outcome = classify_error(exc)
        assert outcome.kind in AttemptOutcome
        assert outcome.error_class == cls.__name__


def test_a_real_refused_connection_is_not_executed() -> None:
    """The SDK against a closed local port: nothing was sent, so the send may simply retry."""
    client = sendgrid.SendGridAPIClient("SG.x", host="http://127.0.0.1:9")
    client.client.timeout = 1
    with pytest.raises(urllib.error.URLError) as info:
        client.send({"personalizations": []})
    outcome = classify_error(info.value)
    assert outcome.kind is AttemptOutcome.NOT_EXECUTED
    assert outcome.error_code == "connect_failed"


def test_mail_body_carries_the_job_id_and_is_stable() -> None:
    """Every message carries custom_args.orchestrator_job_id; body or template, never both."""
    plain = make_job(
        kind=JobKind.EMAIL,
        provider="sendgrid",
        params={"to": ["a@example.com"], "from": "b@example.com", "subject": "Hi", "body": "x"},
    )
    body = mail_body(plain)
    assert body == mail_body(plain)
    assert body["custom_args"] == {"orchestrator_job_id": plain.id}
    assert body["content"] == [{"type": "text/plain", "value": "x"}]
    assert "template_id" not in body
    templated = replace(
        plain,
        params={
            "to": ["a@example.com"],
            "from": "b@example.com",
            "template": "d-" + "0" * 32,
            "template_data": {"n": 1},
        },
    )
    body = mail_body(templated)
    assert body["template_id"] == "d-" + "0" * 32
    assert body["personalizations"][0]["dynamic_template_data"] == {"n": 1}
    assert "content" not in body and "subject" not in body


def test_accepted_send_is_a_success_named_by_the_message_id() -> None:
    """A 202 succeeds with X-Message-Id (looked up case-insensitively) as the provider ref."""
    headers = Message()
    headers["x-message-id"] = "abc123"
    outcome = outcome_of_response(make_job(), 202, headers)  # type: ignore[arg-type]
    assert outcome.kind is AttemptOutcome.SUCCEEDED
    assert outcome.provider_ref == "abc123"


def test_unknown_send_is_dead_unless_at_least_once() -> None:
    """A send whose worker died mid-call can't be proven either way: dead `ambiguous` after
    the grace, unless the job opted into at-least-once delivery, which retries it."""
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    job = make_job(
        kind=JobKind.EMAIL,
        provider="sendgrid",
        state=JobState.UNKNOWN,
        unknown_cause="lease_expired",
        last_attempt_at=now - timedelta(seconds=120),
        deadline_at=now + timedelta(hours=1),
    )
    args = {"search_grace_s": 60.0, "honours_keys": False, "processing_poll_s": 1.0}
    dead = decide_lookup(job, None, now, **args)  # type: ignore[arg-type]
    assert not isinstance(dead, float)
    assert (dead.to_state, dead.dead_reason) == (JobState.DEAD, "ambiguous")
    opted = replace(job, params={"at_least_once": True})
    retry = decide_lookup(opted, None, now, **args)  # type: ignore[arg-type]
    assert not isinstance(retry, float)
    assert retry.to_state is JobState.RETRYING
