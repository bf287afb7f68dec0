"""The provider registry: every provider by name, built-in or installed by another package.

A provider is a :class:`ProviderSpec`: its name, the job kinds it executes, how it is built
from the settings (None when it is not configured), the charge options it accepts and, when
it sends webhooks, how a delivery is verified and what a stored event means. The built-ins
are named here by import path, so naming them imports no SDK; a third-party provider is a
package that declares an entry point in the ``orchestrator.providers`` group whose object is
its spec::

    [project.entry-points."orchestrator.providers"]
    acme = "acme_payments.orchestrator:SPEC"

Everything that takes a provider name (the jobs table, the breaker, rate limits, metrics,
CLI filters, the dashboard, webhook routes) takes any name listed by :func:`provider_names`;
adding a provider touches no core module.
"""

from __future__ import annotations

import functools
import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from orchestrator.errors import ConfigError, ValidationError
from orchestrator.models import JobKind

if TYPE_CHECKING:
    from orchestrator.config import Settings
    from orchestrator.models import WebhookEvent
    from orchestrator.providers.base import Provider
    from orchestrator.webhooks.events import Meaning
    from orchestrator.webhooks.ingest import Verify

ENTRY_POINT_GROUP = "orchestrator.providers"
# What the jobs table's provider_name domain admits.
NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")

# The built-in providers, by the import path of their spec (imported on first use only).
BUILTINS: dict[str, str] = {
    "stripe": "orchestrator.providers.stripe.spec:SPEC",
    "sendgrid": "orchestrator.providers.sendgrid:SPEC",
    "ses": "orchestrator.providers.ses:SPEC",
    "razorpay": "orchestrator.providers.razorpay:SPEC",
}


@dataclass(frozen=True, slots=True)
class WebhookSupport:
    """How a provider's webhooks are received (``POST /webhooks/<name>``) and read."""

    # Builds the check of one delivery from the settings; it reads the signing secrets on
    # every call, so a rotated secret is honoured without a restart.
    verifier: Callable[[Settings], Verify]
    # What a stored event says about our jobs.
    meaning: Callable[[WebhookEvent], Meaning]


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """One provider, as the registry knows it."""

    name: str
    kinds: frozenset[JobKind]
    # The provider for these settings, or None when it is not configured (no credentials).
    build: Callable[[Settings], Provider | None]
    # Checks a charge's pass-through options (amount, options given) and returns the ones to
    # keep; an option it does not know raises ValidationError naming it.
    charge_options: Callable[[int, Mapping[str, Any]], dict[str, Any]] | None = None
    webhooks: WebhookSupport | None = None
    # Whether its charges need a customer (a saved token belongs to one).
    needs_customer: bool = False
    # Checks a validated email request (to, subject, body, template, template_data) against
    # the provider's own limits; ValidationError naming what it refuses.
    email_checks: Callable[[Mapping[str, Any]], None] | None = None
    # Loggers of its SDK that must stay quiet (they may print request bodies).
    sdk_loggers: tuple[str, ...] = field(default=())

    def executes(self, kind: JobKind) -> bool:
        return kind in self.kinds


def _load(target: str) -> ProviderSpec:
    module_name, _, attribute = target.partition(":")
    spec = getattr(importlib.import_module(module_name), attribute)
    if not isinstance(spec, ProviderSpec):
        raise ConfigError(f"provider entry point {target} is not a ProviderSpec")
    return spec


@functools.cache
def _installed() -> dict[str, str]:
    """Providers installed by other packages: entry-point name -> import path."""
    found: dict[str, str] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in BUILTINS or not NAME_RE.fullmatch(ep.name):
            continue  # a built-in is never replaced; a bad name could not be stored
        found[ep.name] = ep.value
    return found


def provider_names() -> tuple[str, ...]:
    """Every registered provider: the built-ins first, then installed ones, by name."""
    return (*BUILTINS, *sorted(_installed()))


@functools.cache
def spec(name: str) -> ProviderSpec:
    """The registered provider ``name``; ValidationError naming it when there is none."""
    target = BUILTINS.get(name) or _installed().get(name)
    if target is None:
        known = ", ".join(provider_names())
        raise ValidationError(f"provider {name!r} is not registered (known: {known})")
    loaded = _load(target)
    if loaded.name != name:
        raise ConfigError(f"provider entry point {name} names itself {loaded.name!r}")
    return loaded


def specs() -> list[ProviderSpec]:
    return [spec(name) for name in provider_names()]


def provider_for(name: str, kind: JobKind) -> ProviderSpec:
    """The provider ``name``, checked to execute ``kind`` jobs (ValidationError otherwise)."""
    found = spec(name)
    if not found.executes(kind):
        raise ValidationError(f"provider {name!r} does not execute {kind.value} jobs")
    return found


def build_providers(settings: Settings) -> dict[str, Provider]:
    """Every configured provider, built once for a process."""
    built: dict[str, Provider] = {}
    for item in specs():
        provider = item.build(settings)
        if provider is not None:
            built[item.name] = provider
    return built


def with_webhooks() -> list[ProviderSpec]:
    """The providers that send webhooks (each gets ``POST /webhooks/<name>``)."""
    return [item for item in specs() if item.webhooks is not None]


def clear_cache() -> None:
    """Forget what was looked up (tests install providers at run time)."""
    _installed.cache_clear()
    spec.cache_clear()
