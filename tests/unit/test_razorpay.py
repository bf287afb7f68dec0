"""Razorpay without the simulator: failures of real HTTP (through the SDK and the provider's
session) classified, receipts, refund keys, options, statuses, signatures and event meanings.

HTTP answers come from a scripted server on 127.0.0.1 (one canned answer per request); the
network failures are real ones (a refused port, a listener that never answers, one that cuts
the connection after reading the request)."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.server
import json
import re
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import razorpay
import requests

from orchestrator.errors import ConfigError, ValidationError
from orchestrator.models import AttemptOutcome, EventStatus, Job, JobKind, JobState, WebhookEvent
from orchestrator.providers.base import NO_RESPONSE, SERVER_ERROR
from orchestrator.providers.razorpay import SPEC
from orchestrator.providers.razorpay.errors import classify_error, is_receipt_taken
from orchestrator.providers.razorpay.objects import (
    MAX_RECEIPT_CHARS,
    best_payment,
    generation_of_receipt,
    outcome_of_payment,
    outcome_of_refund,
    receipt_for,
    refund_key,
)
from orchestrator.providers.razorpay.provider import RazorpayProvider
from orchestrator.providers.razorpay.settings import load_razorpay_settings
from orchestrator.providers.razorpay.spec import build, charge_options
from orchestrator.providers.razorpay.transport import RazorpaySession
from orchestrator.providers.razorpay.webhooks import (
    meaning_of,
    parse_event,
    signature_of,
    verifier,
    verify_signature,
)
from orchestrator.webhooks.events import ObjectReport, Result, WebhookRejected

KEY_ID, KEY_SECRET = "rzp_test_unitKeyId", "unitKeySecret"
JOB_ID = "6f1c2a6e-8d4b-4c7e-9a1d-2b3c4d5e6f70"

# -- a scripted Razorpay ---------------------------------------------------------------------

Answer = tuple[int, dict[str, str], bytes]


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Answer:
    return (
        status,
        {"Content-Type": "application/json", **(headers or {})},
        json.dumps(body).encode(),
    )


def _error(status: int, description: str, code: str = "BAD_REQUEST_ERROR", **more: Any) -> Answer:
    error = {"code": code, "description": description, "source": "NA", "step": "NA"}
    return _json(status, {"error": {**error, "reason": "NA", "metadata": {}, **more}})


@contextlib.contextmanager
def scripted(
    routes: dict[tuple[str, str], list[Answer]],
) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """Answer each request with the next answer scripted for (method, path regex); yields the
    URL and the requests seen (method, path, query, headers, JSON body)."""
    seen: list[dict[str, Any]] = []
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            path, _, query = self.path.partition("?")
            with lock:
                seen.append(
                    {
                        "method": self.command,
                        "path": path,
                        "query": query,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": json.loads(raw) if raw else None,
                    }
                )
                answers = next(
                    (
                        a
                        for (m, p), a in routes.items()
                        if m == self.command and re.fullmatch(p, path)
                    ),
                    None,
                )
                status, headers, body = answers.pop(0) if answers else _error(404, "no route")
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def listener(behaviour: Callable[[socket.socket], None]) -> Iterator[str]:
    """A raw TCP listener that hands each accepted connection to ``behaviour``."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    stop = threading.Event()

    def serve() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            threading.Thread(target=behaviour, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=2)
        sock.close()


def _read_request(conn: socket.socket) -> None:
    conn.settimeout(2)
    data = b""
    with contextlib.suppress(OSError):
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk


def _never_answers(conn: socket.socket) -> None:
    _read_request(conn)
    threading.Event().wait(3)
    conn.close()


def _cuts_after_reading(conn: socket.socket) -> None:
    _read_request(conn)
    conn.close()


def _client(url: str, read_timeout_s: float = 2.0) -> Any:
    session = RazorpaySession(
        url, lambda: (KEY_ID, KEY_SECRET), connect_timeout_s=0.5, read_timeout_s=read_timeout_s
    )
    return razorpay.Client(session=session, base_url=url)


def _raised(call: Callable[[], Any]) -> BaseException:
    try:
        call()
    except Exception as exc:
        return exc
    raise AssertionError("the call did not fail")


