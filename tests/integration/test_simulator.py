"""Specification of the Stripe/SendGrid simulator, driven through the real provider SDKs."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import python_http_client.exceptions as sg_errors
import requests
import sendgrid
import stripe

from orchestrator.simulator import Simulator, SimulatorControl

STRIPE_KEY = "sk_test_sim"
SENDGRID_KEY = "SG.sim"


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    simulator = Simulator(stripe_api_key=STRIPE_KEY, sendgrid_api_key=SENDGRID_KEY, seed=1).start()
    yield simulator
    simulator.stop()


@pytest.fixture(autouse=True)
def _fresh(sim: Simulator) -> None:
    sim.reset()


def stripe_client(
    sim: Simulator, api_key: str = STRIPE_KEY, timeout: tuple[float, float] = (2, 5)
) -> stripe.StripeClient:
    return stripe.StripeClient(
        api_key,
        base_addresses={"api": sim.url},
        http_client=stripe.RequestsClient(timeout=timeout),
        max_network_retries=0,
    )


def create_pi(
    client: stripe.StripeClient,
    key: str,
    *,
    amount: int = 1000,
    payment_method: str = "pm_card_visa",
    job_id: str = "job-1",
) -> stripe.PaymentIntent:
    return client.v1.payment_intents.create(
        {
            "amount": amount,
            "currency": "eur",
            "payment_method": payment_method,
            "confirm": True,
            "metadata": {"orchestrator_job_id": job_id},
        },
        options={"idempotency_key": key},
    )


def mail_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "personalizations": [{"to": [{"email": "alice@example.com"}]}],
        "from": {"email": "billing@example.com"},
        "subject": "Your receipt",
        "content": [{"type": "text/plain", "value": "Thanks!"}],
        "custom_args": {"orchestrator_job_id": "job-9"},
    }
    body.update(overrides)
    return body


# --------------------------------------------------------------------------- stripe


def test_create_succeeds_and_round_trips_metadata(sim: Simulator) -> None:
    """A confirmed PaymentIntent with a good card succeeds and keeps its metadata."""
    pi = create_pi(stripe_client(sim), "k-success")
    assert pi.id.startswith("pi_") and len(pi.id) == 27
    assert pi.status == "succeeded"
    assert pi.amount_received == 1000 and pi.currency == "eur"
    assert isinstance(pi.latest_charge, str) and pi.latest_charge.startswith("ch_")
    assert pi.metadata["orchestrator_job_id"] == "job-1"
    fetched = stripe_client(sim).v1.payment_intents.retrieve(pi.id)
    assert fetched.metadata["orchestrator_job_id"] == "job-1"
    assert [p["id"] for p in sim.payment_intents()] == [pi.id]


def test_same_key_same_params_is_replayed(sim: Simulator) -> None:
    """Re-sending a key with identical params returns the saved response, marked replayed."""
    client = stripe_client(sim)
    first = create_pi(client, "k-replay")
    second = create_pi(client, "k-replay")
    assert second.id == first.id
    assert len(sim.payment_intents()) == 1
    assert [e["replayed"] for e in sim.requests_log()] == [False, True]


@pytest.mark.parametrize(
    ("fault", "expected_pis"), [("rate_500", 0), ("rate_500_after_execute", 1)]
)
def test_saved_500_is_replayed_for_same_key(sim: Simulator, fault: str, expected_pis: int) -> None:
    """A 500 is saved against the key: the retry gets the same 500 without re-executing."""
    client = stripe_client(sim)
    sim.set_faults("stripe", first_try_only=True, **{fault: 1.0})
    for _ in range(2):
        with pytest.raises(stripe.APIError) as exc_info:
            create_pi(client, "k-500")
        assert exc_info.value.http_status == 500
    assert len(sim.payment_intents()) == expected_pis
    log = sim.requests_log()
    assert [(e["fault"], e["replayed"]) for e in log] == [(fault, False), (None, True)]


def test_same_key_other_params_is_idempotency_error(sim: Simulator) -> None:
    """Reusing a key with different parameters is refused with an idempotency_error."""
    client = stripe_client(sim)
    create_pi(client, "k-mismatch", amount=1000)
    with pytest.raises(stripe.IdempotencyError) as exc_info:
        create_pi(client, "k-mismatch", amount=2000)
    assert "k-mismatch" in str(exc_info.value)
    assert len(sim.payment_intents()) == 1


def test_concurrent_same_key_gets_409(sim: Simulator) -> None:
    """A request whose key is still executing is answered 409 idempotency_key_in_use."""
    sim.set_faults("stripe", latency_ms=400)
    results: list[str] = []
    first = threading.Thread(target=lambda: results.append(create_pi(stripe_client(sim), "k-c").id))
    first.start()
    time.sleep(0.1)
    with pytest.raises(stripe.APIError) as exc_info:
        create_pi(stripe_client(sim), "k-c")
    first.join()
    assert exc_info.value.http_status == 409
    assert exc_info.value.error is not None
    assert exc_info.value.error.code == "idempotency_key_in_use"
    assert len(results) == 1 and len(sim.payment_intents()) == 1


def test_declined_card_raises_card_error_and_keeps_intent(sim: Simulator) -> None:
    """A declining test card gives a 402 CardError carrying the code and the intent."""
    with pytest.raises(stripe.CardError) as exc_info:
        create_pi(stripe_client(sim), "k-decline", payment_method="pm_card_chargeDeclined")
    err = exc_info.value
    assert err.code == "card_declined"
    assert err.error is not None and err.error.decline_code == "generic_decline"
    (pi,) = sim.payment_intents()
    assert pi["status"] == "requires_payment_method"
    assert err.error.payment_intent is not None and err.error.payment_intent.id == pi["id"]
    with pytest.raises(stripe.CardError) as insufficient:
        create_pi(
            stripe_client(sim), "k-nsf", payment_method="pm_card_chargeDeclinedInsufficientFunds"
        )
    assert insufficient.value.error is not None
    assert insufficient.value.error.decline_code == "insufficient_funds"


def test_wrong_api_key_is_authentication_error_without_echoing_key(sim: Simulator) -> None:
    """A wrong key is a 401 AuthenticationError whose body masks the key."""
    bad_key = "sk_test_definitelywrongkey9876"
    with pytest.raises(stripe.AuthenticationError) as exc_info:
        create_pi(stripe_client(sim, api_key=bad_key), "k-auth")
    body = exc_info.value.http_body or ""
    assert bad_key not in body and "9876" in body
    assert sim.payment_intents() == []


def test_rate_limit_is_rate_limit_error_and_not_saved(sim: Simulator) -> None:
    """A 429 raises RateLimitError, executes nothing, and is not saved against the key."""
    client = stripe_client(sim)
    sim.set_faults("stripe", rate_429=1.0)
    with pytest.raises(stripe.RateLimitError):
        create_pi(client, "k-429")
    assert sim.payment_intents() == []
    sim.set_faults("stripe")
    assert create_pi(client, "k-429").status == "succeeded"
    assert [e["status"] for e in sim.requests_log()] == [429, 200]


def test_cut_after_execute_then_retry_replays(sim: Simulator) -> None:
    """A connection cut after execution loses the answer, but the retry replays the intent."""
    client = stripe_client(sim)
    sim.set_faults("stripe", rate_cut_after_execute=1.0, first_try_only=True)
    with pytest.raises(stripe.APIConnectionError):
        create_pi(client, "k-cut-after")
    (created,) = sim.payment_intents()
    retried = create_pi(client, "k-cut-after")
    assert retried.id == created["id"]
    log = sim.requests_log()
    assert [(e["status"], e["fault"], e["replayed"]) for e in log] == [
        (None, "rate_cut_after_execute", False),
        (200, None, True),
    ]


def test_cut_before_execute_creates_nothing(sim: Simulator) -> None:
    """A connection cut before execution raises APIConnectionError and creates nothing."""
    sim.set_faults("stripe", rate_cut_before_execute=1.0)
    with pytest.raises(stripe.APIConnectionError):
        create_pi(stripe_client(sim), "k-cut-before")
    assert sim.payment_intents() == []


def test_timeout_executes_and_retry_replays(sim: Simulator) -> None:
    """A slow answer times the client out although the intent exists; the retry replays it."""
    sim.set_faults("stripe", rate_timeout=1.0, timeout_sleep_s=1.0, first_try_only=True)
    with pytest.raises(stripe.APIConnectionError):
        create_pi(stripe_client(sim, timeout=(2, 0.2)), "k-timeout")
    (created,) = sim.payment_intents()
    assert create_pi(stripe_client(sim), "k-timeout").id == created["id"]


def test_outage_answers_503_without_executing(sim: Simulator) -> None:
    """During an outage every provider request is a 503 and nothing is executed."""
    sim.set_faults("all", outage=True)
    with pytest.raises(stripe.APIError) as exc_info:
        create_pi(stripe_client(sim), "k-outage")
    assert exc_info.value.http_status == 503
    assert sim.payment_intents() == []


def test_validation_error_is_not_saved(sim: Simulator) -> None:
    """A parameter validation failure names the param and does not burn the key."""
    client = stripe_client(sim)
    with pytest.raises(stripe.InvalidRequestError) as exc_info:
        create_pi(client, "k-invalid", amount=0)
    assert exc_info.value.param == "amount"
    with pytest.raises(stripe.InvalidRequestError) as unknown_pm:
        create_pi(client, "k-pm", payment_method="pm_card_nope")
    assert unknown_pm.value.code == "resource_missing"
    assert create_pi(client, "k-invalid", amount=500).amount == 500


def test_search_by_metadata_honours_search_lag(sim: Simulator) -> None:
    """Search finds intents by metadata and status, except ones younger than search_lag_s."""
    client = stripe_client(sim)
    first = create_pi(client, "k-s1", job_id="job-a")
    create_pi(client, "k-s2", job_id="job-b")
    found = client.v1.payment_intents.search(
        {"query": "metadata['orchestrator_job_id']:'job-a' AND status:'succeeded'"}
    )
    assert [p.id for p in found.data] == [first.id]
    sim.set_faults("stripe", search_lag_s=30)
    create_pi(client, "k-s3", job_id="job-c")
    hidden = client.v1.payment_intents.search({"query": 'metadata["orchestrator_job_id"]:"job-c"'})
    assert hidden.data == []


def test_processing_payment_method_settles_lazily(sim: Simulator) -> None:
    """pm_sim_processing stays processing for processing_delay_s, then reads as succeeded."""
    client = stripe_client(sim)
    sim.set_faults("stripe", processing_delay_s=0.2)
    ok = create_pi(client, "k-proc", payment_method="pm_sim_processing")
    failing = create_pi(client, "k-proc-fail", payment_method="pm_sim_processing_fails")
    assert ok.status == "processing" and failing.status == "processing"
    time.sleep(0.25)
    assert client.v1.payment_intents.retrieve(ok.id).status == "succeeded"
    settled = client.v1.payment_intents.retrieve(failing.id)
    assert settled.status == "requires_payment_method"
    assert settled.last_payment_error is not None


def test_refunds_partial_list_and_over_refund(sim: Simulator) -> None:
    """Refunds reduce what remains; refunding more than remains is refused."""
    client = stripe_client(sim)
    pi = create_pi(client, "k-pay", amount=1000)
    partial = client.v1.refunds.create(
        {"payment_intent": pi.id, "amount": 300, "metadata": {"orchestrator_job_id": "r1"}},
        options={"idempotency_key": "k-ref-1"},
    )
    assert partial.id.startswith("re_") and partial.status == "succeeded"
    with pytest.raises(stripe.InvalidRequestError) as too_large:
        client.v1.refunds.create({"payment_intent": pi.id, "amount": 800})
    assert too_large.value.code == "amount_too_large"
    rest = client.v1.refunds.create({"payment_intent": pi.id})
    assert rest.amount == 700
    with pytest.raises(stripe.InvalidRequestError) as already:
        client.v1.refunds.create({"payment_intent": pi.id})
    assert already.value.code == "charge_already_refunded"
    listed = client.v1.refunds.list({"payment_intent": pi.id})
    assert {r.id for r in listed.data} == {partial.id, rest.id}
    retrieved = client.v1.refunds.retrieve(partial.id)
    assert retrieved.metadata is not None and retrieved.metadata["orchestrator_job_id"] == "r1"
    assert sim.payment_intents()[0]["amount_refunded"] == 1000


def test_unknown_route_is_stripe_shaped_404(sim: Simulator) -> None:
    """An unknown path or missing object is a Stripe-shaped 404 InvalidRequestError."""
    with pytest.raises(stripe.InvalidRequestError) as exc_info:
        stripe_client(sim).v1.payment_intents.retrieve("pi_doesnotexist")
    assert exc_info.value.http_status == 404
    assert exc_info.value.code == "resource_missing"


# --------------------------------------------------------------------------- sendgrid


def test_sendgrid_accepts_and_records_mail(sim: Simulator) -> None:
    """A valid mail is 202 with X-Message-Id, and is recorded with its custom_args."""
    client = sendgrid.SendGridAPIClient(SENDGRID_KEY, host=sim.url)
    resp = client.send(mail_body())
    assert resp.status_code == 202
    message_id = resp.headers["X-Message-Id"]
    assert message_id
    (mail,) = sim.mail()
    assert mail["message_id"] == message_id
    assert mail["custom_args"] == {"orchestrator_job_id": "job-9"}
    client.send(mail_body())
    assert len(sim.mail()) == 2  # no idempotency: a re-send delivers again


def test_sendgrid_rejects_missing_from(sim: Simulator) -> None:
    """A mail without from is a 400 naming the field; nothing is recorded."""
    client = sendgrid.SendGridAPIClient(SENDGRID_KEY, host=sim.url)
    body = mail_body()
    del body["from"]
    with pytest.raises(sg_errors.BadRequestsError) as exc_info:
        client.send(body)
    assert b'"field":"from"' in exc_info.value.body
    assert sim.mail() == []


def test_sendgrid_rejects_wrong_key(sim: Simulator) -> None:
    """A wrong SendGrid key is a 401 with SendGrid's errors body."""
    client = sendgrid.SendGridAPIClient("SG.wrong", host=sim.url)
    with pytest.raises(sg_errors.UnauthorizedError) as exc_info:
        client.send(mail_body())
    assert b"authorization grant is invalid" in exc_info.value.body


