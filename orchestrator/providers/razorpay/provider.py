"""Razorpay, through the official SDK: charges as recurring payments on orders, and refunds.

Razorpay keeps no idempotency key for orders or payments, so the provider makes every retry
safe itself:

* **One order per key generation, found again by its receipt.** A charge's order carries the
  receipt :func:`~orchestrator.providers.razorpay.objects.receipt_for` (job id, generation).
  Every attempt first looks that order up (``GET /v1/orders?receipt=``) and reads its payments
  (``GET /v1/orders/:id/payments``) before it creates anything: a captured or pending payment
  is the answer, a failed one is the job's failure, an order without payments is paid now.
  Creating an order whose receipt exists is refused by Razorpay ("receipt should be unique";
  the order is then read by its receipt), or answered with that same order, by configuration:
  both are handled.
* **An order takes one successful payment.** A payment sent twice on the same order (its
  first answer lost) cannot take the money twice: Razorpay refuses a payment on a paid order,
  and refunds at once a second one that is authorized late.
* **Older generations are checked too.** The job moves to a new generation only once a
  lookup of every generation found nothing live; a new generation's attempt still checks the
  older orders before it makes its own.

Refunds carry ``X-Refund-Idempotency`` (one key per job and generation); a retry first looks
for the job's refund among the payment's refunds.

``honours_idempotency_keys`` is True: the executor resends an ambiguous attempt with the same
key generation, and for Razorpay that resend is safe by construction (same receipt, looked up
first; same refund key). So a read timeout or a cut connection leads to a resend instead of a
dead job.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import razorpay  # type: ignore[import-untyped]

from orchestrator.errors import ConfigError, ProviderUnavailable
from orchestrator.models import AttemptOutcome, Job, JobKind
from orchestrator.providers.base import NO_RESPONSE, Outcome
from orchestrator.providers.http import clip
from orchestrator.providers.razorpay.errors import (
    classify_error,
    is_order_already_paid,
    is_receipt_taken,
)
from orchestrator.providers.razorpay.objects import (
    best_payment,
    best_refund,
    items_of,
    order_params,
    outcome_of_payment,
    outcome_of_refund,
    payment_params,
    receipt_for,
    refund_key,
    refund_params,
)
from orchestrator.providers.razorpay.settings import RazorpaySettings
from orchestrator.providers.razorpay.transport import (
    RazorpayHTTPError,
    RazorpaySession,
    RazorpayTransportError,
)

PROVIDER = "razorpay"
REFUND_IDEMPOTENCY_HEADER = "X-Refund-Idempotency"
# Refunds listed per page when looking one up (Razorpay's maximum count).
LIST_PAGE = 100
# A payment has at most a handful of refunds; a runaway pagination stops here.
MAX_REFUND_PAGES = 50
_KINDS = (JobKind.CHARGE, JobKind.REFUND)

T = TypeVar("T")


class _NothingSent(Exception):
    """A read (or an order creation) failed before any payment or refund request was sent:
    the attempt provably moved no money, whatever the failure."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.error_summary)
        self.outcome = outcome


