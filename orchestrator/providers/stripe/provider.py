"""Stripe, through the official SDK: charges as confirmed PaymentIntents, Refunds, and the
capture and cancel (void) of an authorized PaymentIntent.

Every call carries the orchestrator's own deterministic idempotency key and explicit
timeouts; the SDK's own retries stay off (they would invent a random key per call). The API
key is read per call, so a key rotated in the secret store is used without a restart.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

import stripe
from stripe import RequestOptions

from orchestrator.errors import ProviderUnavailable
from orchestrator.models import AttemptOutcome, Job, JobKind
from orchestrator.ops.ledger import ProviderObject
from orchestrator.providers.base import NO_RESPONSE, Outcome
from orchestrator.providers.http import clip
from orchestrator.providers.stripe import audit
from orchestrator.providers.stripe.errors import classify_error, intent_of_error
from orchestrator.providers.stripe.objects import (
    REFUND_RANK,
    best_intent,
    capture_params,
    charge_params,
    job_id_of,
    json_object,
    outcome_of_capture,
    outcome_of_intent,
    outcome_of_refund,
    outcome_of_void,
    refund_params,
    request_id,
    void_params,
)
from orchestrator.providers.stripe.transport import http_client_for
from orchestrator.validation import JOB_ID_METADATA_KEY

# Refunds listed per page when looking one up (Stripe's maximum page size).
LIST_PAGE = 100
# A job's objects are created after the job; listing from a little before its creation
# covers clock skew between our database and Stripe.
CREATED_SLACK_S = 300


class StripeProvider:
    """Charges (and refunds) through ``stripe.StripeClient``; safe to share between threads."""

    name = "stripe"
    honours_idempotency_keys = True

    def __init__(
        self,
        api_key: str | Callable[[], str],
        *,
        api_base: str,
        connect_timeout_s: float,
        read_timeout_s: float,
    ) -> None:
        """``api_key`` is the key, or a callable read before every call (e.g. ``lambda:
        settings.require_secret("stripe_api_key")``) so a rotated key is used at once."""
        self._api_key: Callable[[], str] = api_key if callable(api_key) else lambda: api_key
        self._api_base = api_base
        self._http_client = http_client_for(api_base, connect_timeout_s, read_timeout_s)
        self._client_lock = threading.Lock()
        key = self._api_key()
        self._keyed_client = (key, self._new_client(key))

    @property
    def _client(self) -> stripe.StripeClient:
        """The SDK client of the current key. A changed key gets a new client over the same
        connection pool (the client holds the key for every request, lists' next pages
        included); an unchanged one costs a string comparison."""
        key = self._api_key()
        current_key, client = self._keyed_client
        if key == current_key:
            return client
        with self._client_lock:
            if self._keyed_client[0] != key:
                self._keyed_client = (key, self._new_client(key))
            return self._keyed_client[1]

    def _new_client(self, api_key: str) -> stripe.StripeClient:
        return stripe.StripeClient(
            api_key,
            base_addresses={"api": self._api_base},
            http_client=self._http_client,
            max_network_retries=0,
        )

    # -- execute ---------------------------------------------------------------------------

    def execute(self, job: Job, idempotency_key: str) -> Outcome:
        if job.kind not in _KINDS:
            raise NotImplementedError(f"stripe does not execute {job.kind} jobs")
        try:
            if job.kind in (JobKind.CAPTURE, JobKind.VOID):
                return self._settle_authorization(job, idempotency_key)
            return self._create(job, idempotency_key)
        except stripe.StripeError as exc:
            return _already_done(job, exc) or classify_error(exc)
        except Exception as exc:  # a bug or an unexpected library failure mid-call
            return Outcome(
                AttemptOutcome.AMBIGUOUS,
                error_class=type(exc).__name__,
                message=clip(str(exc)),
                unknown_cause=NO_RESPONSE,
            )

    def _create(self, job: Job, idempotency_key: str) -> Outcome:
        """POST the PaymentIntent (or Refund) through the SDK's ``raw_request``: the same
        request path as ``v1.payment_intents.create`` (parameter encoding, headers, the
        idempotency key, typed errors from the response), without turning the answer into a
        tree of ``StripeObject``s, which took about a sixth of a worker's CPU per charge. The
        outcome needs a few fields of the JSON. A Connect charge carries ``Stripe-Account``,
        which also scopes its idempotency key."""
        options: dict[str, Any] = {"idempotency_key": idempotency_key, **_account(job)}
        if job.kind is JobKind.REFUND:
            response = self._client.raw_request(
                "post", "/v1/refunds", **refund_params(job), **options
            )
            return outcome_of_refund(json_object(response), response.request_id)
        response = self._client.raw_request(
            "post", "/v1/payment_intents", **charge_params(job), **options
        )
        return outcome_of_intent(json_object(response), response.request_id)

    def _settle_authorization(self, job: Job, idempotency_key: str) -> Outcome:
        """Capture (``amount_to_capture``) or cancel the charge's PaymentIntent, with the
        capture or void job's own key; the answer is the PaymentIntent."""
        options: dict[str, Any] = {"idempotency_key": idempotency_key, **_account(job)}
        if job.kind is JobKind.CAPTURE:
            path = f"/v1/payment_intents/{job.params['payment_intent']}/capture"
            response = self._client.raw_request("post", path, **capture_params(job), **options)
            outcome = outcome_of_capture(json_object(response), job, response.request_id)
        else:
            path = f"/v1/payment_intents/{job.params['payment_intent']}/cancel"
            response = self._client.raw_request("post", path, **void_params(job), **options)
            outcome = outcome_of_void(json_object(response), response.request_id)
        assert outcome is not None  # only a lookup answers "nothing made"
        return outcome

    # -- lookup ----------------------------------------------------------------------------

    def lookup_is_consistent(self, job: Job) -> bool:
        """Whether "nothing found" proves that nothing exists, now: a retrieve by id and a
        list (by customer, or a payment intent's refunds) read Stripe's own records; a search,
        the only way to find a customerless charge, lags by up to an hour during incidents.
        A capture or void is judged on the PaymentIntent, retrieved by id."""
        return bool(
            job.provider_ref
            or job.customer
            or job.kind in (JobKind.REFUND, JobKind.CAPTURE, JobKind.VOID)
        )

    def lookup(self, job: Job) -> Outcome | None:
        if job.kind is JobKind.REFUND:
            return self._lookup_refund(job)
        if job.kind in (JobKind.CAPTURE, JobKind.VOID):
            return self._lookup_authorization(job)
        options = _account(job)
        try:
            if job.provider_ref:
                intent = self._client.v1.payment_intents.retrieve(job.provider_ref, options=options)
                return outcome_of_intent(intent.to_dict(), request_id(intent))
            if job.customer:
                listed = self._client.v1.payment_intents.list(
                    {
                        "customer": job.customer,
                        "created": {"gte": int(job.created_at.timestamp()) - CREATED_SLACK_S},
                        "limit": LIST_PAGE,
                    },
                    options=options,
                )
                intents = [pi.to_dict() for pi in listed.auto_paging_iter()]
            else:
                query = f"metadata['{JOB_ID_METADATA_KEY}']:'{job.id}'"
                found = self._client.v1.payment_intents.search(
                    {"query": query, "limit": LIST_PAGE}, options=options
                )
                intents = [pi.to_dict() for pi in found.data]
        except stripe.StripeError as exc:
            raise ProviderUnavailable(f"stripe lookup failed: {type(exc).__name__}") from exc
        best = best_intent(job, intents)
        return outcome_of_intent(best, None) if best is not None else None

    def _lookup_refund(self, job: Job) -> Outcome | None:
        """Retrieve the refund we hold a reference to, or find it among the payment intent's
        refunds by ``metadata.orchestrator_job_id`` (a list, unlike search, is consistent)."""
        try:
            if job.provider_ref:
                refund = self._client.v1.refunds.retrieve(job.provider_ref, options=_account(job))
                return outcome_of_refund(refund.to_dict(), request_id(refund))
            listed = self._client.v1.refunds.list(
                {"payment_intent": job.params["payment_intent"], "limit": LIST_PAGE},
                options=_account(job),
            )
            mine = [r for r in listed.auto_paging_iter() if job_id_of(r) == job.id]
        except stripe.StripeError as exc:
            raise ProviderUnavailable(f"stripe lookup failed: {type(exc).__name__}") from exc
        if not mine:
            return None
        # One job makes at most one live refund; prefer it over failed key generations.
        mine.sort(key=lambda r: (REFUND_RANK.get(str(r.status), 2), r.created))
        return outcome_of_refund(mine[0].to_dict(), None)

    def _lookup_authorization(self, job: Job) -> Outcome | None:
        """Retrieve the charge's PaymentIntent and judge the capture or void by its status and
        amount_received: still requires_capture means the call made nothing (None)."""
        try:
            intent = self._client.v1.payment_intents.retrieve(
                job.params["payment_intent"], options=_account(job)
            ).to_dict()
        except stripe.StripeError as exc:
            raise ProviderUnavailable(f"stripe lookup failed: {type(exc).__name__}") from exc
        if job.kind is JobKind.CAPTURE:
            return outcome_of_capture(intent, job, None, lookup=True)
        return outcome_of_void(intent, None, lookup=True)

    # -- audit -----------------------------------------------------------------------------

    def list_objects(self, since: datetime, account: str | None) -> list[ProviderObject]:
        """Every PaymentIntent and Refund naming a job, created since ``since`` in ``account``
        (None: the platform), through Stripe's consistent lists (the ledger audit)."""
        return audit.list_objects(self._client, since, account)


_KINDS = (JobKind.CHARGE, JobKind.REFUND, JobKind.CAPTURE, JobKind.VOID)


def _already_done(job: Job, exc: stripe.StripeError) -> Outcome | None:
    """A capture or cancel Stripe refuses because the PaymentIntent is already where the job
    wanted it (captured with this amount, or canceled: by an earlier attempt, or an expired
    authorization) is the job's success, read from the intent in the error."""
    if job.kind not in (JobKind.CAPTURE, JobKind.VOID):
        return None
    intent = intent_of_error(exc)
    if intent is None or exc.code != "payment_intent_unexpected_state":
        return None
    found = (
        outcome_of_capture(intent, job, exc.request_id)
        if job.kind is JobKind.CAPTURE
        else outcome_of_void(intent, exc.request_id)
    )
    return found if found is not None and found.kind is AttemptOutcome.SUCCEEDED else None


def _account(job: Job) -> RequestOptions:
    """The ``Stripe-Account`` request option of a Connect job (its refunds inherit it)."""
    account = job.params.get("stripe_account")
    return {"stripe_account": account} if account else {}
