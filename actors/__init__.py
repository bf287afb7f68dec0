"""dramatiq actors. Thin: each binds log context and calls one orchestrator function with ids.

The broker is set (from :mod:`orchestrator.runtime`) before any actor is declared, because
dramatiq binds actors to the broker current at declaration time.
"""

from orchestrator import runtime

broker = runtime.current().broker

from actors.jobs import execute_job  # noqa: E402  (the broker must be set first)
from actors.webhooks import process_webhook_event  # noqa: E402

__all__ = ["broker", "execute_job", "process_webhook_event"]
