"""Options every actor shares; PostgreSQL, not dramatiq, decides provider retries.

The actors' own retries only cover infrastructure blips (a database restart) around the
claim: a retried message is harmless because every claim is a compare-and-set.
"""

from __future__ import annotations

from typing import Any

from orchestrator import runtime

INFRA_MAX_RETRIES = 5
INFRA_MIN_BACKOFF_MS = 500
INFRA_MAX_BACKOFF_MS = 30_000


def actor_options() -> dict[str, Any]:
    settings = runtime.current().settings
    return {
        "queue_name": settings.queue_name,
        "max_retries": INFRA_MAX_RETRIES,
        "min_backoff": INFRA_MIN_BACKOFF_MS,
        "max_backoff": INFRA_MAX_BACKOFF_MS,
        # Well past one provider call (lease_s covers two): the provider timeouts end it first.
        "time_limit": int((settings.lease_s + 30) * 1000),
    }