def test_sendgrid_rate_limit(sim: Simulator) -> None:
    """Faults apply to SendGrid too: a 429 in SendGrid's errors shape."""
    sim.set_faults("sendgrid", rate_429=1.0)
    client = sendgrid.SendGridAPIClient(SENDGRID_KEY, host=sim.url)
    with pytest.raises(sg_errors.TooManyRequestsError):
        client.send(mail_body())
    assert sim.mail() == []


# --------------------------------------------------------------------------- control plane


def test_simulator_control_drives_the_same_server(sim: Simulator) -> None:
    """SimulatorControl sets faults, inspects state and resets over HTTP."""
    control = SimulatorControl(sim.url)
    assert control.health()
    control.set_faults("stripe", rate_429=1.0)
    with pytest.raises(stripe.RateLimitError):
        create_pi(stripe_client(sim), "k-ctl")
    control.set_faults("stripe")
    pi = create_pi(stripe_client(sim), "k-ctl")
    refund = stripe_client(sim).v1.refunds.create({"payment_intent": pi.id, "amount": 10})
    sendgrid.SendGridAPIClient(SENDGRID_KEY, host=sim.url).send(mail_body())
    assert [p["id"] for p in control.payment_intents()] == [pi.id]
    assert [r["id"] for r in control.refunds()] == [refund.id]
    assert len(control.mail()) == 1
    assert [e["status"] for e in control.requests_log()] == [429, 200, 200, 202]
    with pytest.raises(ValueError):
        control.set_faults("stripe", no_such_fault=1.0)
    control.reset()
    assert control.payment_intents() == [] and control.requests_log() == []
    assert requests.get(f"{sim.url}/_sim/health", timeout=2).status_code == 200
    control.close()
