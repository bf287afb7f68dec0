"""Benchmarks, run by ``scripts/bench`` and ``orchestrator bench``.

``MODULES`` is the whole registry: each entry names a module with
``def run(args: argparse.Namespace) -> None`` that measures something and prints its own
figures. Add a benchmark by appending its module's dotted name here.
"""

MODULES: tuple[str, ...] = (
    "orchestrator.dev.benchmarks.charges",
    "orchestrator.dev.benchmarks.webhooks",
    "orchestrator.dev.benchmarks.breaker",
    "orchestrator.dev.benchmarks.bulk",
    "orchestrator.dev.benchmarks.history",
    "orchestrator.dev.benchmarks.burndown",
    "orchestrator.dev.benchmarks.floor",
)

__all__ = ["MODULES"]