def _provider(url: str, read_timeout_s: float = 2.0) -> RazorpayProvider:
    settings = load_razorpay_settings(
        razorpay_key_id=KEY_ID, razorpay_key_secret=KEY_SECRET, razorpay_api_base=url
    )
    return RazorpayProvider(settings, connect_timeout_s=0.5, read_timeout_s=read_timeout_s)


def _job(kind: JobKind = JobKind.CHARGE, generation: int = 0, **params: Any) -> Job:
    now = datetime.now(UTC)
    base: dict[str, Any] = {"metadata": {"order": "42"}, "email": "a@example.com"}
    base["contact"] = "+919876543210"
    if kind is JobKind.REFUND:
        base = {"metadata": {}, "payment_intent": "pay_1"}
    return Job(
        id=JOB_ID,
        kind=kind,
        provider="razorpay",
        state=JobState.RUNNING,
        idempotency_key="order-42",
        fingerprint="f",
        amount=50000,
        currency="inr",
        customer="cust_1",
        payment_method="token_1",
        parent_job_id=None,
        params={**base, **params},
        key_generation=generation,
        attempts=1,
        max_attempts=8,
        next_attempt_at=now,
        deadline_at=now,
        lease_owner=None,
        lease_expires_at=None,
        unknown_cause=None,
        last_attempt_at=None,
        dispatched_at=None,
        provider_ref=None,
        provider_status=None,
        last_error_code=None,
        last_error=None,
        dead_reason=None,
        changed_by="test",
        change_reason="test",
        created_at=now,
        updated_at=now,
    )


# -- classification: HTTP answers ------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "kind", "cause", "code"),
    [
        (_json(429, {"error": {"code": "BAD_REQUEST_ERROR", "description": "Too many requests"}},
               {"Retry-After": "7"}), AttemptOutcome.NOT_EXECUTED, None, "rate_limited"),
        (_error(409, "Another request with the same idempotency key is still in progress"),
         AttemptOutcome.NOT_EXECUTED, None, "idempotency_key_in_use"),
        (_error(409, "Different request with the same idempotency key has already been processed."),
         AttemptOutcome.AMBIGUOUS, SERVER_ERROR, "bad_request_error"),
        (_error(400, "Order receipt should be unique"), AttemptOutcome.PERMANENT, None,
         "bad_request_error"),
        (_error(401, "The api key provided is invalid"), AttemptOutcome.PERMANENT, None,
         "bad_request_error"),
        (_error(400, "Amount exceeds maximum amount allowed", reason="input_validation_failed"),
         AttemptOutcome.PERMANENT, None, "input_validation_failed"),
        (_error(500, "The server encountered an error.", code="SERVER_ERROR"),
         AttemptOutcome.AMBIGUOUS, NO_RESPONSE, "server_error"),
        (_error(502, "gateway down", code="GATEWAY_ERROR"), AttemptOutcome.AMBIGUOUS, NO_RESPONSE,
         "gateway_error"),
        ((502, {"Content-Type": "text/html"}, b"<html><h1>502 Bad Gateway</h1></html>"),
         AttemptOutcome.AMBIGUOUS, NO_RESPONSE, "http_502"),
        ((503, {}, b""), AttemptOutcome.AMBIGUOUS, NO_RESPONSE, "http_503"),
        ((200, {"Content-Type": "text/plain"}, b"ok"), AttemptOutcome.AMBIGUOUS, NO_RESPONSE,
         "unreadable_response"),
    ],
    ids=["429", "409-in-progress", "409-different", "400-receipt", "401", "400-reason",
         "500-json", "502-json", "502-html", "503-empty", "200-not-json"],
)  # fmt: skip
def test_http_answers_are_classified_by_status(
    answer: Answer, kind: AttemptOutcome, cause: str | None, code: str
) -> None:
    """Every answer reaches the classification with its status and headers (the SDK alone
    would keep only the description, and crash on a body that is not JSON)."""
    with scripted({("POST", "/v1/orders"): [answer]}) as (url, _):
        exc = _raised(lambda: _client(url).order.create({"amount": 100, "currency": "INR"}))
    outcome = classify_error(exc)
    assert outcome.kind is kind
    assert outcome.unknown_cause == cause
    assert outcome.error_code == code
    assert outcome.http_status == answer[0]
    if answer[0] == 429:
        assert outcome.retry_after_s == 7.0
    if answer[0] == 502 and b"html" in answer[2]:
        assert "502 Bad Gateway" in (outcome.message or "")


