"""The app HTTP API (/api/v1) served by create_app() under a live uvicorn, over real PostgreSQL,
Redis and the provider simulator: auth, idempotency, the same jobs as the Python API, cancel,
body caps, one charge run end to end, and schemathesis over its OpenAPI document."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from orchestrator.app.openapi import OPENAPI
from orchestrator.config import load_settings
from orchestrator.errors import ConfigError
from orchestrator.models import JobState
from tests.conftest import count_jobs, orchestrator_like, serve, wait_until

TOKEN = "api-test-token-" + uuid.uuid4().hex
OPS_TOKEN = "ops-test-token-" + uuid.uuid4().hex
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SENDER = "shop@example.com"


@pytest.fixture(scope="module")
def server(orch: Any, simulator: Any) -> Iterator[str]:
    """create_app() with ORCHESTRATOR_API_TOKEN (and another ops token) set, live."""
    from orchestrator.web import create_app

    app_orch = orchestrator_like(
        orch, simulator.url, api_token=TOKEN, ops_token=OPS_TOKEN, email_from=SENDER
    )
    with serve(create_app(app_orch)) as url:
        yield url


def post(server: str, path: str, body: Any, key: str | None, **headers: str) -> Any:
    sent = {**AUTH, **headers}
    if key is not None:
        sent["Idempotency-Key"] = key
    return requests.post(f"{server}/api/v1{path}", json=body, headers=sent, timeout=10)


def get(server: str, path: str) -> Any:
    return requests.get(f"{server}/api/v1{path}", headers=AUTH, timeout=10)


def _operations() -> list[tuple[str, str]]:
    return [(m.upper(), p) for p, item in OPENAPI["paths"].items() for m in item]


def _concrete(path: str) -> str:
    return path.replace("{job_id}", str(uuid.uuid4()))


CHARGE = {"amount": 1250, "currency": "usd", "customer": "cus_A", "payment_method": "pm_card_visa"}


# -- authentication ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad", [None, "Bearer wrong", "Bearer ", f"Bearer {OPS_TOKEN}", f"Basic {TOKEN}", TOKEN]
)
def test_every_route_refuses_a_missing_wrong_or_ops_token(
    server: str, orch: Any, bad: str | None
) -> None:
    """Every documented operation answers 401 without the API token, with a wrong one, with
    the ops token, or with the right one in the wrong scheme; nothing is written."""
    headers = {"Authorization": bad} if bad is not None else {}
    headers["Idempotency-Key"] = "auth-1"
    for method, path in _operations():
        resp = requests.request(
            method, server + _concrete(path), headers=headers, json=CHARGE, timeout=5
        )
        assert resp.status_code == 401, (method, path, resp.status_code)
        assert resp.json()["code"] == "unauthorized"
    assert count_jobs(orch) == 0


def test_the_api_token_does_not_open_the_ops_api(server: str) -> None:
    assert requests.get(f"{server}/ops/api/counts", headers=AUTH, timeout=5).status_code == 401
    ops = {"Authorization": f"Bearer {OPS_TOKEN}"}
    assert requests.get(f"{server}/ops/api/counts", headers=ops, timeout=5).status_code == 200


def test_no_configured_token_refuses_everything(orch: Any) -> None:
    """With ORCHESTRATOR_API_TOKEN unset, every /api/v1 request is 401 (never open)."""
    from orchestrator.web import create_app

    assert orch.settings.api_token is None
    with serve(create_app(orch)) as url:
        for method, path in _operations():
            for auth in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer None"}):
                headers = {**auth, "Idempotency-Key": "none-1"}
                resp = requests.request(
                    method, url + _concrete(path), headers=headers, json=CHARGE, timeout=5
                )
                assert resp.status_code == 401, (method, path)


def test_a_short_or_shared_api_token_is_refused_at_start() -> None:
    """Under 32 characters, or equal to the ops token: one line naming the variable."""
    base = {"database_url": "postgresql://x/y", "redis_url": "redis://x"}
    with pytest.raises(ConfigError, match=r"^ORCHESTRATOR_API_TOKEN is invalid: .*32 char"):
        load_settings(**base, api_token="x" * 31)
    with pytest.raises(ConfigError, match=r"ORCHESTRATOR_API_TOKEN .*ORCHESTRATOR_OPS_TOKEN"):
        load_settings(**base, api_token="s" * 40, ops_token="s" * 40)
    assert load_settings(**base, api_token="a" * 32).api_token is not None


# -- idempotency and validation ------------------------------------------------------------


def test_same_key_same_body_is_the_same_job_other_body_conflicts(server: str, orch: Any) -> None:
    """201 then 200 with the same job; another body under the key is a 409 and writes nothing;
    a missing or invalid key is a 400."""
    first = post(server, "/charges", CHARGE, "order-1")
    assert first.status_code == 201, first.text
    job = first.json()
    assert job["state"] == "pending" and job["kind"] == "charge" and job["amount"] == 1250
    assert first.headers["Location"] == f"/api/v1/jobs/{job['id']}"
    again = post(server, "/charges", CHARGE, "order-1")
    assert again.status_code == 200 and again.json()["id"] == job["id"]
    other = post(server, "/charges", {**CHARGE, "amount": 1300}, "order-1")
    assert other.status_code == 409 and other.json()["code"] == "idempotency_conflict"
    missing = post(server, "/charges", CHARGE, None)
    assert missing.status_code == 400 and "Idempotency-Key" in missing.json()["error"]
    too_long = post(server, "/charges", CHARGE, "k" * 256)
    assert too_long.status_code == 400 and "255" in too_long.json()["error"]
    assert count_jobs(orch) == 1


def test_of_simultaneous_first_requests_exactly_one_is_201(server: str, orch: Any) -> None:
    """Eight requests with one key and body, released together, for a charge and for a refund:
    all name the same job and exactly one answers 201 (the insert that made it says so; a
    read of the key before the call let several see no job and answer 201)."""
    charge = orch.charge(4000, "usd", "cus_R", "pm_card_visa", "simultaneous-refunded")
    assert orch.executor().run(charge.id) is JobState.SUCCEEDED
    requests_by_path = {
        "/charges": CHARGE,
        "/refunds": {"charge_job_id": charge.id, "amount": 100},
    }
    for round_ in range(3):
        for path, body in requests_by_path.items():
            key = f"simultaneous-{path.strip('/')}-{round_}"
            gate = threading.Barrier(8)

            def send(body: dict[str, Any] = body, key: str = key, gate: Any = gate) -> Any:
                gate.wait()
                return post(server, path, body, key)

            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(lambda _: send(), range(8)))
            statuses = sorted(a.status_code for a in answers)
            assert statuses == [200] * 7 + [201], (path, [a.text for a in answers])
            assert len({a.json()["id"] for a in answers}) == 1, path


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({**CHARGE, "card_number": "4242424242424242"}, "unknown field 'card_number'"),
        ({k: v for k, v in CHARGE.items() if k != "amount"}, "amount is required"),
        ({**CHARGE, "amount": "12.50"}, "amount must be an integer"),
        ({**CHARGE, "amount": True}, "amount must be an integer"),
        ({**CHARGE, "amount": 12.5}, "amount must be an integer"),
        ({**CHARGE, "amount": 0}, "amount must be between"),
        ({**CHARGE, "currency": "zzz"}, "ISO 4217"),
        ({**CHARGE, "payment_method": "4242 4242 4242 4242"}, "card number"),
        ({**CHARGE, "metadata": {"k": 1}}, "metadata"),
        ({**CHARGE, "capture": "no"}, "capture must be a boolean"),
        ({**CHARGE, "transfer_data": {"amount": 5}}, "destination"),
        ([CHARGE], "JSON object"),
    ],
)
def test_invalid_charges_are_400_with_the_library_message(
    server: str, orch: Any, body: Any, message: str
) -> None:
    resp = post(server, "/charges", body, "bad-1")
    assert resp.status_code == 400, resp.text
    assert message in resp.json()["error"] and resp.json()["code"] == "invalid_request"
    assert count_jobs(orch) == 0


def test_malformed_json_and_odd_text_are_400_not_500(server: str) -> None:
    headers = {**AUTH, "Idempotency-Key": "raw-1", "Content-Type": "application/json"}
    url = f"{server}/api/v1/charges"
    nul_url = b'"return_url": "https://shop.example/\\u0000", "payment_method": "pm_card_visa"'
    for raw in (
        b"{",
        b"\xff\xfe",
        b'{"amount": NaN}',
        b"[" * 100_000,
        b'{"customer": "\\ud800"}',
        b'{"amount": 100, "currency": "usd", ' + nul_url + b"}",  # PostgreSQL stores no NUL
    ):
        resp = requests.post(url, data=raw, headers=headers, timeout=10)
        assert resp.status_code == 400, (raw[:20], resp.status_code)


def test_an_oversized_body_is_413(server: str) -> None:
    """Past 2 MiB, streamed (chunked) or declared, the body is refused before it is held."""

    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            yield b" " * 65536

    headers = {**AUTH, "Idempotency-Key": "big-1", "Content-Type": "application/json"}
    streamed = requests.post(f"{server}/api/v1/emails", data=chunks(), headers=headers, timeout=30)
    assert streamed.status_code == 413 and streamed.json()["code"] == "too_large"
    declared = requests.post(
        f"{server}/api/v1/charges", data=b" " * (3 * 1024 * 1024), headers=headers, timeout=30
    )
    assert declared.status_code == 413


# -- the same jobs as the Python API -------------------------------------------------------


def test_an_http_charge_and_a_python_charge_with_one_key_are_one_job(
    server: str, orch: Any
) -> None:
    """Same key, same fields: the same job whichever side came first (same fingerprint)."""
    options = {
        "description": "order 7",
        "statement_descriptor_suffix": "ORDER7",
        "receipt_email": "ana@example.com",
        "capture_method": "automatic",
    }
    py = orch.charge(990, "usd", "cus_B", "pm_card_visa", "py-first", {"order": "7"}, **options)
    body = {**CHARGE, "amount": 990, "customer": "cus_B", "metadata": {"order": "7"}, **options}
    over_http = post(server, "/charges", body, "py-first")
    assert over_http.status_code == 200 and over_http.json()["id"] == py.id
    assert over_http.json()["metadata"] == {"order": "7"}

    created = post(server, "/charges", {**CHARGE, "capture": True}, "http-first")
    assert created.status_code == 201
    again = orch.charge(1250, "usd", "cus_A", "pm_card_visa", "http-first")
    assert again.id == created.json()["id"]
    assert orch.job(again.id).fingerprint == again.fingerprint
    # A UTF-8 key in the header is the same str key in Python.
    accented = orch.charge(1250, "usd", "cus_A", "pm_card_visa", "commande-\u00e9t\u00e9")
    utf8 = requests.post(
        f"{server}/api/v1/charges",
        json=CHARGE,
        headers={**AUTH, "Idempotency-Key": "commande-\u00e9t\u00e9".encode()},
        timeout=10,
    )
    assert utf8.status_code == 200 and utf8.json()["id"] == accented.id
    assert count_jobs(orch) == 3


def test_an_http_email_is_the_python_email(server: str, orch: Any) -> None:
    py = orch.send_email(
        ["a@example.com", "b@example.com"],
        "Receipt",
        "Thanks!",
        idempotency_key="mail-1",
        from_email=SENDER,
    )
    body = {
        "to": ["a@example.com", "b@example.com"],
        "subject": "Receipt",
        "body": "Thanks!",
        "from_email": SENDER,
    }
    resp = post(server, "/emails", body, "mail-1")
    assert resp.status_code == 200 and resp.json()["id"] == py.id
    assert resp.json()["kind"] == "email" and resp.json()["amount"] is None
    assert "params" not in resp.json()  # the body and recipients stay out of answers
    # The sender defaults to ORCHESTRATOR_EMAIL_FROM; body and template are exclusive.
    fresh = post(server, "/emails", {"to": "c@example.com", "subject": "Hi", "body": "x"}, "m-2")
    assert fresh.status_code == 201
    both = {"to": "c@example.com", "subject": "Hi", "body": "x", "template": "d-" + "0" * 32}
    assert post(server, "/emails", both, "m-3").status_code == 400


def test_refunds_over_http_match_the_python_api(server: str, orch: Any) -> None:
    """A refund by HTTP with a Python refund's key is that refund; over-refunds are 409; an
    unknown charge is 404."""
    charge = orch.charge(2000, "usd", "cus_C", "pm_card_visa", "refunded-charge")
    assert orch.executor().run(charge.id) is JobState.SUCCEEDED
    py = orch.refund(charge.id, 500, idempotency_key="refund-1", metadata={"why": "late"})
    body = {"charge_job_id": charge.id, "amount": 500, "metadata": {"why": "late"}}
    same = post(server, "/refunds", body, "refund-1")
    assert same.status_code == 200 and same.json()["id"] == py.id
    assert same.json()["parent_job_id"] == charge.id and same.json()["kind"] == "refund"
    rest = post(server, "/refunds", {"charge_job_id": charge.id}, "refund-2")
    assert rest.status_code == 201 and rest.json()["amount"] == 1500
    over = post(server, "/refunds", {"charge_job_id": charge.id, "amount": 1}, "refund-3")
    assert over.status_code == 409 and over.json()["code"] == "conflict"
    unknown = post(server, "/refunds", {"charge_job_id": str(uuid.uuid4())}, "refund-4")
    assert unknown.status_code == 404
    assert post(server, "/refunds", {"charge_job_id": "nope"}, "refund-5").status_code == 400


def test_get_job_reads_it_back(server: str, orch: Any) -> None:
    job = orch.charge(300, "usd", None, "pm_card_visa", "read-1")
    shown = get(server, f"/jobs/{job.id}")
    assert shown.status_code == 200
    assert shown.json()["id"] == job.id and shown.json()["customer"] is None
    assert get(server, f"/jobs/{uuid.uuid4()}").status_code == 404
    assert get(server, "/jobs/not-a-uuid").status_code == 400


# -- cancel --------------------------------------------------------------------------------


def test_cancel_a_pending_job_then_again(server: str, orch: Any) -> None:
    """pending -> cancelled (200); a retried cancel answers 200 with the same job; an unknown
    job is 404, a succeeded one 409; the header and a reason are required."""
    job = orch.charge(400, "usd", None, "pm_card_visa", "to-cancel")
    path = f"/jobs/{job.id}/cancel"
    assert post(server, path, {"reason": "customer left"}, None).status_code == 400
    assert post(server, path, {}, "c-1").status_code == 400
    assert post(server, path, {"reason": "x", "force": True}, "c-1").status_code == 400
    first = post(server, path, {"reason": "customer left"}, "c-1")
    assert first.status_code == 200, first.text
    assert first.json()["state"] == "cancelled"
    assert orch.job(job.id).state is JobState.CANCELLED
    again = post(server, path, {"reason": "customer left"}, "c-1")
    assert again.status_code == 200 and again.json() == first.json()
    unknown = post(server, f"/jobs/{uuid.uuid4()}/cancel", {"reason": "x"}, "c-2")
    assert unknown.status_code == 404 and unknown.json()["code"] == "not_found"

    done = orch.charge(500, "usd", None, "pm_card_visa", "done-1")
    assert orch.executor().run(done.id) is JobState.SUCCEEDED
    refused = post(server, f"/jobs/{done.id}/cancel", {"reason": "late"}, "c-3")
    assert refused.status_code == 409 and refused.json()["code"] == "conflict"
    assert orch.job(done.id).state is JobState.SUCCEEDED


# -- end to end ----------------------------------------------------------------------------


def test_a_charge_over_http_runs_on_a_worker_and_reads_back(
    server: str, orch: Any, worker: Any, simulator: Any
) -> None:
    """POST /charges, an in-process dramatiq worker executes it, GET shows it succeeded with
    the simulator's PaymentIntent."""
    created = post(server, "/charges", {**CHARGE, "metadata": {"order": "e2e"}}, "e2e-1")
    assert created.status_code == 201
    job_id = created.json()["id"]
    wait_until(lambda: get(server, f"/jobs/{job_id}").json()["state"] == "succeeded")
    shown = get(server, f"/jobs/{job_id}").json()
    intents = simulator.payment_intents()
    assert len(intents) == 1 and intents[0]["id"] == shown["provider_ref"]
    assert intents[0]["metadata"]["orchestrator_job_id"] == job_id
    assert shown["attempts"] == 1 and shown["provider_status"] == "succeeded"
    assert shown["last_error_code"] is None and shown["dead_reason"] is None