class RazorpayProvider:
    """Charges and refunds through ``razorpay.Client``; safe to share between threads."""

    name = PROVIDER
    honours_idempotency_keys = True

    def __init__(
        self, settings: RazorpaySettings, *, connect_timeout_s: float, read_timeout_s: float
    ) -> None:
        self._settings = settings
        session = RazorpaySession(
            settings.razorpay_api_base,
            self._auth,
            connect_timeout_s=connect_timeout_s,
            read_timeout_s=read_timeout_s,
        )
        # auth=None: the session supplies it per call. The SDK's retries stay off (it retries
        # only after enable_retry(True)); its timeouts are the session's.
        self._client = razorpay.Client(session=session, base_url=settings.razorpay_api_base)

    def _auth(self) -> tuple[str, str]:
        """Basic auth, read from the settings on every call (a rotated secret applies at once)."""
        return (
            self._settings.require_secret("razorpay_key_id"),
            self._settings.require_secret("razorpay_key_secret"),
        )

    # -- execute ---------------------------------------------------------------------------

    def execute(self, job: Job, idempotency_key: str) -> Outcome:
        if job.kind not in _KINDS:
            raise NotImplementedError(f"razorpay does not execute {job.kind} jobs")
        try:
            if job.kind is JobKind.REFUND:
                return self._refund(job, idempotency_key)
            return self._charge(job)
        except _NothingSent as stop:
            return stop.outcome
        except ConfigError as exc:  # the credentials are not there: nothing was sent
            return Outcome(
                AttemptOutcome.NOT_EXECUTED,
                error_class=type(exc).__name__,
                error_code="not_configured",
                message=clip(str(exc)),
            )
        except Exception as exc:
            return classify_error(exc)

    def _charge(self, job: Job) -> Outcome:
        receipt = receipt_for(job.id, job.key_generation)
        order = self._before_payment(lambda: self._order_by_receipt(receipt))
        if order is None and job.key_generation > 0:
            older = self._before_payment(lambda: self._older_generations(job))
            if older is not None:
                return outcome_of_payment(older)
        fresh = False
        if order is None:
            order, fresh = self._before_payment(lambda: self._create_order(job, receipt))
        if order is None:
            return Outcome(
                AttemptOutcome.NOT_EXECUTED,
                error_class="OrderNotVisible",
                error_code="order_not_visible",
                message=f"receipt {receipt} is taken but its order is not listed yet",
            )
        if not fresh:
            order_id = str(order["id"])
            payments = self._before_payment(lambda: self._payments_of(order_id))
            best = best_payment(((p, job.key_generation) for p in payments), job.key_generation)
            if best is not None:
                return outcome_of_payment(best)
        return self._pay(job, order)

    def _create_order(self, job: Job, receipt: str) -> tuple[Mapping[str, Any] | None, bool]:
        """Create the generation's order: (the order, whether it is new). A receipt already
        taken means an earlier attempt made it: read it by receipt (None if not listed yet).
        Razorpay may instead answer with the existing order: one that was attempted is read
        like a found one (its payments first)."""
        try:
            order: Mapping[str, Any] = self._client.order.create(order_params(job))
        except Exception as exc:
            if is_receipt_taken(exc):
                return self._order_by_receipt(receipt), False
            raise
        fresh = order.get("status") == "created" and not order.get("attempts")
        return order, fresh

    def _pay(self, job: Job, order: Mapping[str, Any]) -> Outcome:
        """The recurring payment on ``order``. Razorpay answers its id (and, in test mode, the
        order id and a signature); the payment itself is then read by id. A refusal because
        the order is already paid means an earlier attempt's payment took the money."""
        order_id = str(order["id"])
        try:
            created: Mapping[str, Any] = self._client.payment.createRecurring(
                payment_params(job, order_id)
            )
        except Exception as exc:
            if is_order_already_paid(exc):
                return self._settled_order(job, order_id, exc)
            return classify_error(exc)
        if "status" in created and "id" in created:
            return outcome_of_payment(created)
        payment_id = created.get("razorpay_payment_id")
        if not payment_id:
            return Outcome(
                AttemptOutcome.AMBIGUOUS,
                error_class="UnexpectedResponse",
                error_code="unreadable_response",
                message="the recurring payment answer names no payment",
                unknown_cause=NO_RESPONSE,
            )
        try:
            payment: Mapping[str, Any] = self._client.payment.fetch(str(payment_id))
        except Exception as exc:
            # The payment exists and we hold its id: the job waits for it, polled by id.
            return Outcome(
                AttemptOutcome.PENDING,
                provider_ref=str(payment_id),
                message=clip(f"payment made; reading it failed: {type(exc).__name__}"),
            )
        return outcome_of_payment(payment)

    def _settled_order(self, job: Job, order_id: str, exc: Exception) -> Outcome:
        payments = self._payments_of(order_id)
        best = best_payment(((p, job.key_generation) for p in payments), job.key_generation)
        if best is not None and str(best.get("status")) != "failed":
            return outcome_of_payment(best)
        # Paid, but its payment is not listed yet: resolved by a lookup, then a resend.
        summary = classify_error(exc)
        return Outcome(
            AttemptOutcome.AMBIGUOUS,
            error_class=summary.error_class,
            error_code="order_already_paid",
            message=summary.message,
            http_status=summary.http_status,
            unknown_cause=NO_RESPONSE,
        )

    def _older_generations(self, job: Job) -> Mapping[str, Any] | None:
        """A live (captured, authorized or pending) payment on an order of an older key
        generation, or None: a new generation never pays while an older one may have."""
        found = self._payments_by_generation(job, range(job.key_generation))
        best = best_payment(found, job.key_generation)
        return best if best is not None and str(best.get("status")) != "failed" else None

    def _refund(self, job: Job, idempotency_key: str) -> Outcome:
        payment_id = str(job.params["payment_intent"])
        if job.attempts > 1:
            refunds = self._before_payment(lambda: self._refunds_of(payment_id))
            found = best_refund(job, refunds)
            if found is not None:
                return outcome_of_refund(found)
        refund: Mapping[str, Any] = self._client.payment.refund(
            payment_id,
            refund_params(job),
            headers={REFUND_IDEMPOTENCY_HEADER: refund_key(idempotency_key)},
        )
        return outcome_of_refund(refund)

    @staticmethod
    def _before_payment(read: Callable[[], T]) -> T:
        """Run a step that comes before any money-moving request; its failure is classified
        as usual but never as ambiguous: no payment or refund was asked for yet."""
        try:
            return read()
        except (RazorpayHTTPError, RazorpayTransportError) as exc:
            outcome = classify_error(exc)
            if outcome.kind is AttemptOutcome.AMBIGUOUS:
                outcome = Outcome(
                    AttemptOutcome.NOT_EXECUTED,
                    error_class=outcome.error_class,
                    error_code=outcome.error_code,
                    message=outcome.message,
                    http_status=outcome.http_status,
                    retry_after_s=outcome.retry_after_s,
                )
            raise _NothingSent(outcome) from exc

    # -- reads -----------------------------------------------------------------------------

    def _order_by_receipt(self, receipt: str) -> Mapping[str, Any] | None:
        listed = self._client.order.all({"receipt": receipt})
        mine = [o for o in items_of(listed) if o.get("receipt") == receipt]
        return mine[0] if mine else None

    def _payments_of(self, order_id: str) -> list[Mapping[str, Any]]:
        return items_of(self._client.order.payments(order_id))

    def _payments_by_generation(
        self, job: Job, generations: range
    ) -> list[tuple[Mapping[str, Any], int]]:
        found: list[tuple[Mapping[str, Any], int]] = []
        for gen in generations:
            order = self._order_by_receipt(receipt_for(job.id, gen))
            if order is not None:
                found.extend((p, gen) for p in self._payments_of(str(order["id"])))
        return found

    def _refunds_of(self, payment_id: str) -> list[Mapping[str, Any]]:
        refunds: list[Mapping[str, Any]] = []
        for page in range(MAX_REFUND_PAGES):
            listed = self._client.payment.fetch_multiple_refund(
                payment_id, {"count": LIST_PAGE, "skip": page * LIST_PAGE}
            )
            items = items_of(listed)
            refunds.extend(items)
            if len(items) < LIST_PAGE:
                break
        return refunds

    # -- lookup ----------------------------------------------------------------------------

    def lookup_is_consistent(self, job: Job) -> bool:
        """Whether "nothing found" proves, now, that Razorpay holds nothing for the job.

        Only a fetch by id (the job's payment or refund) reads the entity itself. Razorpay's
        documentation promises nothing about how fresh its filtered lists are (orders by
        receipt, a payment's refunds), so absence found through them is concluded only after
        the search grace. That costs little: an ambiguous attempt is resent with the same key
        generation without any proof of absence (see the module docstring); proof is needed
        only to move to a new generation (attempts exhausted, a dead job replayed).
        """
        return bool(job.provider_ref)

    def lookup(self, job: Job) -> Outcome | None:
        """The job's payment (or refund) at Razorpay: by id when the job holds one, else the
        most telling payment on the orders of every key generation 0..current (an old
        generation's payment can still settle), else the job's refund among its payment's
        refunds. ProviderUnavailable when Razorpay cannot be read."""
        try:
            if job.kind is JobKind.REFUND:
                return self._lookup_refund(job)
            if job.provider_ref:
                return outcome_of_payment(self._client.payment.fetch(job.provider_ref))
            found = self._payments_by_generation(job, range(job.key_generation + 1))
        except (RazorpayHTTPError, RazorpayTransportError, ConfigError) as exc:
            raise ProviderUnavailable(f"razorpay lookup failed: {exc}") from exc
        best = best_payment(found, job.key_generation)
        return outcome_of_payment(best) if best is not None else None

    def _lookup_refund(self, job: Job) -> Outcome | None:
        if job.provider_ref:
            return outcome_of_refund(self._client.refund.fetch(job.provider_ref))
        found = best_refund(job, self._refunds_of(str(job.params["payment_intent"])))
        return outcome_of_refund(found) if found is not None else None
