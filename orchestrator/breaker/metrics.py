"""The breaker's Prometheus metric: each provider's state, as the shared breaker sees it."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from orchestrator.breaker.shared import SharedBreaker
from orchestrator.breaker.states import BreakerState
from orchestrator.providers.registry import provider_names

# Metric values of orchestrator_breaker_state.
STATE_VALUES: Mapping[BreakerState, int] = {
    BreakerState.CLOSED: 0,
    BreakerState.HALF_OPEN: 1,
    BreakerState.OPEN: 2,
}


class BreakerCollector(Collector):
    """``orchestrator_breaker_state{provider}``: 0 closed, 1 half_open, 2 open (from Redis)."""

    def __init__(self, breaker: SharedBreaker, providers: tuple[str, ...] | None = None) -> None:
        self.breaker = breaker
        # Every registered provider, listed even before its first call.
        self.providers = providers if providers is not None else provider_names()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily(
            "orchestrator_breaker_state",
            "Circuit breaker state per provider: 0 closed, 1 half_open, 2 open",
            labels=["provider"],
        )
        for provider in self.providers:
            status = self.breaker.status(provider)
            gauge.add_metric([provider], STATE_VALUES.get(status.state, 0))
        yield gauge
