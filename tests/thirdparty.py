"""A third-party provider package, installed for a test the way pip installs one: a module and
a ``.dist-info`` whose ``entry_points.txt`` names its spec in the ``orchestrator.providers``
group. Nothing of the orchestrator is changed to add it.

The "acme" provider answers from a script of outcomes the test sets (``acme.SCRIPT``); every
call is recorded in ``acme.CALLS`` as (job id, idempotency key, provider token).
"""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

PACKAGE = "acme_orchestrator"
SOURCE = '''
"""Acme Payments for the orchestrator (a test's third-party provider)."""

from orchestrator.models import AttemptOutcome, JobKind
from orchestrator.providers.base import Outcome
from orchestrator.providers.registry import ProviderSpec
from orchestrator.errors import ValidationError

SCRIPT = []  # outcomes to answer, first first; empty: success
CALLS = []


class AcmeProvider:
    name = "acme"
    honours_idempotency_keys = True

    def execute(self, job, idempotency_key):
        CALLS.append((job.id, idempotency_key, job.payment_method))
        if SCRIPT:
            return SCRIPT.pop(0)
        return Outcome(
            AttemptOutcome.SUCCEEDED, provider_ref=f"acme_{job.id}", provider_status="paid"
        )

    def lookup(self, job):
        return None

    def lookup_is_consistent(self, job):
        return True


def charge_options(amount, options):
    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - {"acme_descriptor"})
    if unknown:
        raise ValidationError(f"acme does not take {unknown[0]}")
    return given


SPEC = ProviderSpec(
    name="acme",
    kinds=frozenset({JobKind.CHARGE}),
    build=lambda settings: AcmeProvider(),
    charge_options=charge_options,
)
'''


def install(root: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Install the acme package under ``root`` and put it on ``sys.path``."""
    from orchestrator.providers import registry

    (root / PACKAGE).mkdir()
    (root / PACKAGE / "__init__.py").write_text(textwrap.dedent(SOURCE))
    info = root / "acme_orchestrator-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-orchestrator\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        f"[{registry.ENTRY_POINT_GROUP}]\nacme = {PACKAGE}:SPEC\n"
    )
    monkeypatch.syspath_prepend(str(root))
    registry.clear_cache()
    return importlib.import_module(PACKAGE)


def installed(root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """For a fixture: the acme module while the test runs, forgotten after."""
    from orchestrator.providers import registry

    module = install(root, monkeypatch)
    try:
        yield module
    finally:
        sys.modules.pop(PACKAGE, None)
        monkeypatch.undo()
        registry.clear_cache()
