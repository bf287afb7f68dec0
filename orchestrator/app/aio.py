"""``AsyncOrchestrator``: the application API on asyncio (psycopg's async API and pool).

The same requests as :class:`~orchestrator.api.Orchestrator`, validated by the same functions
(:mod:`orchestrator.app.requests`), give the same rows, fingerprints and idempotency rules; a
job accepted here is indistinguishable from one accepted by the sync API. Messages go out
through the same :class:`~orchestrator.broker.Dispatcher` (its background sender: the event
loop never waits for Redis), or, with ``conn=``, through the clock's NOTIFY dispatch at the
caller's commit.

One instance belongs to one event loop (its pool and its settle listener live there).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import dramatiq
import psycopg

from orchestrator import validation as v
from orchestrator.app import requests as rq
from orchestrator.broker import Dispatcher, make_broker
from orchestrator.config import Settings, load_settings
from orchestrator.db import astore
from orchestrator.db.astore import AnyAConn, AsyncStore, make_async_pool
from orchestrator.errors import (
    IdempotencyConflict,
    InvalidOperation,
    JobNotFound,
    ValidationError,
    WaitTimeout,
)
from orchestrator.logs import get_logger
from orchestrator.models import Job, JobState

log = get_logger(__name__)

# The schema's transition trigger announces every settle (into succeeded, failed, dead,
# cancelled) here at commit, with the job id as payload.
SETTLED_CHANNEL = "orchestrator_settled"
# wait() re-reads the job at least this often (s), whatever the listener heard: a lost
# notification (the listener's connection dropped) costs at most this much latency.
SAFETY_REREAD_S = 1.0
# How long wait() lets a starting listener reach LISTEN before reading anyway (s).
LISTEN_READY_S = 1.0
# Pause before the listener reconnects after losing its connection (s).
LISTENER_RETRY_S = 0.5


class AsyncOrchestrator:
    """Enqueue charges, emails and refunds as durable jobs, read them, wait for them: async.

    ``async with AsyncOrchestrator.from_env() as orch: job = await orch.charge(...)``.
    Without ``async with``, the pool opens on first use; ``await orch.close()`` releases it.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        store: AsyncStore | None = None,
        broker: dramatiq.Broker | None = None,
    ) -> None:
        self.settings = settings
        self.store = store or AsyncStore(
            make_async_pool(settings.database_url, max_size=settings.db_pool_max_size)
        )
        self.broker = broker or make_broker(settings)
        self.dispatcher = Dispatcher(
            self.broker, settings.queue_name, delay_window_s=settings.broker_delay_window_s
        )
        self._listener = _SettledListener(settings.database_url)
        self._opened = False

    @classmethod
    def from_env(cls, **overrides: Any) -> AsyncOrchestrator:
        """Build from the environment (and ``.env``); keyword overrides take precedence."""
        return cls(load_settings(**overrides))

    async def open(self) -> None:
        """Open the pool (done on first use too)."""
        if not self._opened:
            self._opened = True
            await self.store.open()

    async def close(self) -> None:
        """Stop the settle listener, send the messages still queued (for up to a few seconds,
        off the event loop), then release the pool."""
        await self._listener.close()
        await asyncio.to_thread(self.dispatcher.close)
        await self.store.close()

    async def __aenter__(self) -> AsyncOrchestrator:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- enqueueing ------------------------------------------------------------------------

    async def charge(
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
        conn: AnyAConn | None = None,
    ) -> Job:
        """As :meth:`Orchestrator.charge <orchestrator.api.Orchestrator.charge>`; ``conn`` is
        the caller's ``psycopg.AsyncConnection``: the job is inserted in its transaction and
        the message goes out when it commits (rolled back: no job, no message)."""
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
        return await self._enqueue(row, conn)

    async def send_email(
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
        conn: AnyAConn | None = None,
    ) -> Job:
        """As :meth:`Orchestrator.send_email <orchestrator.api.Orchestrator.send_email>`;
        ``conn`` as in :meth:`charge`."""
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
        return await self._enqueue(row, conn)

    async def refund(
        self,
        charge_job_id: str,
        amount: int | None = None,
        *,
        idempotency_key: str,
        metadata: Mapping[str, str] | None = None,
        conn: AnyAConn | None = None,
    ) -> Job:
        """As :meth:`Orchestrator.refund <orchestrator.api.Orchestrator.refund>`: the amount is
        reserved on the locked charge in the same transaction as the insert. With ``conn``,
        that work is a savepoint of the caller's transaction (the charge stays locked until
        the caller commits) and the message goes out at commit."""
        request = rq.refund_request(charge_job_id, amount, metadata)
        key = v.idempotency_key(idempotency_key)
        if conn is not None:
            async with astore.savepoint(conn):
                job, created = await self._reserve_and_insert_refund(conn, key, request)
                if created:
                    await self.store.notify_dispatch(conn, job.id)
            return job
        await self.open()
        async with self.store.connection() as own:
            job, created = await self._reserve_and_insert_refund(own, key, request)
        if created:
            self.dispatcher.send_soon(job.id)
        return job

    async def _reserve_and_insert_refund(
        self, conn: AnyAConn, key: str, request: dict[str, Any]
    ) -> tuple[Job, bool]:
        charge_id = request["charge_job_id"]
        charge = await self.store.lock_charge_for_refund(conn, charge_id)
        if charge is None:
            raise JobNotFound(f"no charge with id {charge_id}")
        existing = await self.store.job_by_key(conn, key)  # after the lock: sees a twin
        if existing is not None:
            if existing.fingerprint != v.fingerprint(request):
                raise IdempotencyConflict(key, existing.id)
            return existing, False
        row = rq.refund_row(charge, key, request)
        job, created = await self._insert_or_get(conn, rq.with_defaults(self.settings, row))
        if created and await self.store.reserve_refund(conn, charge.id, row["amount"]) is None:
            raise InvalidOperation(
                f"charge {charge.id} cannot take a refund of {row['amount']} now"
            )
        return job, created

    async def _enqueue(self, row: dict[str, Any], conn: AnyAConn | None) -> Job:
        row = rq.with_defaults(self.settings, row)
        if conn is not None:
            job, created = await self._insert_or_get(conn, row)
            if created:
                await self.store.notify_dispatch(conn, job.id)
            return job
        await self.open()
        job, created = await self.store.retrying(lambda own: self._insert_or_get(own, row))
        if created:
            # Committed: the background sender takes it (the clock's sweep if it never does).
            self.dispatcher.send_soon(job.id)
        return job

    async def _insert_or_get(self, conn: AnyAConn, row: dict[str, Any]) -> tuple[Job, bool]:
        job = await self.store.insert_job(conn, row)
        if job is not None:
            log.info("job.accepted", job_id=job.id, kind=str(job.kind), provider=job.provider)
            return job, True
        existing = await self.store.job_by_key(conn, row["idempotency_key"])
        if existing is None:  # the conflicting insert rolled back between our two statements
            raise ValidationError("idempotency_key is being used concurrently; try again")
        if existing.fingerprint != row["fingerprint"]:
            raise IdempotencyConflict(row["idempotency_key"], existing.id)
        return existing, False

    # -- reading ---------------------------------------------------------------------------

    async def job(self, job_id: str) -> Job:
        """The job with that id; ``JobNotFound`` otherwise (``ValidationError`` if malformed)."""
        canonical = rq.job_id(job_id)
        await self.open()
        job = await self.store.job(canonical)
        if job is None:
            raise JobNotFound(f"no job with id {job_id}")
        return job

    async def wait(self, job_id: str, timeout: float = 30.0) -> Job:
        """The job once it has settled (``succeeded``, ``failed``, ``dead`` or ``cancelled``),
        returned within tens of milliseconds of the settle's commit; ``WaitTimeout`` (a
        ``TimeoutError``, carrying the last state seen) after ``timeout`` seconds.

        One LISTEN connection per instance serves every waiter; each waiter, once listening,
        registers in ``job_waiters`` and reads the job's state in one statement (a settle
        committed before is seen by that read; one after is announced, as the job has a
        waiter), then re-reads it on each notification for it and at least every second.
        """
        canonical = rq.job_id(job_id)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            raise ValidationError("timeout must be a number of seconds")
        if not math.isfinite(timeout) or timeout < 0:
            raise ValidationError("timeout must be a finite number of seconds, at least 0")
        await self.open()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        heard = self._listener.subscribe(canonical)
        waiter = str(uuid.uuid4())
        registered = False
        try:
            await self._listener.ready(min(timeout, LISTEN_READY_S))
            # Registered under FOR SHARE (queries: add_waiter): a settle committed before is
            # read here, one after notifies, as the job has a waiter.
            state = await self.store.add_waiter(canonical, waiter)
            if state is None:
                raise JobNotFound(f"no job with id {job_id}")
            registered = True
            while True:
                if JobState(state).is_terminal:
                    return await self.job(canonical)
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise WaitTimeout(canonical, timeout, state)
                with contextlib.suppress(TimeoutError):  # else: the safety re-read
                    await asyncio.wait_for(heard.wait(), min(SAFETY_REREAD_S, remaining))
                heard.clear()
                state = str((await self.job(canonical)).state)
        finally:
            self._listener.unsubscribe(canonical, heard)
            if registered:
                await self._unregister(canonical, waiter)

    async def _unregister(self, job_id: str, waiter: str) -> None:
        """Best effort: a row left behind only costs one NOTIFY when the job settles."""
        try:
            await self.store.remove_waiter(job_id, waiter)
        except psycopg.Error as exc:
            log.warning("wait.unregister_failed", job_id=job_id, error=type(exc).__name__)


