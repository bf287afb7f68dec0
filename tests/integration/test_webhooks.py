"""The Stripe webhook receiver over real HTTP (uvicorn), with real PostgreSQL and Redis.

Deliveries are signed with ``stripe.WebhookSignature.generate_signature_header`` or sent by
the simulator; processing runs either through the real dramatiq worker or by calling
:func:`orchestrator.webhooks.process.process_event` directly where the order of events matters.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
import requests
import stripe
import uvicorn

from orchestrator.api import Orchestrator
from orchestrator.maintenance.clock import Clock
from orchestrator.models import JobState, WebhookEvent
from orchestrator.web import create_app
from orchestrator.webhooks.listing import get_event, list_events
from orchestrator.webhooks.process import process_event
from tests.conftest import create_intent_elsewhere, orchestrator_like, stop_worker, wait_until

SECRET_OLD = "whsec_suiteOldSecret0001"
SECRET_NEW = "whsec_suiteNewSecret0002"


@dataclass(frozen=True)
class Web:
    url: str
    orch: Orchestrator

    @property
    def endpoint(self) -> str:
        return f"{self.url}/webhooks/stripe"


@pytest.fixture(scope="module")
def web(orch: Any, simulator: Any) -> Iterator[Web]:
    """The web app under uvicorn on a free loopback port, with two secrets (a rotation)."""
    secrets = f"{SECRET_OLD}, {SECRET_NEW}"
    web_orch = orchestrator_like(orch, simulator.url, stripe_webhook_secret=secrets)
    config = uvicorn.Config(create_app(web_orch), log_config=None, access_log=False)
    server = uvicorn.Server(config)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout_s=10)
    yield Web(f"http://127.0.0.1:{port}", web_orch)
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture
def sim_webhooks(web: Web, simulator: Any) -> Iterator[None]:
    """The simulator delivers its events to our endpoint, signed with the newer secret."""
    simulator.set_webhook(web.endpoint, SECRET_NEW)
    yield
    simulator.set_webhook(None)


def signed(
    event: dict[str, Any], secret: str = SECRET_OLD, at: int | None = None
) -> tuple[bytes, str]:
    body = json.dumps(event)
    header: str = stripe.WebhookSignature.generate_signature_header(body, secret, timestamp=at)
    return body.encode(), header


def post(web: Web, body: Any, header: str | None, **headers: str) -> requests.Response:
    if header is not None:
        headers["Stripe-Signature"] = header
    headers.setdefault("Content-Type", "application/json")
    return requests.post(web.endpoint, data=body, headers=headers, timeout=10)


def event_for(obj: dict[str, Any], event_type: str, event_id: str | None = None) -> dict[str, Any]:
    return {
        "id": event_id or f"evt_{uuid.uuid4().hex[:24]}",
        "object": "event",
        "type": event_type,
        "created": int(time.time()),
        "data": {"object": obj},
    }


def stored(orch: Any) -> list[WebhookEvent]:
    return list_events(orch, limit=1000)


def charge(orch: Any, key: str, pm: str = "pm_card_visa") -> Any:
    return orch.charge(1000, "usd", "cus_test", pm, key)


def transitions_to(orch: Any, job_id: str, state: str) -> list[Any]:
    return [t for t in orch.transitions(job_id) if t.to_state == state]


def intents_for(simulator: Any, job_id: str) -> list[dict[str, Any]]:
    return [
        pi
        for pi in simulator.payment_intents()
        if pi["metadata"].get("orchestrator_job_id") == job_id
    ]


def _charged_but_unknown(orch: Any, simulator: Any, key: str) -> tuple[Any, dict[str, Any]]:
    """A charge whose connection was cut after Stripe executed it: the job is `unknown`, its
    PaymentIntent (returned) succeeded."""
    simulator.set_faults("stripe", rate_cut_after_execute=1.0)
    job = charge(orch, key)
    assert orch.executor().run(job.id) is JobState.UNKNOWN
    simulator.set_faults("stripe")
    (pi,) = intents_for(simulator, job.id)
    return job, pi


# -- refusals --------------------------------------------------------------------------------

SAMPLE = event_for({"id": "pi_sample", "object": "payment_intent"}, "payment_intent.succeeded")


def _missing_signature() -> tuple[bytes, str | None]:
    return signed(SAMPLE)[0], None


def _wrong_secret() -> tuple[bytes, str | None]:
    return signed(SAMPLE, "whsec_notOurs")


def _tampered_body() -> tuple[bytes, str | None]:
    body, header = signed(SAMPLE)
    return body.replace(b"pi_sample", b"pi_sampld"), header


def _too_old() -> tuple[bytes, str | None]:
    return signed(SAMPLE, at=int(time.time()) - 301)


def _too_far_ahead() -> tuple[bytes, str | None]:
    return signed(SAMPLE, at=int(time.time()) + 301)


def _garbled_header() -> tuple[bytes, str | None]:
    return signed(SAMPLE)[0], "t=soon,v1=abc"


def _signed_but_not_an_event() -> tuple[bytes, str | None]:
    body = b'{"hello": "world"}'
    return body, stripe.WebhookSignature.generate_signature_header(body.decode(), SECRET_OLD)


REFUSALS = {
    "missing signature": _missing_signature,
    "wrong secret": _wrong_secret,
    "tampered body": _tampered_body,
    "timestamp older than 300 s": _too_old,
    "timestamp over 300 s ahead": _too_far_ahead,
    "garbled signature header": _garbled_header,
    "signed body that is not an event": _signed_but_not_an_event,
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_bad_delivery_is_refused_and_nothing_stored(orch: Any, web: Web, case: str) -> None:
    """Each forged, replayed-late, post-dated or malformed delivery gets a 400; no row."""
    body, header = REFUSALS[case]()
    resp = post(web, body, header)
    assert resp.status_code == 400, resp.text
    assert stored(orch) == []


def test_body_over_1_mib_is_refused_up_front(orch: Any, web: Web) -> None:
    """A Content-Length over 1 MiB gets 413 before the body is read; nothing stored."""
    event = {**SAMPLE, "padding": "x" * (1024 * 1024)}
    body, header = signed(event)
    resp = post(web, body, header)
    assert resp.status_code == 413
    assert stored(orch) == []


def test_streamed_body_over_1_mib_is_refused(orch: Any, web: Web) -> None:
    """A chunked body (no Content-Length) is cut off with 413 once it passes 1 MiB."""
    body, header = signed({**SAMPLE, "padding": "x" * (1024 * 1024)})
    chunks = (body[i : i + 65536] for i in range(0, len(body), 65536))
    resp = post(web, chunks, header)
    assert resp.status_code == 413
    assert stored(orch) == []


def test_event_signed_with_the_second_secret_is_accepted(orch: Any, web: Web) -> None:
    """With two secrets configured (rotation), a delivery signed with the second one is stored."""
    event = event_for({"id": "pi_rotation", "object": "payment_intent"}, "payment_intent.created")
    body, header = signed(event, SECRET_NEW)
    resp = post(web, body, header)
    assert resp.status_code == 200
    assert resp.json() == {"received": True, "duplicate": False}
    assert [(e.event_id, e.status) for e in stored(orch)] == [(event["id"], "received")]


def test_generate_signature_header_events_are_accepted(orch: Any, web: Web) -> None:
    """An event signed by stripe.WebhookSignature.generate_signature_header is stored whole."""
    event = event_for({"id": "pi_sdk", "object": "payment_intent"}, "payment_intent.created")
    body = json.dumps(event)
    header = stripe.WebhookSignature.generate_signature_header(body, SECRET_OLD)
    assert post(web, body.encode(), header).status_code == 200
    (row,) = stored(orch)
    full = get_event(orch, row.event_id)
    assert full.payload == event
    assert full.object_id == "pi_sdk"


# -- processing ------------------------------------------------------------------------------


def test_one_event_delivered_20_times_is_processed_once(
    orch: Any, web: Web, simulator: Any
) -> None:
    """10 sequential and 10 concurrent deliveries of one event: one row, one transition, and
    the `unknown` job it settles is never attempted again."""
    job, pi = _charged_but_unknown(orch, simulator, "wh-dup")
    body, header = signed(event_for(pi, "payment_intent.succeeded"))

    answers = [post(web, body, header).json()["duplicate"] for _ in range(10)]
    barrier = threading.Barrier(10)

    def deliver(_: int) -> int:
        barrier.wait()
        return post(web, body, header).status_code

    with ThreadPoolExecutor(max_workers=10) as pool:
        statuses = list(pool.map(deliver, range(10)))
    assert answers == [False] + [True] * 9
    assert statuses == [200] * 10
    (row,) = stored(orch)

    processed = process_event(orch, row.id)
    assert processed is not None
    assert (processed.status, processed.attempts, processed.job_id) == ("processed", 1, job.id)
    assert process_event(orch, row.id) is None  # a redelivered message: no-op
    done = orch.job(job.id)
    assert (done.state, done.provider_ref) == (JobState.SUCCEEDED, pi["id"])
    (settled,) = transitions_to(orch, job.id, "succeeded")
    assert settled.from_state == "unknown"
    assert settled.changed_by.startswith("webhook:evt_")
    assert orch.executor().run(job.id) is None
    assert len(intents_for(simulator, job.id)) == 1


def test_late_processing_after_succeeded_leaves_the_job_succeeded(
    orch: Any, web: Web, simulator: Any, sim_webhooks: None
) -> None:
    """The simulator delivers `succeeded` before `processing` (reordered): the job ends and
    stays `succeeded`; the late `processing` re-fetches the intent and changes nothing."""
    simulator.set_faults(
        "stripe", processing_delay_s=0.2, webhook_delay_ms=800, webhook_reorder=True
    )
    job = charge(orch, "wh-reorder", pm="pm_sim_processing")
    assert orch.executor().run(job.id) is JobState.PROCESSING
    wait_until(lambda: len(stored(orch)) == 2, timeout_s=10)
    first, second = sorted(stored(orch), key=lambda e: e.id)
    assert (first.type, second.type) == ("payment_intent.succeeded", "payment_intent.processing")

    for row in (first, second):
        process_event(orch, row.id)
    assert orch.job(job.id).state is JobState.SUCCEEDED
    late = get_event(orch, second.event_id)
    assert late.status == "processed"
    assert "no change" in (late.note or "")
    assert [t.from_state for t in transitions_to(orch, job.id, "succeeded")] == ["processing"]


def test_stale_processing_payload_never_moves_a_succeeded_job_back(orch: Any, web: Web) -> None:
    """A `processing` event whose payload still says processing, for a succeeded job: no-op."""
    job = charge(orch, "wh-stale")
    assert orch.executor().run(job.id) is JobState.SUCCEEDED
    pi = {
        "id": orch.job(job.id).provider_ref,
        "object": "payment_intent",
        "status": "processing",
        "amount": 1000,
        "currency": "usd",
        "metadata": {"orchestrator_job_id": job.id},
    }
    body, header = signed(event_for(pi, "payment_intent.processing"))
    assert post(web, body, header).status_code == 200
    (row,) = stored(orch)
    result = process_event(orch, row.id)
    assert result is not None and result.status == "processed"
    assert orch.job(job.id).state is JobState.SUCCEEDED
    assert len(orch.transitions(job.id)) == 3  # pending, running, succeeded: nothing more


def test_webhook_settles_a_job_whose_worker_is_mid_call(
    orch: Any, worker: Any, web: Web, simulator: Any, sim_webhooks: None
) -> None:
    """The provider's answer is held back 1.5 s after it executed; its `succeeded` webhook
    arrives first and settles the running job; the worker's late settle finds no row, and no
    second PaymentIntent is ever made."""
    simulator.set_faults("stripe", rate_timeout=1.0, timeout_sleep_s=1.5)
    job = charge(orch, "wh-midcall")
    wait_until(lambda: orch.job(job.id).state is JobState.SUCCEEDED, timeout_s=10)
    (settled,) = transitions_to(orch, job.id, "succeeded")
    assert settled.from_state == "running"
    assert settled.changed_by.startswith("webhook:evt_")
    wait_until(lambda: len(orch.attempts(job.id)) == 1, timeout_s=10)  # the worker came back
    simulator.set_faults("stripe")
    Clock(orch).run_once()
    assert orch.executor().run(job.id) is None
    time.sleep(0.3)  # let any stray message run
    assert orch.job(job.id).state is JobState.SUCCEEDED
    assert len(intents_for(simulator, job.id)) == 1
    assert len([r for r in simulator.requests_log() if r["method"] == "POST"]) == 1
    (event,) = stored(orch)
    assert (event.status, event.job_id) == ("processed", job.id)


def test_event_for_an_unknown_object_is_stored_and_ignored(orch: Any, web: Web) -> None:
    """A verified event about a PaymentIntent no job of ours made is kept, marked ignored."""
    pi = {"id": "pi_notours", "object": "payment_intent", "amount": 5, "currency": "usd"}
    body, header = signed(event_for(pi, "payment_intent.succeeded"))
    assert post(web, body, header).status_code == 200
    (row,) = stored(orch)
    result = process_event(orch, row.id)
    assert result is not None
    assert (result.status, result.job_id) == ("ignored", None)


def test_dispute_is_recorded_without_moving_the_job(orch: Any, web: Web) -> None:
    """`charge.dispute.created` is tied to its job on the event row; the job stays succeeded."""
    job = charge(orch, "wh-dispute")
    orch.executor().run(job.id)
    ref = orch.job(job.id).provider_ref
    dispute = {
        "id": "dp_1",
        "object": "dispute",
        "amount": 1000,
        "currency": "usd",
        "charge": "ch_1",
        "payment_intent": ref,
        "reason": "fraudulent",
    }
    body, header = signed(event_for(dispute, "charge.dispute.created"))
    assert post(web, body, header).status_code == 200
    (row,) = stored(orch)
    result = process_event(orch, row.id)
    assert result is not None
    assert (result.status, result.job_id) == ("processed", job.id)
    assert "dispute dp_1" in (result.note or "")
    assert orch.job(job.id).state is JobState.SUCCEEDED


def test_clock_resends_events_whose_message_was_lost(orch: Any, web: Web, simulator: Any) -> None:
    """Redis loses the processing message: the clock's pass re-sends it, and a worker started
    afterwards processes the event."""
    import dramatiq

    import actors  # noqa: F401  (declares the actors on the installed broker)
    from tests.conftest import _flush_namespace

    job, pi = _charged_but_unknown(orch, simulator, "wh-lost")
    body, header = signed(event_for(pi, "payment_intent.succeeded"))
    assert post(web, body, header).status_code == 200
    _flush_namespace(orch.settings.redis_namespace)  # every message is gone
    (row,) = stored(orch)
    impatient = orchestrator_like(orch, simulator.url, dispatch_grace_s=0)
    clock = Clock(impatient)
    assert clock.run_once(dry_run=True)["webhooks_redispatched"] == 1
    assert clock.run_once()["webhooks_redispatched"] == 1
    worker = dramatiq.Worker(orch.broker, worker_threads=2, worker_timeout=50)
    worker.start()
    try:
        wait_until(lambda: get_event(orch, row.event_id).status == "processed")
    finally:
        stop_worker(worker)
    assert orch.job(job.id).state is JobState.SUCCEEDED


def test_simulator_duplicate_deliveries_are_stored_once(
    orch: Any, web: Web, simulator: Any, sim_webhooks: None
) -> None:
    """With webhook_duplicate_rate=1 the simulator delivers each event twice, signed so the
    receiver verifies it; both deliveries get 200 and one row is stored."""
    simulator.set_faults("stripe", webhook_duplicate_rate=1.0)
    job = charge(orch, "wh-simdup")
    assert orch.executor().run(job.id) is JobState.SUCCEEDED
    wait_until(lambda: len(simulator.webhook_deliveries()) == 2, timeout_s=10)
    deliveries = simulator.webhook_deliveries()
    assert [d["status"] for d in deliveries] == [200, 200]
    assert len({d["event_id"] for d in deliveries}) == 1
    (row,) = stored(orch)
    assert (row.type, row.object_id) == ("payment_intent.succeeded", orch.job(job.id).provider_ref)


# -- Stripe's semantics: the ledger never silently disagrees --------------------------------


def _intent_made_elsewhere(
    simulator: Any, job: Any, generation: int = 0, pm: str = "pm_card_visa"
) -> dict[str, Any]:
    """A PaymentIntent for ``job`` made straight at the simulator (as if by an earlier attempt
    whose answer we never saw)."""
    try:
        intent = create_intent_elsewhere(simulator, job, generation=generation, pm=pm)
    except stripe.CardError as exc:  # a decline: the error carries the failed intent
        failed: dict[str, Any] = (exc.json_body or {})["error"]["payment_intent"]
        return failed
    return dict(intent.to_dict())


def test_a_stored_success_event_wins_over_a_new_attempt(
    orch: Any, web: Web, simulator: Any
) -> None:
    """The success webhook arrived before any worker ran the job: the claim sees the stored
    event, no PaymentIntent is created, and processing the event settles the job."""
    job = charge(orch, "wh-success-first")
    pi = _intent_made_elsewhere(simulator, job)
    body, header = signed(event_for(pi, "payment_intent.succeeded"))
    assert post(web, body, header).status_code == 200
    posts_before = len([r for r in simulator.requests_log() if r["method"] == "POST"])
    assert orch.executor().run(job.id) is JobState.RETRYING
    assert len([r for r in simulator.requests_log() if r["method"] == "POST"]) == posts_before
    assert orch.job(job.id).attempts == 0  # the claim's attempt was given back
    (row,) = stored(orch)
    process_event(orch, row.id)
    done = orch.job(job.id)
    assert (done.state, done.provider_ref) == (JobState.SUCCEEDED, pi["id"])
    assert len(intents_for(simulator, job.id)) == 1


def test_a_success_event_for_a_dead_charge_adopts_it(orch: Any, web: Web, simulator: Any) -> None:
    """A dead charge whose money the provider did take: the verified success event moves it to
    succeeded, recorded as a transition made by the webhook."""
    job = charge(orch, "wh-dead-adopt")
    with psycopg.connect(orch.settings.database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE jobs SET state = 'dead', dead_reason = 'attempts_exhausted', "
            "changed_by = 'test', change_reason = 'made dead by the test' WHERE id = %s",
            (job.id,),
        )
    pi = _intent_made_elsewhere(simulator, job)
    body, header = signed(event_for(pi, "payment_intent.succeeded"))
    assert post(web, body, header).status_code == 200
    (row,) = stored(orch)
    process_event(orch, row.id)
    assert orch.job(job.id).state is JobState.SUCCEEDED
    (adopted,) = transitions_to(orch, job.id, "succeeded")
    assert adopted.from_state == "dead"
    assert adopted.changed_by.startswith("webhook:evt_")


def test_a_success_event_for_a_failed_charge_is_drift_not_no_change(
    orch: Any, web: Web, simulator: Any
) -> None:
    """A failed job cannot move, but the provider's success is never dropped as "no change":
    the event row says drift."""
    job = charge(orch, "wh-drift", pm="pm_card_chargeDeclined")
    assert orch.executor().run(job.id) is JobState.FAILED
    pi = _intent_made_elsewhere(simulator, orch.job(job.id), generation=1)
    body, header = signed(event_for(pi, "payment_intent.succeeded"))
    assert post(web, body, header).status_code == 200
    (row,) = stored(orch)
    with psycopg.connect(orch.settings.database_url, autocommit=True) as conn:
        conn.execute("UPDATE jobs SET provider_ref = NULL WHERE id = %s", (job.id,))
    result = process_event(orch, row.id)
    assert result is not None
    assert result.note is not None and result.note.startswith("drift:")
    assert orch.job(job.id).state is JobState.FAILED


def test_a_failure_of_an_older_key_generation_does_not_fail_the_job(
    orch: Any, web: Web, simulator: Any
) -> None:
    """The job moved on to key generation 1 while generation 0's intent fails late: the
    failure event changes nothing, since generation 1 may still succeed."""
    simulator.set_faults("stripe", rate_500=1.0)  # a 500 saved against the key, not executed
    job = charge(orch, "wh-old-generation")
    assert orch.executor().run(job.id) is JobState.UNKNOWN
    simulator.set_faults("stripe")
    # A charge with a customer is looked up by a consistent list: nothing was made, so the
    # next key generation is safe at once (no search grace).
    assert orch.executor().resolve(job.id) is JobState.RETRYING
    assert orch.job(job.id).key_generation == 1
    simulator.set_faults("stripe", rate_500=1.0)
    assert orch.executor().run(job.id) is JobState.UNKNOWN
    simulator.set_faults("stripe")
    failed = _intent_made_elsewhere(
        simulator, orch.job(job.id), generation=0, pm="pm_card_chargeDeclined"
    )
    assert failed["status"] == "requires_payment_method"
    body, header = signed(event_for(failed, "payment_intent.payment_failed"))
    assert post(web, body, header).status_code == 200
    (row,) = stored(orch)
    result = process_event(orch, row.id)
    assert result is not None and "key generation 0" in (result.note or "")
    assert orch.job(job.id).state is JobState.UNKNOWN
