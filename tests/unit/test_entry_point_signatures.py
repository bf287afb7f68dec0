"""Every entry point that accepts a charge takes the same arguments as ``Orchestrator.charge``:
a new charge option added there and forgotten elsewhere fails here."""

from __future__ import annotations

import inspect

from orchestrator import AsyncOrchestrator, Orchestrator
from orchestrator.app import bulk


def _arguments(function: object) -> set[str]:
    return set(inspect.signature(function).parameters) - {"self", "conn"}  # type: ignore[arg-type]


def test_charge_many_items_take_charges_arguments() -> None:
    assert _arguments(Orchestrator.charge) == bulk.CHARGE_ARGUMENTS


def test_async_charge_takes_charges_arguments() -> None:
    assert _arguments(AsyncOrchestrator.charge) == _arguments(Orchestrator.charge)
    assert _arguments(AsyncOrchestrator.refund) == _arguments(Orchestrator.refund)
    assert _arguments(AsyncOrchestrator.send_email) == _arguments(Orchestrator.send_email)
