"""The breaker's states and the scripts' answers: the strings Redis stores and returns.

Each is a :class:`enum.StrEnum`, so a member equals (and hashes as) its bare string: callers
comparing with ``"open"`` and the Lua scripts' replies work unchanged.
"""

from __future__ import annotations

import enum


class BreakerState(enum.StrEnum):
    """Where one provider's breaker stands (the ``state`` field of its Redis hash)."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Verdict(enum.StrEnum):
    """The answer to one acquire (``breaker_acquire.lua`` and :class:`LocalBreaker`)."""

    ALLOW = "allow"  # closed: call
    PROBE = "probe"  # the one half-open probe: call, then report with this permit
    OPEN = "open"  # denied until the next probe time
    HALF_OPEN = "half_open"  # denied: another caller holds the probe lease
    FORCED_OPEN = "forced_open"  # denied: an operator opened the breaker
    RATE_LIMITED = "rate_limited"  # denied by the token bucket or a 429's Retry-After


# The verdicts that let the call go ahead.
ALLOWED = frozenset({Verdict.ALLOW, Verdict.PROBE})


class OverrideAction(enum.StrEnum):
    """A manual move of a breaker (``breaker_override.lua``)."""

    OPEN = "open"  # held open (no probes) until an operator closes it
    CLOSE = "close"  # closed, counters and cooldown reset, any hold released
    SEED_OPEN = "seed_open"  # the fallback's re-seed of a Redis that lost its data
