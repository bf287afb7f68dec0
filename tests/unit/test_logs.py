"""Logs never carry secrets or card numbers, and tracebacks carry no frame locals."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.logs import (
    _PAN_RE,
    _SECRET_VALUE_RES,
    _mask_pan,
    configure_logging,
    get_logger,
    make_handler,
    redact_text,
)

SECRET = "sk_test_51HsecretKEYvalue0123456789"
PAN = "4242424242424242"


def _capture() -> tuple[io.StringIO, logging.Handler]:
    configure_logging("json", "debug")
    stream = io.StringIO()
    handler = make_handler(stream, "json")
    logging.getLogger().addHandler(handler)
    return stream, handler


def test_secrets_and_card_numbers_are_redacted_everywhere() -> None:
    """Keys, bearer tokens, URL passwords and PANs vanish from fields, nested ones and stdlib."""
    stream, handler = _capture()
    try:
        log = get_logger("test")
        log.info(
            "charge.requested",
            api_key=SECRET,
            note=f"card {PAN}",
            nested={"meta": [f"pan {PAN[:4]} {PAN[4:8]} {PAN[8:12]} {PAN[12:]}"]},
            header=f"Bearer {SECRET}",
            url="postgresql://app:hunter22@db/x",
        )
        logging.getLogger("dramatiq").warning("message with %s", SECRET)
    finally:
        logging.getLogger().removeHandler(handler)
    out = stream.getvalue()
    assert SECRET not in out
    assert PAN not in out and "4242 4242 4242 4242" not in out
    assert "hunter22" not in out
    assert out.count("[redacted]") >= 5
    assert all(json.loads(line) for line in out.splitlines())


def test_tracebacks_have_no_locals() -> None:
    """An exception raised where a local holds the key is logged without that local."""
    stream, handler = _capture()
    try:
        api_key = SECRET  # noqa: F841  (the local a naive dict_tracebacks would leak)
        try:
            raise RuntimeError("provider call failed")
        except RuntimeError:
            get_logger("test").exception("job.crashed")
    finally:
        logging.getLogger().removeHandler(handler)
    out = stream.getvalue()
    assert "provider call failed" in out
    assert SECRET not in out


def test_short_numbers_and_ids_are_left_alone() -> None:
    """Amounts, ids and timestamps are not mistaken for card numbers."""
    text = "amount 99999999 job 1234-5678 ts 1700000000"
    assert redact_text(text) == text


def test_context_is_cleared_per_message() -> None:
    """bind_job starts from an empty context, so one message's fields never leak into the next."""
    from orchestrator.logs import bind_job

    bind_job("job-1", attempt=3)
    bind_job("job-2")
    assert structlog.contextvars.get_contextvars() == {"job_id": "job-2"}


def test_sendgrid_client_payload_logging_is_silenced_even_at_debug() -> None:
    """At ORCHESTRATOR_LOG_LEVEL=debug, SendGrid's HTTP client would log whole payloads and
    headers: its logger stays at warnings."""
    import logging

    from orchestrator.logs import configure_logging

    configure_logging("json", "debug")
    try:
        assert not logging.getLogger("python_http_client.client").isEnabledFor(logging.DEBUG)
    finally:
        configure_logging("json", "info")


def _every_pattern(text: str) -> str:
    """What redact_text did before it skipped strings that cannot match: every pattern, always."""
    for pattern in _SECRET_VALUE_RES:
        text = pattern.sub("[redacted]", text)
    return _PAN_RE.sub(_mask_pan, text)


# Pieces that make up near-misses and hits of every pattern: key prefixes in both cases,
# digits of two scripts, separators, URL parts.
_PIECES = [
    "sk_", "SK_", "rk_", "pk_", "_test_", "_TEST_", "_live_", "whsec_", "WHSEC_", "pi_",
    "seti_", "_secret_", "_Secret_", "SG.", "sg.", "Bearer ", "BEARER\t", "bearer  ", "://",
    "user", ":", "@", "pw", "4242", "4242 ", "4242-", "0", "9", "\u0664\u0662", "\uff14\uff12",
    " ", "-", "abcdEFGH", "x", "/", "=", "_",
]  # fmt: skip


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=24).map("".join))
def test_skipping_strings_without_markers_redacts_the_same(text: str) -> None:
    """The shortcut (no marker and fewer than 13 ASCII digits: nothing to run) never keeps
    what running every pattern would redact."""
    assert redact_text(text) == _every_pattern(text)


def test_card_numbers_in_other_scripts_and_secrets_in_any_case_are_redacted() -> None:
    arabic_indic = "".join(chr(0x0660 + int(d)) for d in PAN)
    thirteen_digits = "card 4222222222222 ok"  # the shortest card number (Luhn-valid)
    for text in (
        f"card {arabic_indic}",
        thirteen_digits,
        "auth BEARER abcdefgh12345678",
        f"key {SECRET}",
    ):
        assert redact_text(text) == _every_pattern(text) != text


def test_logging_to_stderr_follows_the_stderr_of_the_moment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Configured without a stream, records go to sys.stderr as it is when each one is written:
    a stderr swapped in later gets them, and one closed since is never written to."""
    configure_logging("json", "info")
    try:
        first, second = io.StringIO(), io.StringIO()
        monkeypatch.setattr(sys, "stderr", first)
        get_logger("test").info("job.accepted", job_id="job-1")
        first.close()
        monkeypatch.setattr(sys, "stderr", second)
        get_logger("test").info("job.settled", job_id="job-1")
        lines = [json.loads(line) for line in second.getvalue().splitlines()]
        assert [line["event"] for line in lines] == ["job.settled"]
    finally:
        monkeypatch.undo()
        configure_logging("json", "info")