# -- the OpenAPI document ------------------------------------------------------------------


def test_openapi_document_matches_the_routes(server: str) -> None:
    from starlette.routing import Route

    from orchestrator.app.http import api_routes

    served = get(server, "/openapi.json")
    assert served.status_code == 200 and served.json() == OPENAPI
    routed = set()
    unused: Any = None
    for route in api_routes(unused, token=None):
        assert isinstance(route, Route)
        routed |= {(m, route.path) for m in (route.methods or set()) - {"HEAD"}}
    assert routed == set(_operations())
    schemas = OPENAPI["components"]["schemas"]
    for name in ("ChargeRequest", "RefundRequest", "EmailRequest", "CancelRequest"):
        assert schemas[name]["additionalProperties"] is False and schemas[name]["required"]
        for prop in schemas[name]["properties"].values():
            assert "type" in prop or "oneOf" in prop


def test_schemathesis_finds_no_server_error_and_answers_match_the_schema(
    server: str, orch: Any
) -> None:
    """Property-based requests from the document (valid and invalid, with the token) never
    get a 5xx, and every answer has a documented status, content type and schema."""
    import hypothesis
    import schemathesis
    from hypothesis import HealthCheck
    from schemathesis.checks import (
        content_type_conformance,
        not_a_server_error,
        response_schema_conformance,
        status_code_conformance,
    )
    from schemathesis.generation import GenerationMode

    pending = orch.charge(100, "usd", None, "pm_card_visa", "fuzz-pending")
    assert pending.state is JobState.PENDING
    schema = schemathesis.openapi.from_dict(OPENAPI)
    schema.config.update(base_url=server, headers=AUTH)
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    statuses: dict[tuple[str, str], set[int]] = {}
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]
        # The document's own GET takes no input: nothing to make invalid.
        invalid = [GenerationMode.NEGATIVE] if operation.path != "/api/v1/openapi.json" else []
        for mode in [GenerationMode.POSITIVE, *invalid]:

            @hypothesis.settings(
                max_examples=40,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
                derandomize=True,
            )
            @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
            def check(case: Any) -> None:
                response = case.call(headers=AUTH, timeout=10)
                statuses.setdefault((case.method, case.path), set()).add(response.status_code)
                case.validate_response(response, checks=checks)  # raises what it finds

            check()
    assert set(statuses) == set(_operations())
    # Valid input got through to the library, and invalid input was refused.
    assert 201 in statuses[("POST", "/api/v1/charges")], statuses
    assert all(400 in answers for op, answers in statuses.items() if op[0] == "POST"), statuses