def test_a_taken_receipt_is_recognised() -> None:
    with scripted({("POST", "/v1/orders"): [_error(400, "Order receipt should be unique")]}) as (
        url,
        _,
    ):
        exc = _raised(lambda: _client(url).order.create({"receipt": "r"}))
    assert is_receipt_taken(exc)
    assert not is_receipt_taken(RuntimeError("receipt should be unique"))


# -- classification: network failures --------------------------------------------------------


def _free_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


def test_connection_refused_is_not_executed() -> None:
    exc = _raised(lambda: _client(f"http://127.0.0.1:{_free_port()}").order.create({}))
    outcome = classify_error(exc)
    assert outcome.kind is AttemptOutcome.NOT_EXECUTED
    assert outcome.error_code == "connect_failed"


def test_connect_timeout_is_not_executed() -> None:
    """A listener whose accept queue is full drops new SYNs: the connect times out."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(0)
    port = sock.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):  # fill the backlog (Linux admits backlog + 1)
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        exc = _raised(lambda: _client(f"http://127.0.0.1:{port}").order.create({}))
    finally:
        for filler in fillers:
            filler.close()
        sock.close()
    outcome = classify_error(exc)
    if not isinstance(exc.__cause__, requests.exceptions.ConnectTimeout):
        pytest.skip(f"this kernel did not drop the SYN ({type(exc.__cause__).__name__})")
    assert outcome.kind is AttemptOutcome.NOT_EXECUTED
    assert outcome.error_code == "connect_failed"


def test_read_timeout_is_ambiguous_no_response() -> None:
    with listener(_never_answers) as url:
        exc = _raised(lambda: _client(url, read_timeout_s=0.3).order.create({}))
    assert isinstance(exc.__cause__, requests.exceptions.ReadTimeout)
    outcome = classify_error(exc)
    assert outcome.kind is AttemptOutcome.AMBIGUOUS
    assert outcome.unknown_cause == NO_RESPONSE
    assert outcome.error_code == "read_timeout"


def test_connection_cut_after_sending_is_ambiguous_no_response() -> None:
    with listener(_cuts_after_reading) as url:
        exc = _raised(lambda: _client(url).payment.createRecurring({"amount": 100}))
    outcome = classify_error(exc)
    assert outcome.kind is AttemptOutcome.AMBIGUOUS
    assert outcome.unknown_cause == NO_RESPONSE
    assert outcome.error_code == "no_response"


def test_the_sdk_never_prints_a_network_error(capsys: pytest.CaptureFixture[str]) -> None:
    """The SDK prints before re-raising requests' errors; the session raises its own."""
    _raised(lambda: _client(f"http://127.0.0.1:{_free_port()}").order.create({}))
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (razorpay.errors.BadRequestError("bad"), AttemptOutcome.PERMANENT),
        (razorpay.errors.GatewayError("declined"), AttemptOutcome.PERMANENT),
        (razorpay.errors.ServerError("boom"), AttemptOutcome.AMBIGUOUS),
        (ValueError("a bug"), AttemptOutcome.AMBIGUOUS),
    ],
)
def test_sdk_and_unexpected_exceptions_are_mapped(exc: Exception, kind: AttemptOutcome) -> None:
    assert classify_error(exc).kind is kind


def test_every_request_has_timeouts_auth_and_no_redirects() -> None:
    with scripted({("GET", "/v1/orders"): [_json(200, {"entity": "collection", "items": []})]}) as (
        url,
        seen,
    ):
        _client(url).order.all({"receipt": "r-1"})
    assert seen[0]["query"] == "receipt=r-1"
    assert seen[0]["headers"]["authorization"].startswith("Basic ")


# -- the provider's charge and refund steps --------------------------------------------------


def _collection(*items: dict[str, Any]) -> Answer:
    return _json(200, {"entity": "collection", "count": len(items), "items": list(items)})


def _order(status: str = "created", attempts: int = 0, gen: int = 0) -> dict[str, Any]:
    return {
        "id": "order_1",
        "entity": "order",
        "amount": 50000,
        "currency": "INR",
        "receipt": receipt_for(JOB_ID, gen),
        "status": status,
        "attempts": attempts,
    }


def _payment(status: str, pid: str = "pay_1", **more: Any) -> dict[str, Any]:
    notes = {"orchestrator_job_id": JOB_ID, "orchestrator_key_generation": "0"}
    payment = {"id": pid, "entity": "payment", "amount": 50000, "currency": "INR"}
    return {**payment, "status": status, "order_id": "order_1", "notes": notes, **more}


