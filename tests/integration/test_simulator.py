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

from orchestrator.dev.simulator import Simulator, SimulatorControl

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
    sim: Simulator,
    api_key: str = STRIPE_KEY,
    timeout: tuple[float, float] = (2, 5),
    account: str | None = None,
) -> stripe.StripeClient:
    return stripe.StripeClient(
        api_key,
        stripe_account=account,
        base_addresses={"api": sim.url},
        http_client=stripe.RequestsClient(timeout=timeout),
        max_network_retries=0,
    )


# A server-side, off-session charge as Stripe documents it: no customer present, so no
# redirects and no return_url.
OFF_SESSION: dict[str, Any] = {
    "off_session": True,
    "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"},
}


def create_pi(
    client: stripe.StripeClient,
    key: str | None,
    *,
    amount: int = 1000,
    payment_method: str = "pm_card_visa",
    job_id: str = "job-1",
    **extra: Any,
) -> stripe.PaymentIntent:
    params: dict[str, Any] = {
        "amount": amount,
        "currency": "eur",
        "payment_method": payment_method,
        "confirm": True,
        "metadata": {"orchestrator_job_id": job_id},
        **OFF_SESSION,
    }
    params.update(extra)
    options: dict[str, Any] = {} if key is None else {"idempotency_key": key}
    return client.v1.payment_intents.create(params, options=options)  # type: ignore[arg-type]


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
    """A 500 is saved against the key: the retry gets the same 500 without re-executing.

    rate_500 executed nothing; rate_500_after_execute created the intent (list finds it)."""
    client = stripe_client(sim)
    sim.set_faults("stripe", first_try_only=True, **{fault: 1.0})
    for _ in range(2):
        with pytest.raises(stripe.APIError) as exc_info:
            create_pi(client, "k-500", customer="cus_500")
        assert exc_info.value.http_status == 500
    log = sim.requests_log()
    assert [(e["fault"], e["replayed"]) for e in log] == [(fault, False), (None, True)]
    sim.set_faults("stripe")
    listed = client.v1.payment_intents.list({"customer": "cus_500"})
    assert len(listed.data) == expected_pis
    assert len(sim.payment_intents()) == expected_pis


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


# ------------------------------------------------------------------ stripe: documented behaviour

RETURN_URL = "https://shop.example.com/checkout/done"


def intent_params(**overrides: Any) -> Any:
    """A confirmed create without any payment-method configuration (the API's defaults)."""
    params: dict[str, Any] = {
        "amount": 1000,
        "currency": "eur",
        "payment_method": "pm_card_visa",
        "confirm": True,
    }
    params.update(overrides)
    return {k: v for k, v in params.items() if v is not None}


def test_confirm_with_automatic_payment_methods_requires_return_url(sim: Simulator) -> None:
    """confirm=true with automatic payment methods that allow redirects needs a return_url."""
    client = stripe_client(sim)
    for shape in (
        {},  # neither automatic_payment_methods nor payment_method_types: automatic is on
        {"automatic_payment_methods": {"enabled": True}},
        {"automatic_payment_methods": {"enabled": True, "allow_redirects": "always"}},
    ):
        with pytest.raises(stripe.InvalidRequestError) as exc_info:
            client.v1.payment_intents.create(
                intent_params(**shape),
                options={"idempotency_key": "k-return-url"},
            )
        assert exc_info.value.http_status == 400
        assert exc_info.value.param == "return_url"
        assert str(exc_info.value.user_message).startswith("A `return_url` must be specified")
        assert "`automatic_payment_methods[allow_redirects]` to `never`" in str(
            exc_info.value.user_message
        )
    assert sim.payment_intents() == []
    # Not saved against the key: the same key with an accepted shape executes.
    never = {"automatic_payment_methods": {"enabled": True, "allow_redirects": "never"}}
    pi = client.v1.payment_intents.create(
        intent_params(**never),
        options={"idempotency_key": "k-return-url"},
    )
    assert pi.status == "succeeded"
    assert pi.automatic_payment_methods is not None
    assert pi.automatic_payment_methods.allow_redirects == "never"
    with_url = client.v1.payment_intents.create(intent_params(return_url=RETURN_URL))
    assert with_url.status == "succeeded"
    typed = client.v1.payment_intents.create(intent_params(payment_method_types=["card"]))
    assert typed.status == "succeeded" and typed.payment_method_types == ["card"]
    assert typed.automatic_payment_methods is None
    unconfirmed = client.v1.payment_intents.create(intent_params(confirm=None))
    assert unconfirmed.status == "requires_confirmation"


