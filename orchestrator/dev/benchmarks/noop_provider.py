"""A provider that answers every call at once, for benchmarks that measure everything but the
provider: the burn-down's worker processes and the floor benchmark's in-process executor."""

from __future__ import annotations

from orchestrator.models import AttemptOutcome, Job
from orchestrator.providers.base import Outcome

# The no-op provider answers for the charges' provider (the settings' default route).
NOOP_PROVIDER = "stripe"


class NoopProvider:
    """A provider that answers every call at once with a success and a reference, as Stripe
    would for a confirmed PaymentIntent: the settle writes what a real success writes."""

    name = NOOP_PROVIDER
    # Like Stripe: claims commit asynchronously and an ambiguous outcome would be retried.
    honours_idempotency_keys = True

    def execute(self, job: Job, idempotency_key: str) -> Outcome:
        return self._succeeded(job)

    def lookup(self, job: Job) -> Outcome | None:
        return self._succeeded(job)

    def lookup_is_consistent(self, job: Job) -> bool:
        return True

    @staticmethod
    def _succeeded(job: Job) -> Outcome:
        return Outcome(
            AttemptOutcome.SUCCEEDED,
            provider_ref=f"noop_{job.id}",
            provider_status="succeeded",
        )