def test_a_charge_creates_the_order_then_the_recurring_payment() -> None:
    routes = {
        ("GET", "/v1/orders"): [_collection()],
        ("POST", "/v1/orders"): [_json(200, _order())],
        ("POST", "/v1/payments/create/recurring"): [_json(200, {"razorpay_payment_id": "pay_1"})],
        ("GET", "/v1/payments/pay_1"): [_json(200, _payment("captured"))],
    }
    with scripted(routes) as (url, seen):
        outcome = _provider(url).execute(_job(), "orch-key-g0")
    assert outcome.kind is AttemptOutcome.SUCCEEDED
    assert outcome.provider_ref == "pay_1"
    order, payment = seen[1]["body"], seen[2]["body"]
    assert order["receipt"] == receipt_for(JOB_ID, 0)
    assert order["payment_capture"] is True
    assert order["notes"]["orchestrator_job_id"] == JOB_ID
    assert order["currency"] == "INR"
    assert payment["order_id"] == "order_1"
    assert payment["customer_id"] == "cust_1"
    assert payment["token"] == "token_1"
    assert payment["recurring"] is True
    assert payment["email"] == "a@example.com"
    assert payment["contact"] == "+919876543210"


def test_a_retry_finds_the_paid_order_and_creates_nothing() -> None:
    routes = {
        ("GET", "/v1/orders"): [_collection(_order("paid", 1))],
        ("GET", "/v1/orders/order_1/payments"): [_collection(_payment("captured"))],
    }
    with scripted(routes) as (url, seen):
        outcome = _provider(url).execute(_job(), "orch-key-g0")
    assert outcome.kind is AttemptOutcome.SUCCEEDED
    assert [r["method"] for r in seen] == ["GET", "GET"]


def test_a_retry_pays_an_order_left_without_payment() -> None:
    routes = {
        ("GET", "/v1/orders"): [_collection(_order())],
        ("GET", "/v1/orders/order_1/payments"): [_collection()],
        ("POST", "/v1/payments/create/recurring"): [_json(200, {"razorpay_payment_id": "pay_1"})],
        ("GET", "/v1/payments/pay_1"): [_json(200, _payment("created"))],
    }
    with scripted(routes) as (url, seen):
        outcome = _provider(url).execute(_job(), "orch-key-g0")
    assert outcome.kind is AttemptOutcome.PENDING
    assert outcome.provider_ref == "pay_1"
    assert not any(r["method"] == "POST" and r["path"] == "/v1/orders" for r in seen)


@pytest.mark.parametrize("mode", ["refused", "same-order"])
def test_both_receipt_reuse_answers_lead_to_the_existing_order(mode: str) -> None:
    """The order's listing lags; creating it again is refused ("receipt should be unique") or
    answered with the same order: either way its payments are read and nothing is paid."""
    create = (
        _error(400, "Order receipt should be unique")
        if mode == "refused"
        else _json(200, _order("attempted", 1))
    )
    routes = {
        ("GET", "/v1/orders"): [_collection()]
        + ([_collection(_order("attempted", 1))] if mode == "refused" else []),
        ("POST", "/v1/orders"): [create],
        ("GET", "/v1/orders/order_1/payments"): [_collection(_payment("captured"))],
    }
    with scripted(routes) as (url, seen):
        outcome = _provider(url).execute(_job(), "orch-key-g0")
    assert outcome.kind is AttemptOutcome.SUCCEEDED
    assert not any(r["path"] == "/v1/payments/create/recurring" for r in seen)


def test_an_order_already_paid_is_read_not_failed() -> None:
    routes = {
        ("GET", "/v1/orders"): [_collection(_order())],
        ("GET", "/v1/orders/order_1/payments"): [
            _collection(),
            _collection(_payment("captured")),
        ],
        ("POST", "/v1/payments/create/recurring"): [
            _error(400, "Payment already done for this order.")
        ],
    }
    with scripted(routes) as (url, _):
        outcome = _provider(url).execute(_job(), "orch-key-g0")
    assert outcome.kind is AttemptOutcome.SUCCEEDED
    assert outcome.provider_ref == "pay_1"