def test_an_authorization_over_http_is_the_python_one_and_cancel_voids_it(
    server: str, orch: Any
) -> None:
    """capture=false is charge(capture=False): the same job under one key; once authorized,
    cancel answers the void job, and after the void a retried cancel answers the cancelled
    charge."""
    body = {**CHARGE, "capture": False}
    created = post(server, "/charges", body, "auth-only")
    assert created.status_code == 201
    assert created.json()["captured"] is False and created.json()["captured_amount"] is None
    same = orch.charge(1250, "usd", "cus_A", "pm_card_visa", "auth-only", capture=False)
    assert same.id == created.json()["id"]
    contradiction = {**body, "capture_method": "automatic"}
    assert post(server, "/charges", contradiction, "auth-2").status_code == 400

    assert orch.executor().run(same.id) is JobState.SUCCEEDED
    shown = get(server, f"/jobs/{same.id}").json()
    assert shown["captured_amount"] == 0 and shown["capture_before"] is not None
    void = post(server, f"/jobs/{same.id}/cancel", {"reason": "out of stock"}, "void-1")
    assert void.status_code == 200 and void.json()["kind"] == "void"
    assert void.json()["parent_job_id"] == same.id
    assert orch.executor().run(void.json()["id"]) is JobState.SUCCEEDED
    again = post(server, f"/jobs/{same.id}/cancel", {"reason": "out of stock"}, "void-1")
    assert again.status_code == 200, again.text
    assert again.json()["id"] == same.id and again.json()["state"] == "cancelled"


