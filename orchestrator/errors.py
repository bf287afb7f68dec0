"""Every exception the orchestrator raises, split by what the caller must do.

::

    OrchestratorError
    ├── ValidationError (also ValueError)    bad input: fix the call; nothing was written
    ├── IdempotencyConflict (also ValueError) key reused with other parameters: use a new key
    ├── JobNotFound (also LookupError)        no job with that id
    ├── InvalidOperation                      the job's state forbids the request
    ├── ConfigError                           a setting is missing or invalid: fix the environment
    ├── ProviderUnavailable                   a lookup could not reach the provider: ask later
    └── WaitTimeout (also TimeoutError)       wait() ran out of time; the job is not settled yet

Provider failures are not exceptions here: ``orchestrator.providers`` turns each foreign
exception into an :class:`~orchestrator.providers.Outcome` in exactly one place per provider.
"""

from __future__ import annotations


class OrchestratorError(Exception):
    """Base class of every error this package raises on purpose."""


class ValidationError(OrchestratorError, ValueError):
    """The request is malformed; nothing was written."""


class IdempotencyConflict(OrchestratorError, ValueError):
    """The idempotency key is already bound to a request with other parameters."""

    def __init__(self, idempotency_key: str, job_id: str) -> None:
        super().__init__(
            f"idempotency key {idempotency_key!r} was already used for job {job_id} "
            "with other parameters"
        )
        self.idempotency_key = idempotency_key
        self.job_id = job_id


class JobNotFound(OrchestratorError, LookupError):
    """No job has that id."""


class InvalidOperation(OrchestratorError):
    """The job exists but its state does not allow the operation."""


class ConfigError(OrchestratorError):
    """A setting is missing or invalid. The message names it and never holds its value."""


class ProviderUnavailable(OrchestratorError):
    """The provider could not answer a lookup now; ask again later."""


class WaitTimeout(OrchestratorError, TimeoutError):
    """``wait()`` gave up before the job settled; ``job`` is how it was last seen."""

    def __init__(self, job_id: str, timeout_s: float, state: str) -> None:
        super().__init__(f"job {job_id} is still {state} after {timeout_s:g}s")
        self.job_id = job_id
        self.timeout_s = timeout_s
        self.state = state