def test_a_failing_read_before_paying_is_not_executed() -> None:
    routes = {("GET", "/v1/orders"): [_error(500, "boom", code="SERVER_ERROR")]}
    with scripted(routes) as (url, _):
        outcome = _provider(url).execute(_job(), "orch-key-g0")
    assert outcome.kind is AttemptOutcome.NOT_EXECUTED
    assert outcome.http_status == 500


def test_a_new_generation_adopts_a_live_payment_of_an_older_one() -> None:
    routes = {
        ("GET", "/v1/orders"): [_collection(), _collection(_order("attempted", 1))],
        ("GET", "/v1/orders/order_1/payments"): [_collection(_payment("created"))],
    }
    with scripted(routes) as (url, seen):
        outcome = _provider(url).execute(_job(generation=1), "orch-key-g1")
    assert outcome.kind is AttemptOutcome.PENDING
    assert seen[1]["query"] == f"receipt={receipt_for(JOB_ID, 0)}"
    assert not any(r["method"] == "POST" for r in seen)


def test_a_refund_sends_the_jobs_amount_with_an_idempotency_key() -> None:
    refund = {"id": "rfnd_1", "entity": "refund", "amount": 50000, "status": "pending"}
    with scripted({("POST", "/v1/payments/pay_1/refund"): [_json(200, refund)]}) as (url, seen):
        outcome = _provider(url).execute(_job(JobKind.REFUND), "orch-key-g0")
    assert outcome.kind is AttemptOutcome.PENDING
    assert outcome.provider_ref == "rfnd_1"
    assert seen[0]["body"]["amount"] == 50000
    assert seen[0]["headers"]["x-refund-idempotency"] == refund_key("orch-key-g0")


def test_lookup_checks_every_generation_and_ignores_an_old_failure() -> None:
    routes = {
        ("GET", "/v1/orders"): [_collection(_order("attempted", 1)), _collection()],
        ("GET", "/v1/orders/order_1/payments"): [_collection(_payment("failed"))],
    }
    with scripted(routes) as (url, seen):
        found = _provider(url).lookup(_job(generation=1))
    assert found is None
    assert [r["query"] for r in seen if r["path"] == "/v1/orders"] == [
        f"receipt={receipt_for(JOB_ID, 0)}",
        f"receipt={receipt_for(JOB_ID, 1)}",
    ]


def test_build_needs_both_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import test_settings

    monkeypatch.delenv("RAZORPAY_KEY_ID", raising=False)
    monkeypatch.delenv("RAZORPAY_KEY_SECRET", raising=False)
    settings = test_settings("postgresql://x/y", "ns", "http://127.0.0.1:1")
    assert build(settings) is None
    monkeypatch.setenv("RAZORPAY_KEY_ID", KEY_ID)
    assert build(settings) is None
    monkeypatch.setenv("RAZORPAY_KEY_SECRET", KEY_SECRET)
    provider = build(settings)
    assert isinstance(provider, RazorpayProvider)
    assert provider.honours_idempotency_keys


def test_settings_name_the_variable_never_the_value() -> None:
    with pytest.raises(ConfigError, match="RAZORPAY_API_BASE"):
        load_razorpay_settings(razorpay_api_base="ftp://nope")
    settings = load_razorpay_settings(razorpay_webhook_secret="new, old")
    assert settings.secret_values("razorpay_webhook_secret") == ("new", "old")
    with pytest.raises(ConfigError, match="RAZORPAY_KEY_SECRET is not set"):
        load_razorpay_settings(razorpay_key_secret="").require_secret("razorpay_key_secret")


# -- receipts, keys, options, statuses -------------------------------------------------------


def test_receipts_fit_and_are_unique_per_job_and_generation() -> None:
    ids = [str(uuid.uuid4()) for _ in range(50)]
    receipts = {receipt_for(i, g) for i in ids for g in (0, 1, 2, 99, 999_999)}
    assert len(receipts) == 50 * 5
    assert max(len(r) for r in receipts) <= MAX_RECEIPT_CHARS
    assert receipt_for(JOB_ID, 3) == receipt_for(JOB_ID.upper(), 3)  # one per job, any spelling
    assert generation_of_receipt(receipt_for(JOB_ID, 12)) == 12
    assert generation_of_receipt("Receipt No. 1") is None
    with pytest.raises(ValueError):
        receipt_for(JOB_ID, 10**6)


