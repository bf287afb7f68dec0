"""Provider modules: one per external service, each mapping its SDK in one place."""

from orchestrator.providers.base import NO_RESPONSE, SERVER_ERROR, Outcome, Provider

__all__ = ["NO_RESPONSE", "SERVER_ERROR", "Outcome", "Provider"]