class _SettledListener:
    """One connection LISTENing on ``orchestrator_settled``, waking the waiters of each job
    announced. Started by the first waiter; reconnects after a lost connection (waking every
    waiter to re-read, since announcements meanwhile were lost)."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._listening = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def subscribe(self, job_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self._waiters.setdefault(job_id, set()).add(event)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="orchestrator-settled-listener")
        return event

    def unsubscribe(self, job_id: str, event: asyncio.Event) -> None:
        events = self._waiters.get(job_id)
        if events is not None:
            events.discard(event)
            if not events:
                del self._waiters[job_id]

    async def ready(self, timeout_s: float) -> bool:
        """True once LISTEN is active; False if it was not within ``timeout_s``."""
        try:
            await asyncio.wait_for(self._listening.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is None or task.done():
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def _wake_all(self) -> None:
        for events in self._waiters.values():
            for event in events:
                event.set()

    async def _run(self) -> None:
        while True:
            try:
                async with await astore.connect(self._url, autocommit=True) as conn:
                    await astore.listen(conn, SETTLED_CHANNEL)
                    self._listening.set()
                    self._wake_all()  # settles missed while not listening: re-read now
                    async for notify in conn.notifies():
                        for event in self._waiters.get(notify.payload, ()):
                            event.set()
            except psycopg.Error as exc:
                log.warning("wait.listener_lost", error=type(exc).__name__)
            finally:
                self._listening.clear()
            await asyncio.sleep(LISTENER_RETRY_S)
