"""Per-provider circuit breakers and rate limits, shared by every process through Redis.

One breaker per provider::

    closed --(N consecutive failures, or a failure rate over the call window)--> open
    open --(cooldown passed; the first caller gets the one probe lease)--> half_open
    half_open --(the probe succeeded)--> closed
    half_open --(the probe failed: cooldown doubles, up to its maximum)--> open

Every move is one Lua script (``orchestrator/breaker/lua/*.lua``, each documenting the keys
it touches), so processes on any host see one state and exactly one probe runs at a time.
Time comes from Redis ``TIME`` inside the scripts, never from a host's clock (tests may pass
it). A token bucket in the same acquire script keeps the fleet under the provider's rate
limit, and a 429's ``Retry-After`` pauses the whole fleet.

Redis unreachable: :class:`SharedBreaker` falls back to a per-process :class:`LocalBreaker`
(same rules, logged once), tries Redis again every :data:`REDIS_RETRY_INTERVAL_S`, and when
it answers re-seeds it with any breaker the process saw open.

What counts (:func:`signal_of`): 5xx, timeouts and connection failures are failures;
successes, pending results and permanent refusals (declines, validation, auth) show a
healthy provider; a 429 only feeds the rate limiter; a 409 proves nothing.

Modules (each imports only those above it): ``states`` (the enums), ``signals``
(classifying outcomes), ``config`` (rules, permits, status, the protocol), ``redis`` and
``local`` (the two implementations), ``shared`` (Redis with the fallback), ``metrics``.
"""

from orchestrator.breaker.config import (
    HALF_OPEN_RECHECK_MS,
    PROBE_LEASE_MARGIN_S,
    Breaker,
    BreakerConfig,
    BreakerStatus,
    Permit,
    RecordedCall,
)
from orchestrator.breaker.local import LocalBreaker
from orchestrator.breaker.metrics import STATE_VALUES, BreakerCollector
from orchestrator.breaker.redis import LUA_DIR, RedisBreaker, redis_client
from orchestrator.breaker.shared import REDIS_RETRY_INTERVAL_S, SUCCESS_BATCH_S, SharedBreaker
from orchestrator.breaker.signals import Signal, signal_of, signal_of_lookup_failure
from orchestrator.breaker.states import ALLOWED, BreakerState, OverrideAction, Verdict

__all__ = [
    "ALLOWED",
    "HALF_OPEN_RECHECK_MS",
    "LUA_DIR",
    "PROBE_LEASE_MARGIN_S",
    "REDIS_RETRY_INTERVAL_S",
    "STATE_VALUES",
    "SUCCESS_BATCH_S",
    "Breaker",
    "BreakerCollector",
    "BreakerConfig",
    "BreakerState",
    "BreakerStatus",
    "LocalBreaker",
    "OverrideAction",
    "Permit",
    "RecordedCall",
    "RedisBreaker",
    "SharedBreaker",
    "Signal",
    "Verdict",
    "redis_client",
    "signal_of",
    "signal_of_lookup_failure",
]
