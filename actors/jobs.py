"""The job actor: one message per job id; the orchestrator decides everything else."""

from __future__ import annotations

import dramatiq

from actors.options import actor_options
from orchestrator import runtime
from orchestrator.broker import EXECUTE_ACTOR
from orchestrator.logs import bind_job


@dramatiq.actor(actor_name=EXECUTE_ACTOR, **actor_options())
def execute_job(job_id: str) -> None:
    """Attempt, resolve or ignore the job, as its state in PostgreSQL says."""
    bind_job(job_id)
    runtime.current().executor().run(job_id)