def test_payment_method_configuration_and_confirm_only_params(sim: Simulator) -> None:
    """Both configurations at once, confirm-only params without confirm, bad allow_redirects."""
    client = stripe_client(sim)
    bad: list[tuple[dict[str, Any], str | None, str]] = [
        (
            {"automatic_payment_methods": {"enabled": True}, "payment_method_types": ["card"]},
            None,
            "You may only specify one of these parameters: automatic_payment_methods, "
            "payment_method_types.",
        ),
        ({"confirm": None, "return_url": RETURN_URL}, "return_url", "confirm=true"),
        ({"confirm": None, "off_session": True}, "off_session", "confirm=true"),
        (
            {"automatic_payment_methods": {"enabled": True, "allow_redirects": "sometimes"}},
            "automatic_payment_methods[allow_redirects]",
            "always, never",
        ),
        ({"capture_method": "later", **OFF_SESSION}, "capture_method", "manual"),
    ]
    for params, param, message in bad:
        with pytest.raises(stripe.InvalidRequestError) as exc_info:
            client.v1.payment_intents.create(intent_params(**params))
        assert exc_info.value.http_status == 400
        assert exc_info.value.param == param
        assert message in str(exc_info.value.user_message)
    assert sim.payment_intents() == []


def test_off_session_authentication_required_is_a_saved_card_error(sim: Simulator) -> None:
    """A card needing 3DS, charged off-session: 402 authentication_required, saved and replayed."""
    client = stripe_client(sim)
    errors: list[stripe.CardError] = []
    for _ in range(2):
        with pytest.raises(stripe.CardError) as exc_info:
            create_pi(client, "k-3ds-off", payment_method="pm_card_authenticationRequired")
        errors.append(exc_info.value)
    err = errors[0]
    assert err.http_status == 402 and err.code == "authentication_required"
    assert err.user_message == "Your card was declined. This transaction requires authentication."
    assert err.error is not None and err.error.decline_code == "authentication_required"
    pi = err.error.payment_intent
    assert pi is not None and pi.status == "requires_payment_method"
    assert pi.last_payment_error is not None
    assert pi.last_payment_error.code == "authentication_required"
    assert errors[1].headers is not None and errors[1].headers["Idempotent-Replayed"] == "true"
    assert len(sim.payment_intents()) == 1


def test_on_session_authentication_redirects_to_return_url(sim: Simulator) -> None:
    """On-session, the same card leaves the intent requires_action with a redirect_to_url."""
    client = stripe_client(sim)
    pi = client.v1.payment_intents.create(
        intent_params(payment_method="pm_card_authenticationRequired", return_url=RETURN_URL)
    )
    assert pi.status == "requires_action"
    assert pi.client_secret is not None and pi.client_secret.startswith(f"{pi.id}_secret_")
    assert pi.next_action is not None and pi.next_action.type == "redirect_to_url"
    redirect = pi.next_action.redirect_to_url
    assert redirect is not None and redirect.return_url == RETURN_URL
    assert redirect.url is not None and redirect.url.startswith("https://")
    plain = create_pi(client, None)
    assert plain.client_secret is not None and plain.client_secret.startswith(f"{plain.id}_")


def test_pass_through_fields_are_stored_and_returned(sim: Simulator) -> None:
    """Descriptive and Connect fields round-trip; application_fee_amount needs Connect."""
    client = stripe_client(sim)
    default = create_pi(client, None)
    assert default.capture_method == "automatic_async" and default["off_session"] is True
    assert default.payment_method_types == ["card"]
    pi = create_pi(
        client,
        "k-fields",
        capture_method="automatic",
        statement_descriptor_suffix="ORDER 42",
        receipt_email="alice@example.com",
        description="Order 42",
        on_behalf_of="acct_seller1",
        transfer_data={"destination": "acct_seller1"},
        application_fee_amount=123,
    )
    fetched = client.v1.payment_intents.retrieve(pi.id)
    for obj in (pi, fetched):
        assert obj.capture_method == "automatic"
        assert obj.statement_descriptor_suffix == "ORDER 42"
        assert obj.receipt_email == "alice@example.com" and obj.description == "Order 42"
        assert obj.on_behalf_of == "acct_seller1" and obj.application_fee_amount == 123
        assert obj.transfer_data is not None and obj.transfer_data.destination == "acct_seller1"
    with pytest.raises(stripe.InvalidRequestError) as no_connect:
        create_pi(client, "k-fee", application_fee_amount=100)
    assert no_connect.value.param == "application_fee_amount"
    direct = create_pi(
        stripe_client(sim, account="acct_direct1"), "k-fee", application_fee_amount=0
    )
    assert direct.application_fee_amount == 0