def test_refund_keys_are_what_razorpay_accepts() -> None:
    key = refund_key("orch-6f1c2a6e-8d4b-4c7e-9a1d-2b3c4d5e6f70-g0")
    assert re.fullmatch(r"[A-Za-z0-9_-]{10,36}", key)
    assert key == refund_key("orch-6f1c2a6e-8d4b-4c7e-9a1d-2b3c4d5e6f70-g0")
    assert key != refund_key("orch-6f1c2a6e-8d4b-4c7e-9a1d-2b3c4d5e6f70-g1")


def test_charge_options_need_email_and_contact_and_refuse_the_rest() -> None:
    ok = charge_options(100, {"email": "a@example.com", "contact": "+919876543210"})
    assert ok == {"email": "a@example.com", "contact": "+919876543210"}
    assert charge_options(100, {**ok, "return_url": None}) == ok  # not given
    for name, value in [("return_url", "https://x"), ("capture", False), ("color", "red")]:
        with pytest.raises(ValidationError, match=name):
            charge_options(100, {**ok, name: value})
    with pytest.raises(ValidationError, match="contact"):
        charge_options(100, {"email": "a@example.com"})
    with pytest.raises(ValidationError, match="contact"):
        charge_options(100, {"email": "a@example.com", "contact": "call me"})
    with pytest.raises(ValidationError, match="email"):
        charge_options(100, {"email": "nope", "contact": "9876543210"})
    assert SPEC.needs_customer


@pytest.mark.parametrize(
    ("payment", "kind"),
    [
        (_payment("captured"), AttemptOutcome.SUCCEEDED),
        (_payment("refunded", captured=True), AttemptOutcome.SUCCEEDED),
        (_payment("refunded", captured=False), AttemptOutcome.PERMANENT),
        (_payment("authorized"), AttemptOutcome.PENDING),
        (_payment("created"), AttemptOutcome.PENDING),
        (_payment("failed", error_reason="payment_failed"), AttemptOutcome.PERMANENT),
    ],
    ids=["captured", "refunded", "auto-refunded", "authorized", "created", "failed"],
)
def test_payment_statuses(payment: dict[str, Any], kind: AttemptOutcome) -> None:
    outcome = outcome_of_payment(payment)
    assert outcome.kind is kind
    assert outcome.provider_ref == payment["id"]
    if payment["status"] == "failed":
        assert outcome.error_code == "payment_failed"


def test_refund_statuses() -> None:
    kinds = {s: outcome_of_refund({"id": "r", "status": s}).kind for s in ("pending", "processed")}
    assert kinds == {"pending": AttemptOutcome.PENDING, "processed": AttemptOutcome.SUCCEEDED}
    assert outcome_of_refund({"id": "r", "status": "failed"}).kind is AttemptOutcome.PERMANENT


def test_best_payment_prefers_money_taken_and_ignores_old_failures() -> None:
    failed, pending, captured = (
        _payment("failed", "p1"),
        _payment("created", "p2"),
        _payment("captured", "p3"),
    )
    assert best_payment([(failed, 0), (pending, 1), (captured, 0)], 1) is captured
    assert best_payment([(failed, 0)], 1) is None
    assert best_payment([(failed, 1)], 1) is failed


# -- webhooks --------------------------------------------------------------------------------

SECRET = "whsec_razorpayUnit"


def _event(event: str, **entities: dict[str, Any]) -> bytes:
    payload = {name: {"entity": entity} for name, entity in entities.items()}
    body = {"entity": "event", "event": event, "contains": list(entities), "payload": payload}
    return json.dumps({**body, "created_at": 1}).encode()


def test_signature_is_hex_hmac_sha256_of_the_raw_body() -> None:
    body = _event("payment.captured", payment=_payment("captured"))
    expected = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert signature_of(body, SECRET) == expected
    verify_signature(body, expected, (SECRET,))


def test_signature_checks() -> None:
    body = _event("payment.captured", payment=_payment("captured"))
    good = signature_of(body, SECRET)
    with pytest.raises(WebhookRejected) as forged:
        verify_signature(body, signature_of(body, "whsec_attacker"), (SECRET,))
    assert forged.value.status == 401
    with pytest.raises(WebhookRejected) as tampered:
        verify_signature(body + b" ", good, (SECRET,))
    assert tampered.value.status == 401
    with pytest.raises(WebhookRejected) as missing:
        verify_signature(body, None, (SECRET,))
    assert missing.value.status == 400
    with pytest.raises(WebhookRejected) as unconfigured:
        verify_signature(body, good, ())
    assert unconfigured.value.status == 503
    with pytest.raises(WebhookRejected):
        verify_signature(body, "é" * 64, (SECRET,))  # not ASCII: refused, not crashed


