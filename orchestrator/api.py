"""The application's entry point: ``Orchestrator.from_env()``, ``charge()``, ``send_email()``,
``refund()``, ``job()``."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import dramatiq

from orchestrator import validation as v
from orchestrator.broker import Dispatcher, make_broker
from orchestrator.config import Settings, load_settings
from orchestrator.db import Conn, OpsStore, Store, make_pool
from orchestrator.errors import (
    ConfigError,
    IdempotencyConflict,
    InvalidOperation,
    JobNotFound,
    ValidationError,
)
from orchestrator.executor import Executor
from orchestrator.logs import get_logger
from orchestrator.models import Attempt, Job, JobKind, JobState, Transition
from orchestrator.providers.base import Provider

log = get_logger(__name__)

MAX_DESCRIPTION_CHARS = 1000


class Orchestrator:
    """Enqueue charges, emails and refunds as durable jobs and read them back.

    Safe to share between threads. ``close()`` releases the database pool.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store | None = None,
        broker: dramatiq.Broker | None = None,
    ) -> None:
        self.settings = settings
        self.store = store or Store(
            make_pool(settings.database_url, max_size=settings.db_pool_max_size)
        )
        self.ops_store = OpsStore(self.store.pool)
        self.broker = broker or make_broker(settings)
        self.dispatcher = Dispatcher(self.broker, settings.queue_name)
        self._executor: Executor | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, **overrides: Any) -> Orchestrator:
        """Build from the environment (and ``.env``); keyword overrides take precedence."""
        return cls(load_settings(**overrides))

    def close(self) -> None:
        """Send the messages still queued (for up to a few seconds), then release the pool."""
        self.dispatcher.close()
        self.store.close()

    def __enter__(self) -> Orchestrator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- enqueueing ------------------------------------------------------------------------

    def charge(
        self,
        amount: int,
        currency: str,
        customer: str | None,
        payment_method: str,
        idempotency_key: str,
        metadata: Mapping[str, str] | None = None,
        *,
        description: str | None = None,
        return_url: str | None = None,
        stripe_account: str | None = None,
        capture_method: str | None = None,
        statement_descriptor_suffix: str | None = None,
        receipt_email: str | None = None,
        payment_method_types: Sequence[str] | None = None,
        transfer_data: Mapping[str, Any] | None = None,
        application_fee_amount: int | None = None,
        on_behalf_of: str | None = None,
        conn: Conn | None = None,
    ) -> Job:
        """Accept a charge as a job (or return the job this key already made).

        By default the charge is merchant-initiated (``off_session``: nobody is there to
        authenticate); a card that needs authentication fails with ``authentication_required``
        and the job keeps the PaymentIntent id. Pass ``return_url`` when the customer confirms
        on-session: ``requires_action`` then leaves the job ``processing`` with the intent's
        ``next_action`` and ``client_secret`` in ``job.provider_details``. The other keyword
        arguments are Stripe's PaymentIntent fields of the same names; ``stripe_account`` is
        sent as the ``Stripe-Account`` header (Connect), which also scopes keys and lookups.

        With ``conn``, the job is inserted inside the caller's open transaction and its message
        goes out only once that transaction commits (rolled back: no job, no message).
        Raises ``ValidationError`` (a ``ValueError``) on bad input and ``IdempotencyConflict``
        when the key was used for another request; neither writes anything.
        """
        request = {
            "kind": "charge",
            "amount": v.amount(amount),
            "currency": v.currency(currency),
            "customer": v.token("customer", customer, required=False),
            "payment_method": v.token("payment_method", payment_method, required=True),
            "metadata": v.metadata(metadata),
            "description": v.text(
                "description", description, max_length=MAX_DESCRIPTION_CHARS, required=False
            ),
        }
        options = v.charge_options(
            amount,
            {
                "return_url": return_url,
                "stripe_account": stripe_account,
                "capture_method": capture_method,
                "statement_descriptor_suffix": statement_descriptor_suffix,
                "receipt_email": receipt_email,
                "payment_method_types": payment_method_types,
                "transfer_data": transfer_data,
                "application_fee_amount": application_fee_amount,
                "on_behalf_of": on_behalf_of,
            },
        )
        request.update(options)  # only the options given: old requests keep their fingerprint
        key = v.idempotency_key(idempotency_key)
        params: dict[str, Any] = {"metadata": request["metadata"], **options}
        if request["description"]:
            params["description"] = request["description"]
        row = {
            "kind": JobKind.CHARGE.value,
            "provider": "stripe",
            "idempotency_key": key,
            "fingerprint": v.fingerprint(request),
            "amount": request["amount"],
            "currency": request["currency"],
            "customer": request["customer"],
            "payment_method": request["payment_method"],
            "parent_job_id": None,
            "params": params,
        }
        return self._enqueue(row, conn)

    def send_email(
        self,
        to: str | Sequence[str],
        subject: str | None,
        body: str | None = None,
        template: str | None = None,
        *,
        idempotency_key: str,
        from_email: str | None = None,
        template_data: Mapping[str, Any] | None = None,
        at_least_once: bool = False,
        conn: Conn | None = None,
    ) -> Job:
        """Accept an email (plain-text ``body`` or a SendGrid ``template``) as a job.

        SendGrid keeps no idempotency keys, so a send whose outcome is unknown (connection cut,
        timeout, 5xx) is never retried: it goes ``dead`` with reason ``ambiguous``. With
        ``at_least_once=True`` it is retried instead, and may then be delivered twice.
        ``from_email`` defaults to ``ORCHESTRATOR_EMAIL_FROM``. ``conn`` as in :meth:`charge`.
        """
        key = v.idempotency_key(idempotency_key)
        request = _email_request(to, subject, body, template, template_data, at_least_once)
        request["from_email"] = None if from_email is None else v.email("from_email", from_email)
        sender = request["from_email"] or self.settings.email_from
        if sender is None:
            raise ConfigError("ORCHESTRATOR_EMAIL_FROM is not set and no from_email was given")
        params = {k: val for k, val in request.items() if k != "from_email" and val is not None}
        row = {
            **_NO_MONEY,
            "kind": JobKind.EMAIL.value,
            "provider": "sendgrid",
            "idempotency_key": key,
            "fingerprint": v.fingerprint({"kind": "email", **request}),
            "params": {**params, "from": sender},
        }
        return self._enqueue(row, conn)

    def refund(
        self,
        charge_job_id: str,
        amount: int | None = None,
        *,
        idempotency_key: str,
        metadata: Mapping[str, str] | None = None,
    ) -> Job:
        """Accept a refund of a succeeded charge (all that remains, or ``amount``) as a job.

        The amount is reserved on the charge in the same transaction as the refund job's
        insert, so concurrent refunds can never exceed the charged amount; a refund that ends
        ``failed`` (or is discarded) gives its reservation back. The same key and request
        returns the same job without reserving again. Raises ``InvalidOperation`` when the
        charge is not ``succeeded`` or not enough remains, ``JobNotFound`` for no such charge.
        """
        charge_id = _job_id(charge_job_id)
        request = {
            "kind": "refund",
            "charge_job_id": charge_id,
            "amount": None if amount is None else v.amount(amount),
            "metadata": v.metadata(metadata),
        }
        key = v.idempotency_key(idempotency_key)
        with self.store.connection() as conn:
            job, created = self._reserve_and_insert_refund(conn, key, request)
        if created:
            self._dispatch_new(job)
        return job

    def _reserve_and_insert_refund(
        self, conn: Conn, key: str, request: dict[str, Any]
    ) -> tuple[Job, bool]:
        """One transaction: lock the charge, check, insert the refund job, reserve its amount.

        The charge's row lock queues concurrent refunds of it; the reservation's conditional
        UPDATE (and the schema's CHECK) would refuse an over-refund even without it.
        """
        charge_id = request["charge_job_id"]
        charge = self.store.lock_charge_for_refund(conn, charge_id)
        if charge is None:
            raise JobNotFound(f"no charge with id {charge_id}")
        existing = self.store.job_by_key(conn, key)  # after the lock: sees a committed twin
        fingerprint = v.fingerprint(request)
        if existing is not None:
            if existing.fingerprint != fingerprint:
                raise IdempotencyConflict(key, existing.id)
            return existing, False
        amount = _refundable(charge, request["amount"])
        row = {
            "kind": JobKind.REFUND.value,
            "provider": charge.provider,
            "idempotency_key": key,
            "fingerprint": fingerprint,
            "amount": amount,
            "currency": charge.currency,
            "customer": charge.customer,
            "payment_method": None,
            "parent_job_id": charge.id,
            "params": {
                "payment_intent": charge.provider_ref,
                "metadata": request["metadata"],
                # A Connect charge's refund is made on the same account.
                **_connect_account(charge),
            },
        }
        job, created = self._insert_or_get(conn, self._with_defaults(row))
        if created and self.store.reserve_refund(conn, charge.id, amount) is None:
            raise InvalidOperation(f"charge {charge.id} cannot take a refund of {amount} now")
        return job, created

    def _with_defaults(self, row: dict[str, Any]) -> dict[str, Any]:
        return {
            **row,
            "max_attempts": self.settings.max_attempts,
            "horizon_s": self.settings.retry_horizon_s,
            "changed_by": "api",
        }

    def _enqueue(self, row: dict[str, Any], conn: Conn | None) -> Job:
        row = self._with_defaults(row)
        if conn is not None:
            job, created = self._insert_or_get(conn, row)
            if created:
                self.store.notify_dispatch(conn, job.id)
            return job
        # Insert-or-get needs no transaction: the insert commits alone, and the fallback read
        # sees the committed row that won the key (one round trip for a new job).
        job, created = self.store.retrying(lambda own: self._insert_or_get(own, row))
        if created:
            self._dispatch_new(job)
        return job

    def _insert_or_get(self, conn: Conn, row: dict[str, Any]) -> tuple[Job, bool]:
        job = self.store.insert_job(conn, row)
        if job is not None:
            log.info("job.accepted", job_id=job.id, kind=str(job.kind), provider=job.provider)
            return job, True
        existing = self.store.job_by_key(conn, row["idempotency_key"])
        if existing is None:  # the conflicting insert rolled back between our two statements
            raise ValidationError("idempotency_key is being used concurrently; try again")
        if existing.fingerprint != row["fingerprint"]:
            raise IdempotencyConflict(row["idempotency_key"], existing.id)
        return existing, False

    def _dispatch_new(self, job: Job) -> None:
        # The job is committed: the caller need not wait for Redis. If the message never goes
        # out, the clock's sweep sends it (Dispatcher.send_soon).
        self.dispatcher.send_soon(job.id)

    # -- reading ---------------------------------------------------------------------------

    def job(self, job_id: str) -> Job:
        """The job with that id; ``JobNotFound`` otherwise (``ValidationError`` if malformed)."""
        job = self.store.job(_job_id(job_id))
        if job is None:
            raise JobNotFound(f"no job with id {job_id}")
        return job

    def attempts(self, job_id: str) -> list[Attempt]:
        return self.store.attempts(_job_id(job_id))

    def transitions(self, job_id: str) -> list[Transition]:
        return self.store.transitions(_job_id(job_id))

    # -- running (workers) -----------------------------------------------------------------

    def executor(self, providers: Mapping[str, Provider] | None = None) -> Executor:
        """The executor for this process, built once with the configured providers."""
        with self._lock:
            if self._executor is None or providers is not None:
                self._executor = Executor(
                    self.store, providers or self.providers(), self.dispatcher, self.settings
                )
            return self._executor

    def providers(self) -> dict[str, Provider]:
        from orchestrator.providers.stripe import StripeProvider

        stripe_provider = StripeProvider(
            self.settings.require_secret("stripe_api_key"),
            api_base=self.settings.stripe_api_base,
            connect_timeout_s=self.settings.provider_connect_timeout_s,
            read_timeout_s=self.settings.provider_read_timeout_s,
        )
        providers: dict[str, Provider] = {"stripe": stripe_provider}
        if self.settings.sendgrid_api_key is not None:
            from orchestrator.providers.sendgrid import SendGridProvider

            providers["sendgrid"] = SendGridProvider(
                self.settings.require_secret("sendgrid_api_key"),
                api_base=self.settings.sendgrid_api_base,
                timeout_s=self.settings.provider_read_timeout_s,
            )
        return providers


