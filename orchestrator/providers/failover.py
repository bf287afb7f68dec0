"""Failover of a charge to a second provider, only when the first provably never executed it.

A charge may name a failover (``orch.charge(..., failover={"provider": "stripe", "customer":
"cus_...", "payment_method": "pm_..."})``: the other provider's own tokens). The job moves to
it only on proof that the first provider holds nothing: the connection was refused before a
request went out, the provider answered 429 (it refused the request unseen), or our breaker
or rate limiter denied the call before any was made. Never after an ambiguous outcome (a cut
connection, a timeout, a 5xx): the first provider may hold the money, and a second charge
elsewhere would take it twice. A job fails over once; its attempts record both providers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrator.models import AttemptOutcome, Job, JobKind
from orchestrator.providers.base import Outcome

# The classified errors that prove the provider never saw the request.
NEVER_EXECUTED_CODES = frozenset({"connect_failed", "rate_limited"})


def failover_target(job: Job, outcome: Outcome | None) -> Mapping[str, Any] | None:
    """The failover a charge moves to after ``outcome`` (None: the breaker or rate limiter
    denied the call before it was made), or None when it must stay where it is."""
    target = job.params.get("failover")
    if job.kind is not JobKind.CHARGE or not isinstance(target, Mapping):
        return None
    if target.get("provider") == job.provider:
        return None  # already failed over: never back
    if outcome is None:
        return target
    if outcome.kind is AttemptOutcome.NOT_EXECUTED and outcome.error_code in NEVER_EXECUTED_CODES:
        return target
    return None


def reason(job: Job, target: Mapping[str, Any], why: str) -> str:
    return f"failed over from {job.provider} to {target['provider']}: {why}"[:500]


def row_changes(target: Mapping[str, Any] | None) -> dict[str, Any]:
    """The job row's provider fields after a failover to ``target`` (None: unchanged)."""
    if target is None:
        return {"switch_provider": None, "switch_customer": None, "switch_payment_method": None}
    return {
        "switch_provider": target["provider"],
        "switch_customer": target.get("customer"),
        "switch_payment_method": target["payment_method"],
    }