def test_a_charge_names_its_provider_and_failover_over_http(server: str, orch: Any) -> None:
    body = {
        "amount": 1500,
        "currency": "usd",
        "payment_method": "pm_card_visa",
        "provider": "stripe",
        "failover": {"provider": "stripe", "payment_method": "pm_card_visa"},
    }
    refused = post(server, "/charges", body, "http-failover-1")
    assert refused.status_code == 400
    assert "another provider" in refused.json()["error"]
    assert count_jobs(orch) == 0
    unknown = post(server, "/charges", {**body, "provider": "paypal", "failover": None}, "k2")
    assert unknown.status_code == 400
    assert "'paypal' is not registered" in unknown.json()["error"]
    ok = post(server, "/charges", {**body, "failover": None}, "http-provider-1")
    assert ok.status_code == 201
    assert orch.job(ok.json()["id"]).provider == "stripe"


def test_rotated_api_and_ops_tokens_apply_without_restarting_the_web_process(
    orch: Any, simulator: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tokens from files (ORCHESTRATOR_API_TOKEN_FILE, ..._OPS_TOKEN_FILE) are read per
    request: after the file changes and the settings re-read it, the old token is refused and
    the new one accepted by the same running app."""
    from orchestrator.web import create_app

    api_file, ops_file = tmp_path / "api_token", tmp_path / "ops_token"
    old_api, new_api = "api-old-" + uuid.uuid4().hex, "api-new-" + uuid.uuid4().hex
    old_ops, new_ops = "ops-old-" + uuid.uuid4().hex, "ops-new-" + uuid.uuid4().hex
    api_file.write_text(old_api + "\n")
    ops_file.write_text(old_ops + "\n")
    monkeypatch.setenv("ORCHESTRATOR_API_TOKEN_FILE", str(api_file))
    monkeypatch.setenv("ORCHESTRATOR_OPS_TOKEN_FILE", str(ops_file))
    rotating = orchestrator_like(orch, simulator.url, email_from=SENDER)

    def answers(url: str, path: str, token: str) -> int:
        headers = {"Authorization": f"Bearer {token}"}
        return int(requests.get(f"{url}{path}", headers=headers, timeout=10).status_code)

    with serve(create_app(rotating)) as url:
        job = orch.charge(1000, "usd", None, "pm_card_visa", "rotate-1")
        assert answers(url, f"/api/v1/jobs/{job.id}", old_api) == 200
        assert answers(url, "/ops/api/counts", old_ops) == 200
        api_file.write_text(new_api + "\n")
        ops_file.write_text(new_ops + "\n")
        changed = rotating.settings.refresh_secrets()
        assert set(changed) == {"ORCHESTRATOR_API_TOKEN_FILE", "ORCHESTRATOR_OPS_TOKEN_FILE"}
        assert answers(url, f"/api/v1/jobs/{job.id}", old_api) == 401
        assert answers(url, f"/api/v1/jobs/{job.id}", new_api) == 200
        assert answers(url, "/ops/api/counts", old_ops) == 401
        assert answers(url, "/ops/api/counts", new_ops) == 200
