"""Per-provider fault settings and the probabilistic faults drawn for one request.

The fault model itself is described in :mod:`orchestrator.dev.simulator`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FaultConfig:
    """Fault injection settings for one provider (all off by default)."""

    latency_ms: float = 0.0
    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_500_after_execute: float = 0.0
    rate_cut_before_execute: float = 0.0
    rate_cut_after_execute: float = 0.0
    rate_timeout: float = 0.0
    # Non-JSON answers from a gateway in front of the API: an HTML 502 before the request
    # reaches the API (nothing executed), an HTML 504 after it executed.
    rate_html_502: float = 0.0
    rate_html_504_after_execute: float = 0.0
    timeout_sleep_s: float = 10.0
    outage: bool = False
    search_lag_s: float = 0.0
    first_try_only: bool = False
    processing_delay_s: float = 2.0
    webhook_duplicate_rate: float = 0.0
    webhook_delay_ms: float = 0.0
    webhook_reorder: bool = False

    @classmethod
    def from_fields(cls, fields: Mapping[str, object]) -> FaultConfig:
        """Build a config from user input, rejecting unknown fields and bad values."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for name, raw in fields.items():
            if name not in known:
                raise ValueError(f"unknown fault field: {name!r}")
            values[name] = _coerce_fault_value(name, raw, known[name].default)
        return cls(**values)

    def rates(self) -> tuple[float, ...]:
        """The probabilistic fault rates, in draw order."""
        return (
            self.rate_429,
            self.rate_cut_before_execute,
            self.rate_500,
            self.rate_500_after_execute,
            self.rate_cut_after_execute,
            self.rate_timeout,
        )

    def gateway_rates(self) -> tuple[float, ...]:
        """The HTML gateway fault rates, drawn after :meth:`rates` and only when non-zero so
        that seeded runs without them see the same draws as before they existed."""
        return (self.rate_html_502, self.rate_html_504_after_execute)


def _coerce_fault_value(name: str, raw: object, default: object) -> float | bool:
    if isinstance(default, bool):
        if not isinstance(raw, bool):
            raise ValueError(f"fault field {name!r} must be a boolean")
        return raw
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise ValueError(f"fault field {name!r} must be a number")
    value = float(raw)
    if value < 0 or ((name.startswith("rate_") or name.endswith("_rate")) and value > 1):
        raise ValueError(f"fault field {name!r} out of range: {value}")
    return value


@dataclass(frozen=True)
class Draw:
    """The probabilistic faults that fired for one request."""

    rate_429: bool = False
    cut_before_execute: bool = False
    rate_500: bool = False
    rate_500_after_execute: bool = False
    cut_after_execute: bool = False
    timeout: bool = False
    html_502: bool = False
    html_504_after_execute: bool = False


NO_FAULTS = Draw()