# Email jobs carry no money fields.
_NO_MONEY: dict[str, Any] = {
    "amount": None,
    "currency": None,
    "customer": None,
    "payment_method": None,
    "parent_job_id": None,
}


def _email_request(
    to: object,
    subject: object,
    body: object,
    template: object,
    template_data: object,
    at_least_once: object,
) -> dict[str, Any]:
    """The validated email request: exactly one of body and template; subject required with a
    body (a template may define its own)."""
    if (body is None) == (template is None):
        raise ValidationError("give exactly one of body and template")
    if template is None and template_data is not None:
        raise ValidationError("template_data needs a template")
    if not isinstance(at_least_once, bool):
        raise ValidationError("at_least_once must be True or False")
    clean_subject = v.text(
        "subject", subject, max_length=v.MAX_SUBJECT_CHARS, required=template is None
    )
    if clean_subject is not None and ("\r" in clean_subject or "\n" in clean_subject):
        raise ValidationError("subject must be one line")
    return {
        "to": v.recipients(to),
        "subject": clean_subject,
        "body": v.text("body", body, max_length=v.MAX_BODY_CHARS, required=False),
        "template": None if template is None else v.template_id(template),
        "template_data": v.template_data(template_data),
        "at_least_once": at_least_once,
    }


def _refundable(charge: Job, requested: int | None) -> int:
    """The amount to reserve for a refund of ``charge``, or InvalidOperation saying why not."""
    if charge.kind is not JobKind.CHARGE:
        raise InvalidOperation(f"job {charge.id} is a {charge.kind}, not a charge")
    if charge.state is not JobState.SUCCEEDED:
        raise InvalidOperation(
            f"charge {charge.id} is {charge.state}: only a succeeded charge can be refunded"
        )
    total = charge.amount or 0
    remaining = total - charge.refunded_amount
    if remaining <= 0:
        raise InvalidOperation(
            f"charge {charge.id} is already fully refunded "
            f"({charge.refunded_amount} of {total} refunded or in flight)"
        )
    if requested is not None and requested > remaining:
        raise InvalidOperation(
            f"refund of {requested} exceeds what remains refundable on charge {charge.id} "
            f"({remaining} of {total})"
        )
    return remaining if requested is None else requested


def _connect_account(charge: Job) -> dict[str, Any]:
    account = charge.params.get("stripe_account")
    return {"stripe_account": account} if account else {}


def _job_id(value: str) -> str:
    import uuid

    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise ValidationError("job id must be a UUID") from None
