"""A durable job-queue payment orchestrator: charges and sends as persisted, idempotent jobs."""

from orchestrator.api import Orchestrator
from orchestrator.errors import (
    ConfigError,
    IdempotencyConflict,
    InvalidOperation,
    JobNotFound,
    OrchestratorError,
    ProviderUnavailable,
    ValidationError,
)
from orchestrator.models import Job, JobKind, JobState

__all__ = [
    "ConfigError",
    "IdempotencyConflict",
    "InvalidOperation",
    "Job",
    "JobKind",
    "JobNotFound",
    "JobState",
    "Orchestrator",
    "OrchestratorError",
    "ProviderUnavailable",
    "ValidationError",
]
