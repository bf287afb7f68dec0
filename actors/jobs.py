"""The job actor: one message per job id; the orchestrator decides everything else."""

from __future__ import annotations

import dramatiq

from orchestrator import runtime
from orchestrator.broker import EXECUTE_ACTOR
from orchestrator.logs import bind_job

_settings = runtime.current().settings

# Provider retries are decided by the orchestrator from PostgreSQL, never by dramatiq. The
# actor's own retries only cover infrastructure blips (a database restart) around the
# claim; a retried message is harmless because the claim is a compare-and-set.
INFRA_MAX_RETRIES = 5
INFRA_MIN_BACKOFF_MS = 500
INFRA_MAX_BACKOFF_MS = 30_000
# Well past one provider call (lease_s covers two): the provider timeouts end a call first.
TIME_LIMIT_MS = int((_settings.lease_s + 30) * 1000)


@dramatiq.actor(
    actor_name=EXECUTE_ACTOR,
    queue_name=_settings.queue_name,
    max_retries=INFRA_MAX_RETRIES,
    min_backoff=INFRA_MIN_BACKOFF_MS,
    max_backoff=INFRA_MAX_BACKOFF_MS,
    time_limit=TIME_LIMIT_MS,
)
def execute_job(job_id: str) -> None:
    """Attempt, resolve or ignore the job, as its state in PostgreSQL says."""
    bind_job(job_id)
    runtime.current().executor().run(job_id)