def test_manual_capture_capture_and_cancel(sim: Simulator) -> None:
    """capture_method=manual authorizes; capture (partial) and cancel follow Stripe's states."""
    client = stripe_client(sim)
    pi = create_pi(client, "k-auth-only", capture_method="manual")
    assert pi.status == "requires_capture"
    assert pi.amount_capturable == 1000 and pi.amount_received == 0
    with pytest.raises(stripe.InvalidRequestError) as too_much:
        client.v1.payment_intents.capture(pi.id, {"amount_to_capture": 1001})
    assert too_much.value.param == "amount_to_capture"
    captured = client.v1.payment_intents.capture(
        pi.id, {"amount_to_capture": 600}, options={"idempotency_key": "k-capture"}
    )
    assert captured.status == "succeeded"
    assert captured.amount_received == 600 and captured.amount_capturable == 0
    again = client.v1.payment_intents.capture(
        pi.id, {"amount_to_capture": 600}, options={"idempotency_key": "k-capture"}
    )
    assert again.amount_received == 600  # replayed
    for action in (client.v1.payment_intents.capture, client.v1.payment_intents.cancel):
        with pytest.raises(stripe.InvalidRequestError) as wrong_state:
            action(pi.id)
        assert wrong_state.value.http_status == 400
        assert wrong_state.value.code == "payment_intent_unexpected_state"
    assert client.v1.refunds.create({"payment_intent": pi.id}).amount == 600
    held = create_pi(client, None, capture_method="manual")
    canceled = client.v1.payment_intents.cancel(
        held.id, {"cancellation_reason": "requested_by_customer"}
    )
    assert canceled.status == "canceled" and canceled.amount_capturable == 0
    assert canceled.cancellation_reason == "requested_by_customer"
    assert canceled.canceled_at is not None
    unconfirmed = client.v1.payment_intents.create(intent_params(confirm=None))
    assert client.v1.payment_intents.cancel(unconfirmed.id).status == "canceled"


def test_stripe_account_scopes_objects_and_idempotency_keys(sim: Simulator) -> None:
    """Objects live in their Connect account; keys are scoped per (API key, account)."""
    platform = stripe_client(sim)
    seller = stripe_client(sim, account="acct_sellerA")
    other = stripe_client(sim, account="acct_sellerB")
    mine = create_pi(seller, "k-scoped", customer="cus_1", job_id="job-scoped")
    assert seller.v1.payment_intents.retrieve(mine.id).id == mine.id
    for client in (platform, other):
        with pytest.raises(stripe.InvalidRequestError) as missing:
            client.v1.payment_intents.retrieve(mine.id)
        assert missing.value.http_status == 404 and missing.value.code == "resource_missing"
        assert client.v1.payment_intents.list({"customer": "cus_1"}).data == []
        query = {"query": "metadata['orchestrator_job_id']:'job-scoped'"}
        assert client.v1.payment_intents.search(query).data == []  # type: ignore[arg-type]
    assert [p.id for p in seller.v1.payment_intents.list({"customer": "cus_1"}).data] == [mine.id]
    assert create_pi(seller, "k-scoped", customer="cus_1", job_id="job-scoped").id == mine.id
    on_platform = create_pi(platform, "k-scoped", customer="cus_1", job_id="job-scoped")
    assert on_platform.id != mine.id  # same key, other account: executed again
    refund = seller.v1.refunds.create({"payment_intent": mine.id, "amount": 100})
    with pytest.raises(stripe.InvalidRequestError):
        platform.v1.refunds.retrieve(refund.id)
    with pytest.raises(stripe.InvalidRequestError):
        platform.v1.refunds.create({"payment_intent": mine.id})
    assert platform.v1.refunds.list().data == []
    assert [r.id for r in seller.v1.refunds.list().data] == [refund.id]
    with pytest.raises(stripe.PermissionError):
        stripe_client(sim, account="not-an-account").v1.payment_intents.list()


