"""Signature verification and event parsing, without IO."""

from __future__ import annotations

import json
import time

import pytest
import stripe

from orchestrator.dev.simulator import sign_webhook
from orchestrator.providers.stripe.webhooks import parse_event, signed_at, verify_signature
from orchestrator.webhooks.events import WebhookRejected

SECRET = "whsec_unitSecret"
BODY = json.dumps({"id": "evt_1", "type": "t", "data": {"object": {"id": "pi_1"}}}).encode()


def test_simulator_signatures_verify_with_the_stripe_sdk() -> None:
    """The simulator's Stripe-Signature header is what the SDK expects."""
    now = int(time.time())
    header = sign_webhook(BODY, SECRET, now)
    assert stripe.WebhookSignature.verify_header(BODY, header, SECRET, tolerance=300)
    verify_signature(BODY, header, ("whsec_other", SECRET), now_s=now)


def test_future_timestamps_are_refused_though_the_sdk_accepts_them() -> None:
    """The SDK checks only the past; a header dated over 300 s ahead is refused here."""
    now = int(time.time())
    header = sign_webhook(BODY, SECRET, now + 301)
    assert stripe.WebhookSignature.verify_header(BODY, header, SECRET, tolerance=300)
    with pytest.raises(WebhookRejected, match="future"):
        verify_signature(BODY, header, (SECRET,), now_s=now)
    verify_signature(BODY, sign_webhook(BODY, SECRET, now + 299), (SECRET,), now_s=now)


def test_no_secret_configured_answers_503() -> None:
    """Without a configured secret nothing can be verified: 503, so Stripe retries later."""
    with pytest.raises(WebhookRejected) as caught:
        verify_signature(BODY, sign_webhook(BODY, SECRET, 1), (), now_s=1)
    assert caught.value.status == 503


def test_non_utf8_body_is_refused_not_crashed() -> None:
    """A body that is not UTF-8 is a 400, not an exception out of the SDK."""
    with pytest.raises(WebhookRejected, match="UTF-8"):
        verify_signature(b"\xff\xfe", f"t={int(time.time())},v1=00", (SECRET,), now_s=time.time())


@pytest.mark.parametrize("header", ["v1=abc", "t=,v1=abc", "t=12x,v1=abc", "", "garbage"], ids=repr)
def test_headers_without_a_timestamp_are_refused(header: str) -> None:
    """A header with no integer t= is refused before any HMAC is computed."""
    with pytest.raises(WebhookRejected):
        signed_at(header) if header else verify_signature(BODY, header, (SECRET,), now_s=0)


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b"{}",
        b'{"id": "evt_1", "type": "t"}',
        b'{"id": 1, "type": "t", "data": {"object": {}}}',
    ],
    ids=repr,
)
def test_bodies_not_shaped_like_events_are_refused(body: bytes) -> None:
    """An event needs a string id, a string type and a data.object mapping."""
    with pytest.raises(WebhookRejected):
        parse_event(body)


def test_parse_event_keeps_the_whole_payload() -> None:
    """The parsed event carries its id, type, object id and the payload as sent."""
    event = parse_event(BODY)
    assert (event.event_id, event.type, event.object_id) == ("evt_1", "t", "pi_1")
    assert event.payload == json.loads(BODY)
