"""Input validation: Stripe's shapes, checked before anything is written."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator import validation as v
from orchestrator.errors import ValidationError


def test_amount_accepts_stripe_range() -> None:
    """1 through 99,999,999 minor units are accepted; the bounds are inclusive."""
    assert v.amount(1) == 1
    assert v.amount(99_999_999) == 99_999_999


@pytest.mark.parametrize("bad", [0, -1, 100_000_000, 1.0, "100", True, None])
def test_amount_rejects_everything_else(bad: object) -> None:
    """Zero, negatives, floats, strings and booleans are refused with a ValueError."""
    with pytest.raises(ValueError, match="amount"):
        v.amount(bad)


def test_currency_is_lowercased_iso_code() -> None:
    """Codes are case-insensitive on input and stored lower case like Stripe's."""
    assert v.currency("USD") == "usd"
    assert v.currency("jpy") == "jpy"
    with pytest.raises(ValidationError, match="currency"):
        v.currency("abc")


def test_metadata_limits() -> None:
    """50 keys of up to 40 characters with values up to 500 characters are accepted."""
    ok = {f"k{i:02d}" + "x" * 36: "v" * 500 for i in range(50)}
    assert v.metadata(ok) == ok
    with pytest.raises(ValidationError):
        v.metadata({**ok, "extra": "v"})


def test_error_messages_never_echo_values() -> None:
    """A rejected value (maybe a card number) is never repeated in the message."""
    pan = "4242424242424242"
    for call in (
        lambda: v.token("payment_method", pan + " x", required=True),
        lambda: v.metadata({"k": pan * 40}),
    ):
        with pytest.raises(ValidationError) as info:
            call()
        assert pan not in str(info.value)


def test_fingerprint_is_canonical() -> None:
    """Key order does not change the fingerprint; any value change does."""
    a = v.fingerprint({"amount": 1, "metadata": {"x": "1", "y": "2"}})
    b = v.fingerprint({"metadata": {"y": "2", "x": "1"}, "amount": 1})
    c = v.fingerprint({"amount": 2, "metadata": {"x": "1", "y": "2"}})
    assert a == b != c
    assert len(a) == 64


@pytest.mark.parametrize(
    "card", ["4242424242424242", "4242 4242 4242 4242", "4000-0566-5566-5556", "378282246310005"]
)
def test_a_card_number_is_refused_as_a_provider_id_without_being_echoed(card: str) -> None:
    """A PAN given where a payment method id belongs is card data: refused, never repeated."""
    with pytest.raises(ValidationError, match="card number") as caught:
        v.token("payment_method", card, required=True)
    assert card not in str(caught.value)
    assert card.replace(" ", "").replace("-", "") not in str(caught.value)


def test_long_digit_ids_that_are_not_card_numbers_pass() -> None:
    """Digits alone are not card data: a Luhn-invalid run is an ordinary id."""
    assert v.token("customer", "4242424242424241", required=False) == "4242424242424241"


@pytest.mark.parametrize(
    ("check", "value"),
    [
        (lambda x: v.text("description", x, max_length=100, required=True), "a\x00b"),
        (lambda x: v.metadata({"k": x}), "a\x00b"),
        (lambda x: v.metadata({x: "v"}), "k\x00"),
        (lambda x: v.template_data({"name": x}), "a\x00b"),
        (lambda x: v.template_data({x: 1}), "k\x00"),
    ],
)
def test_nul_characters_are_a_validation_error(check: Any, value: str) -> None:
    """PostgreSQL text holds no NUL: refused as a ValidationError, not a database error."""
    with pytest.raises(ValidationError, match="NUL"):
        check(value)


@pytest.mark.parametrize("url", ["https://shop.example/r\x00", "https://shop.example/\x01x"])
def test_return_url_with_control_characters_is_refused(url: str) -> None:
    """A NUL (which PostgreSQL's jsonb cannot hold) or another control character in return_url
    is bad input, refused before anything is written."""
    with pytest.raises(ValidationError, match="return_url"):
        v.charge_options(1000, {"return_url": url})
