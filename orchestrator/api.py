"""The application's entry point: ``Orchestrator.from_env()``, ``charge()``, ``send_email()``,
``refund()``, ``job()``."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import dramatiq

from orchestrator import validation as v
from orchestrator.app import bulk
from orchestrator.app import requests as rq
from orchestrator.app.waiting import SettleListener
from orchestrator.broker import Dispatcher, make_broker
from orchestrator.config import Settings, load_settings
from orchestrator.db import Conn, OpsStore, Store, make_pool
from orchestrator.db.store import savepoint
from orchestrator.errors import (
    IdempotencyConflict,
    InvalidOperation,
    JobNotFound,
    ValidationError,
    WaitTimeout,
)
from orchestrator.executor import SAME_KEY_RESEND, Executor
from orchestrator.logs import get_logger
from orchestrator.models import Attempt, Job, JobKind, JobState, Transition
from orchestrator.providers.base import Provider

log = get_logger(__name__)


# Whether this context's last accepted request made its job (True) or found the job its key
# already named (False). The HTTP API answers 201 or 200 by it (created_by).
_CREATED: ContextVar[bool | None] = ContextVar("orchestrator_created", default=None)


def created_by(call: Callable[[], Job]) -> tuple[Job, bool]:
    """``call()`` (one request to an :class:`Orchestrator`: a charge, refund, capture,
    email...) and whether it made the job it returns. The insert itself answers, so of two
    simultaneous first requests under one key exactly one made the job."""
    token = _CREATED.set(None)
    try:
        job = call()
        created = _CREATED.get()
    finally:
        _CREATED.reset(token)
    if created is None:
        raise RuntimeError("the call accepted no request")
    return job, created


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
        self.dispatcher = Dispatcher(
            self.broker, settings.queue_name, delay_window_s=settings.broker_delay_window_s
        )
        self._executor: Executor | None = None
        self._lock = threading.Lock()
        self._settles = SettleListener(settings.database_url, self.store)

    @classmethod
    def from_env(cls, **overrides: Any) -> Orchestrator:
        """Build from the environment (and ``.env``); keyword overrides take precedence."""
        return cls(load_settings(**overrides))

    def close(self) -> None:
        """Send the messages still queued (for up to a few seconds), then release the pool."""
        self._settles.close()
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
        capture: bool | None = None,
        provider: str | None = None,
        failover: Mapping[str, str] | None = None,
        provider_options: Mapping[str, Any] | None = None,
        conn: Conn | None = None,
    ) -> Job:
        """Accept a charge as a job (or return the job this key already made).

        ``capture=False`` (the same as ``capture_method="manual"``; a contradictory pair is a
        ``ValidationError``) only authorizes: the job ends ``succeeded`` with
        ``captured_amount == 0`` (``job.captured`` False) and ``capture_before`` set; then
        :meth:`capture` takes the money, or :meth:`cancel` releases the hold.

        By default the charge is merchant-initiated (``off_session``: nobody is there to
        authenticate); a card that needs authentication fails with ``authentication_required``
        and the job keeps the PaymentIntent id. Pass ``return_url`` when the customer confirms
        on-session: ``requires_action`` then leaves the job ``processing`` with the intent's
        ``next_action`` and ``client_secret`` in ``job.provider_details``. The other keyword
        arguments are Stripe's PaymentIntent fields of the same names; ``stripe_account`` is
        sent as the ``Stripe-Account`` header (Connect), which also scopes keys and lookups.

        ``provider`` names a registered payment provider (``orchestrator.providers.registry``);
        without it, ``ORCHESTRATOR_ROUTES`` picks one by currency (default Stripe). Fields a
        provider takes that are not named here go in ``provider_options`` and are checked by
        that provider (Razorpay: ``{"email": ..., "contact": ...}``); Stripe's named fields are
        refused by a provider that does not take them. ``failover={"provider": ...,
        "payment_method": ..., "customer": ...}`` (the other provider's own tokens) moves the
        charge there only when the first provider provably never executed it (connection
        refused, 429, its breaker or rate limiter denied the call), never after an ambiguous
        outcome; the job's attempts then name both providers.

        With ``conn``, the job is inserted inside the caller's open transaction and its message
        goes out only once that transaction commits (rolled back: no job, no message).
        Raises ``ValidationError`` (a ``ValueError``) on bad input and ``IdempotencyConflict``
        when the key was used for another request; neither writes anything.
        """
        row = rq.charge_row(
            amount,
            currency,
            customer,
            payment_method,
            idempotency_key,
            metadata,
            description=description,
            return_url=return_url,
            stripe_account=stripe_account,
            capture_method=capture_method,
            statement_descriptor_suffix=statement_descriptor_suffix,
            receipt_email=receipt_email,
            payment_method_types=payment_method_types,
            transfer_data=transfer_data,
            application_fee_amount=application_fee_amount,
            on_behalf_of=on_behalf_of,
            capture=capture,
            provider=provider,
            failover=failover,
            provider_options=provider_options,
            route=self.settings.charge_provider,
        )
        return self._enqueue(row, conn)

    def charge_many(
        self, items: Sequence[Mapping[str, Any]], *, conn: Conn | None = None
    ) -> list[Job]:
        """Accept many charges at once: ``items`` are mappings of :meth:`charge`'s keyword
        arguments (``conn`` excepted); returns their jobs in the order of ``items``.

        Every item is validated first (``ValidationError`` naming the item's index; nothing
        written). The batch is inserted in one statement, with the same idempotency rules per
        item as :meth:`charge`: a key already used for the same request gives back its job, a
        key used for another request (or twice in the batch with different requests) raises
        ``IdempotencyConflict`` and nothing of the batch is written. ``conn`` as in
        :meth:`charge`; without it, the new jobs' messages go out in the background.
        """
        return bulk.charge_many(self.store, self.dispatcher, self.settings, items, conn=conn)

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
        provider: str | None = None,
        conn: Conn | None = None,
    ) -> Job:
        """Accept an email (plain-text ``body`` or a provider ``template``) as a job.

        ``provider`` is ``sendgrid``, ``ses`` (Amazon SES v2) or another registered email
        provider; default ``ORCHESTRATOR_EMAIL_PROVIDER``. Neither keeps idempotency keys, so a
        send whose outcome is unknown (connection cut, timeout, 5xx) is never retried: it goes
        ``dead`` with reason ``ambiguous``. With ``at_least_once=True`` it is retried instead,
        and may then be delivered twice. ``from_email`` defaults to ``ORCHESTRATOR_EMAIL_FROM``.
        ``conn`` as in :meth:`charge`.
        """
        row = rq.email_row(
            self.settings,
            to,
            subject,
            body,
            template,
            idempotency_key=idempotency_key,
            from_email=from_email,
            template_data=template_data,
            at_least_once=at_least_once,
            provider=provider,
        )
        return self._enqueue(row, conn)

    def refund(
        self,
        charge_job_id: str,
        amount: int | None = None,
        *,
        idempotency_key: str,
        metadata: Mapping[str, str] | None = None,
        conn: Conn | None = None,
    ) -> Job:
        """Accept a refund of a succeeded charge (all that remains, or ``amount``) as a job.

        The amount is reserved on the charge in the same transaction as the refund job's
        insert, so concurrent refunds can never exceed the charged amount; a refund that ends
        ``failed`` (or is discarded) gives its reservation back. The same key and request
        returns the same job without reserving again. Raises ``InvalidOperation`` when the
        charge is not ``succeeded`` or not enough remains, ``JobNotFound`` for no such charge.
        An authorization (``capture=False``) is refundable up to its captured amount only.
        ``conn`` as in :meth:`charge`: the job and its reservation are made inside the caller's
        transaction (a savepoint of it), its message goes out at commit; rolled back: neither.
        """
        request = rq.refund_request(charge_job_id, amount, metadata)
        key = v.idempotency_key(idempotency_key)
        return self._transact(conn, lambda c: self._reserve_and_insert_refund(c, key, request))

    def capture(
        self,
        job_id: str,
        amount: int | None = None,
        *,
        idempotency_key: str,
        conn: Conn | None = None,
    ) -> Job:
        """Capture an authorized charge (``charge(..., capture=False)``): all it authorized, or
        ``amount`` (Stripe releases the rest), as a ``capture`` job with its own provider key.

        The amount is reserved on the charge with the job's insert, so a charge is captured at
        most once and never over its authorization, whatever runs concurrently; a capture that
        ends ``failed`` gives it back. Refused (``InvalidOperation``) for anything but a
        succeeded, uncaptured authorization within ``charge.capture_before``. The same key and
        request returns the same job. ``conn`` as in :meth:`refund`.
        """
        request = rq.capture_request(job_id, amount)
        key = v.idempotency_key(idempotency_key)
        return self._transact(conn, lambda c: self._reserve_and_insert_capture(c, key, request))

    def cancel(self, job_id: str, *, reason: str, conn: Conn | None = None) -> Job:
        """Cancel a job that no worker holds, or release an authorization at the provider.

        A ``pending`` or ``retrying`` job becomes ``cancelled`` by one compare-and-set UPDATE
        (returned), unless the provider may hold a result for its current key (an ambiguous
        last attempt, a success event not processed yet): that is settled first. A succeeded,
        uncaptured authorization gets a ``void`` job (returned; the same one while it is live)
        that cancels the PaymentIntent at Stripe; when it succeeds the charge moves
        ``succeeded -> cancelled``. Anything else (``running``: a provider call may be in
        flight; ``unknown``, ``processing``, ``dead``, a final state) raises
        ``InvalidOperation``; ``JobNotFound`` for no such job. ``conn`` as in :meth:`refund`.
        """
        jid = rq.job_id(job_id)
        why = v.text("reason", reason, max_length=rq.MAX_REASON_CHARS, required=True) or ""
        return self._transact(conn, lambda c: self._cancel(c, jid, why))

    def _transact(self, conn: Conn | None, work: Callable[[Conn], tuple[Job, bool]]) -> Job:
        """``work`` in one transaction: the caller's (a savepoint of it, the message sent at
        its commit) or our own (the message sent once committed)."""
        if conn is not None:
            with savepoint(conn):
                job, created = work(conn)
                if created:
                    self.store.notify_dispatch(conn, job.id)
            _CREATED.set(created)
            return job
        with self.store.connection() as own:
            job, created = work(own)
        _CREATED.set(created)
        if created:
            self._dispatch_new(job)
        return job

    def _reserve_and_insert_capture(
        self, conn: Conn, key: str, request: dict[str, Any]
    ) -> tuple[Job, bool]:
        """Lock the charge, check, reserve the capture on it, insert the capture job."""
        charge_id = request["charge_job_id"]
        charge = self.store.lock_charge_for_refund(conn, charge_id)
        if charge is None:
            raise JobNotFound(f"no charge with id {charge_id}")
        existing = self.store.job_by_key(conn, key)
        if existing is not None:
            if existing.fingerprint != v.fingerprint(request):
                raise IdempotencyConflict(key, existing.id)
            return existing, False
        row = rq.capture_row(charge, key, request, datetime.now(UTC))
        if self.store.reserve_capture(conn, charge.id, row["amount"]) is None:
            raise InvalidOperation(
                f"charge {charge.id} cannot be captured now: past its capture deadline, or a "
                "capture or void of it is in flight"
            )
        job, created = self._insert_or_get(conn, self._with_defaults(row))
        if not created:  # the key was taken meanwhile: roll the reservation back with us
            raise ValidationError("idempotency_key is being used concurrently; try again")
        return job, True

    def _cancel(self, conn: Conn, job_id: str, why: str) -> tuple[Job, bool]:
        """Cancel by compare-and-set, or void an authorization; (job, a void job was made)."""
        args = {"actor": "api", "reason": f"cancelled: {why}"[:500]}
        cancelled = self.store.cancel_job(conn, job_id, **args, same_key_reason=SAME_KEY_RESEND)
        if cancelled is None:
            job = self.store.lock_charge_for_refund(conn, job_id)  # any kind: lock it, read it
            if job is None:
                raise JobNotFound(f"no job with id {job_id}")
            if job.state in (JobState.PENDING, JobState.RETRYING):  # back there since, or held
                cancelled = self.store.cancel_job(
                    conn, job_id, **args, same_key_reason=SAME_KEY_RESEND
                )
            elif job.kind is JobKind.CHARGE and job.captured_amount == 0:
                return self._void(conn, job, why)
            if cancelled is None:
                raise InvalidOperation(rq.not_cancellable(job))
        log.info("job.cancelled", job_id=job_id, kind=str(cancelled.kind))
        return cancelled, False

    def _void(self, conn: Conn, charge: Job, why: str) -> tuple[Job, bool]:
        """The void job of a locked, uncaptured authorization: the live one, or a new one."""
        if charge.state is not JobState.SUCCEEDED:
            raise InvalidOperation(rq.not_cancellable(charge))
        live = self.store.live_settler(conn, charge.id)
        if live is not None and live.kind is JobKind.VOID:
            return live, False
        if live is not None:
            raise InvalidOperation(rq.not_cancellable(charge, live))
        row = rq.void_row(charge, why, self.store.count_voids(conn, charge.id))
        return self._insert_or_get(conn, self._with_defaults(row))

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
        row = rq.refund_row(charge, key, request)
        amount = row["amount"]
        job, created = self._insert_or_get(conn, self._with_defaults(row))
        if created and self.store.reserve_refund(conn, charge.id, amount) is None:
            raise InvalidOperation(f"charge {charge.id} cannot take a refund of {amount} now")
        return job, created

    def _with_defaults(self, row: dict[str, Any]) -> dict[str, Any]:
        return rq.with_defaults(self.settings, row)

    def _enqueue(self, row: dict[str, Any], conn: Conn | None) -> Job:
        row = self._with_defaults(row)
        if conn is not None:
            job, created = self._insert_or_get(conn, row)
            if created:
                self.store.notify_dispatch(conn, job.id)
            _CREATED.set(created)
            return job
        # Insert-or-get needs no transaction: the insert commits alone, and the fallback read
        # sees the committed row that won the key (one round trip for a new job).
        job, created = self.store.retrying(lambda own: self._insert_or_get(own, row))
        _CREATED.set(created)
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
        job = self.store.job(rq.job_id(job_id))
        if job is None:
            raise JobNotFound(f"no job with id {job_id}")
        return job

    def wait(self, job_id: str, timeout: float = 30.0) -> Job:
        """The job once it has settled (``succeeded``, ``failed``, ``cancelled`` or ``dead``).

        Woken by the ``NOTIFY`` its settle sends at commit, it returns within milliseconds of
        the settle, with a safety re-read every second. Raises ``WaitTimeout`` (a
        ``TimeoutError``) when ``timeout`` seconds pass first, ``JobNotFound`` for no such job.
        """
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0:
            raise ValidationError("timeout must be a number of seconds, 0 or more")
        job = self.job(job_id)
        if job.state.is_terminal:
            return job
        if not self._settles.wait(job.id, float(timeout), self._is_settled):
            state = self.store.job_state(job.id) or str(job.state)
            raise WaitTimeout(job.id, float(timeout), state)
        return self.job(job.id)

    def _is_settled(self, job_id: str) -> bool:
        state = self.store.job_state(job_id)
        return state is None or JobState(state).is_terminal

    def attempts(self, job_id: str) -> list[Attempt]:
        return self.store.attempts(rq.job_id(job_id))

    def transitions(self, job_id: str) -> list[Transition]:
        return self.store.transitions(rq.job_id(job_id))

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
        """Every configured provider of the registry (``orchestrator.providers.registry``)."""
        from orchestrator.providers.registry import build_providers

        return build_providers(self.settings)
