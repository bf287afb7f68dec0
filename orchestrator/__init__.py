"""A durable job-queue payment orchestrator: charges and sends as persisted, idempotent jobs."""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _distribution_version

from orchestrator.api import Orchestrator
from orchestrator.app.aio import AsyncOrchestrator
from orchestrator.errors import (
    ConfigError,
    IdempotencyConflict,
    InvalidOperation,
    JobNotFound,
    OrchestratorError,
    ProviderUnavailable,
    ValidationError,
    WaitTimeout,
)
from orchestrator.models import Job, JobKind, JobState

# The name this package is installed under (pip install durable-payment-orchestrator).
DISTRIBUTION = "durable-payment-orchestrator"
try:
    __version__ = _distribution_version(DISTRIBUTION)
except PackageNotFoundError:  # imported from a checkout that was never installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "DISTRIBUTION",
    "AsyncOrchestrator",
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
    "WaitTimeout",
]