def test_list_payment_intents_filters_pages_and_auto_paging(sim: Simulator) -> None:
    """List: customer and created[...] filters, newest first, cursors, no search lag."""
    client = stripe_client(sim)
    sim.set_faults("stripe", search_lag_s=3600)  # list is strongly consistent anyway
    created: list[stripe.PaymentIntent] = []
    for index in range(5):
        created.append(create_pi(client, None, customer="cus_list" if index % 2 == 0 else None))
        sim.advance_clock(10)
    create_pi(client, None, customer="cus_other")
    newest_first = [p.id for p in reversed(created)]
    first = client.v1.payment_intents.list({"limit": 2})
    assert first.has_more and len(first.data) == 2
    all_ids = [p.id for p in client.v1.payment_intents.list({"limit": 2}).auto_paging_iter()]
    assert all_ids[1:] == newest_first and len(all_ids) == 6
    customer = client.v1.payment_intents.list({"customer": "cus_list"})
    assert [p.id for p in customer.data] == [created[4].id, created[2].id, created[0].id]
    assert not customer.has_more
    pivot = created[2].created
    assert [p.id for p in client.v1.payment_intents.list({"created": {"gte": pivot}}).data][
        1:
    ] == newest_first[:3]
    assert [p.id for p in client.v1.payment_intents.list({"created": {"gt": pivot}}).data][
        1:
    ] == newest_first[:2]
    assert [p.id for p in client.v1.payment_intents.list({"created": {"lt": pivot}}).data] == (
        newest_first[3:]
    )
    lte = client.v1.payment_intents.list({"created": {"lte": pivot}, "customer": "cus_list"})
    assert [p.id for p in lte.data] == [created[2].id, created[0].id]
    after = client.v1.payment_intents.list({"starting_after": created[3].id, "limit": 2})
    assert [p.id for p in after.data] == [created[2].id, created[1].id] and after.has_more
    before = client.v1.payment_intents.list({"ending_before": created[1].id, "limit": 2})
    assert [p.id for p in before.data] == [created[3].id, created[2].id] and before.has_more
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.payment_intents.list({"limit": 101})
    refund_old = client.v1.refunds.create({"payment_intent": created[0].id})
    sim.advance_clock(10)
    refund_new = client.v1.refunds.create({"payment_intent": created[1].id})
    since = client.v1.refunds.list({"created": {"gt": refund_old.created}})
    assert [r.id for r in since.data] == [refund_new.id]
    until = client.v1.refunds.list({"created": {"lte": refund_old.created}})
    assert [r.id for r in until.data] == [refund_old.id]


def test_idempotency_key_expires_after_24_hours(sim: Simulator) -> None:
    """A key replays for 24 h of simulated time, then the same request executes again."""
    client = stripe_client(sim)
    control = SimulatorControl(sim.url)
    first = create_pi(client, "k-expiry")
    control.advance_clock(24 * 3600 - 5)
    assert create_pi(client, "k-expiry").id == first.id
    control.advance_clock(5)
    second = create_pi(client, "k-expiry")
    assert second.id != first.id
    assert second.created >= first.created + 24 * 3600
    assert create_pi(client, "k-expiry").id == second.id
    assert len(sim.payment_intents()) == 2
    control.close()


def test_search_lag_is_measured_on_the_simulated_clock(sim: Simulator) -> None:
    """An intent hidden from search by the lag appears once the clock has moved past it."""
    client = stripe_client(sim)
    sim.set_faults("stripe", search_lag_s=900)
    pi = create_pi(client, "k-lag", job_id="job-lag")
    query = {"query": "metadata['orchestrator_job_id']:'job-lag'"}
    assert client.v1.payment_intents.search(query).data == []  # type: ignore[arg-type]
    sim.advance_clock(901)
    found = client.v1.payment_intents.search(query)  # type: ignore[arg-type]
    assert [p.id for p in found.data] == [pi.id]


def test_clock_control_endpoint(sim: Simulator) -> None:
    """POST /_sim/clock advances the clock, rejects bad input; reset() sets it back."""
    url = f"{sim.url}/_sim/clock"
    assert requests.post(url, json={"advance_s": 60}, timeout=2).json()["offset_s"] == 60
    assert requests.post(url, json={"advance_s": -1}, timeout=2).status_code == 400
    assert requests.post(url, json={"seconds": 1}, timeout=2).status_code == 400
    assert requests.get(url, timeout=2).json()["offset_s"] == 60
    pi = create_pi(stripe_client(sim), None)
    assert pi.created >= int(time.time()) + 59
    sim.reset()
    assert requests.get(url, timeout=2).json()["offset_s"] == 0


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
