"""The application's entry point: ``Orchestrator.from_env()``, ``charge()``, ``job()``."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import dramatiq

from orchestrator import validation as v
from orchestrator.broker import Dispatcher, make_broker
from orchestrator.config import Settings, load_settings
from orchestrator.errors import IdempotencyConflict, JobNotFound, ValidationError
from orchestrator.executor import Executor
from orchestrator.logs import get_logger
from orchestrator.models import Attempt, Job, JobKind, Transition
from orchestrator.providers.base import Provider
from orchestrator.store import Conn, Store, make_pool

log = get_logger(__name__)

MAX_DESCRIPTION_CHARS = 1000


class Orchestrator:
    """Enqueue charges as durable jobs and read them back.

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
        self.broker = broker or make_broker(settings)
        self.dispatcher = Dispatcher(self.broker, settings.queue_name)
        self._executor: Executor | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, **overrides: Any) -> Orchestrator:
        """Build from the environment (and ``.env``); keyword overrides take precedence."""
        return cls(load_settings(**overrides))

    def close(self) -> None:
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
        conn: Conn | None = None,
    ) -> Job:
        """Accept a charge as a job (or return the job this key already made).

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
        key = v.idempotency_key(idempotency_key)
        params: dict[str, Any] = {"metadata": request["metadata"]}
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

    def _enqueue(self, row: dict[str, Any], conn: Conn | None) -> Job:
        row = {
            **row,
            "max_attempts": self.settings.max_attempts,
            "horizon_s": self.settings.retry_horizon_s,
            "changed_by": "api",
        }
        if conn is not None:
            job, created = self._insert_or_get(conn, row)
            if created:
                self.store.notify_dispatch(conn, job.id)
            return job
        with self.store.connection() as own:
            job, created = self._insert_or_get(own, row)
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
        try:
            self.dispatcher.send(job.id)
        except Exception as exc:  # the job is committed: the clock's sweep will send it
            log.warning("job.dispatch_deferred", job_id=job.id, error=type(exc).__name__)

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
        return {"stripe": stripe_provider}


def _job_id(value: str) -> str:
    import uuid

    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise ValidationError("job id must be a UUID") from None