def test_both_secrets_verify_during_a_rotation(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import test_settings

    body = _event("payment.captured", payment=_payment("captured"))
    monkeypatch.setenv("RAZORPAY_WEBHOOK_SECRET", "whsec_new,whsec_old")
    verify = verifier(test_settings("postgresql://x/y", "ns", "http://127.0.0.1:1"))
    for secret in ("whsec_new", "whsec_old"):
        headers = {"X-Razorpay-Signature": signature_of(body, secret), "x-razorpay-event-id": "e1"}
        assert verify(body, headers, 0.0).event_id == "e1"
    with pytest.raises(WebhookRejected):
        verify(
            body, {"X-Razorpay-Signature": signature_of(body, "x"), "x-razorpay-event-id": "e"}, 0
        )


def test_an_event_needs_its_id_and_a_razorpay_shape() -> None:
    body = _event("payment.captured", payment=_payment("captured"), order=_order("paid", 1))
    event = parse_event(body, "evt_1")
    assert (event.event_id, event.type, event.object_id) == ("evt_1", "payment.captured", "pay_1")
    assert event.subject_job_id == JOB_ID
    assert event.reports_success
    with pytest.raises(WebhookRejected, match="event-id"):
        parse_event(body, None)
    for bad in (b"not json", b"[]", json.dumps({"event": "x"}).encode()):
        with pytest.raises(WebhookRejected) as caught:
            parse_event(bad, "evt_2")
        assert caught.value.status == 400
    failed = parse_event(_event("payment.failed", payment=_payment("failed")), "evt_3")
    assert not failed.reports_success


def _stored(body: bytes) -> WebhookEvent:
    data = json.loads(body)
    return WebhookEvent(
        id=1,
        provider="razorpay",
        event_id="evt",
        type=data["event"],
        object_id=None,
        job_id=None,
        status=EventStatus.RECEIVED,
        attempts=0,
        note=None,
        last_error=None,
        received_at=datetime.now(UTC),
        processed_at=None,
        payload=data,
    )


def test_event_meanings() -> None:
    captured = meaning_of(_stored(_event("payment.captured", payment=_payment("captured"))))
    assert isinstance(captured, ObjectReport)
    assert (captured.job_kind, captured.job_id, captured.ref) == (JobKind.CHARGE, JOB_ID, "pay_1")
    assert (captured.amount, captured.currency, captured.generation) == (50000, "inr", 0)
    assert captured.read_outcome is not None
    assert captured.read_outcome().kind is AttemptOutcome.SUCCEEDED

    paid = meaning_of(
        _stored(_event("order.paid", payment=_payment("captured", notes=[]), order=_order("paid")))
    )
    assert isinstance(paid, ObjectReport)
    assert paid.job_id is None  # neither entity names the job: found by provider ref
    assert paid.generation == 0  # from the order's receipt

    older = _payment(
        "failed", notes={"orchestrator_job_id": JOB_ID, "orchestrator_key_generation": "2"}
    )
    failed = meaning_of(_stored(_event("payment.failed", payment=older)))
    assert isinstance(failed, ObjectReport)
    assert failed.read_outcome is None  # re-read from Razorpay: a failure may be authorized late
    assert failed.generation == 2

    refund = {"id": "rfnd_1", "amount": 100, "currency": "INR", "status": "processed"}
    refund["notes"] = {"orchestrator_job_id": JOB_ID, "orchestrator_key_generation": "0"}
    processed = meaning_of(_stored(_event("refund.processed", refund=refund)))
    assert isinstance(processed, ObjectReport)
    assert (processed.job_kind, processed.ref, processed.job_id) == (
        JobKind.REFUND,
        "rfnd_1",
        JOB_ID,
    )
    assert processed.read_outcome is not None
    assert processed.read_outcome().kind is AttemptOutcome.SUCCEEDED

    ignored = meaning_of(_stored(_event("payment.authorized", payment=_payment("authorized"))))
    assert isinstance(ignored, Result)
    assert ignored.status is EventStatus.IGNORED
