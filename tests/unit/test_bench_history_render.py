"""The history benchmark's report judges each ratio as it prints it."""

from __future__ import annotations

from orchestrator.db.bench import Load
from orchestrator.dev.benchmarks import history


def _phases(full_ms: dict[str, float]) -> tuple[history.Phase, history.Phase]:
    operations = (*history.OPERATIONS, history.FULL_COUNT)
    empty = history.Phase({op: [1.0] * 5 for op in operations})
    full = history.Phase({op: [full_ms.get(op, 1.0)] * 5 for op in operations})
    for phase in (empty, full):
        phase.buffers = {q: 1 for qs in history.OPERATION_QUERIES.values() for q in qs}
    return empty, full


def test_a_ratio_printed_as_the_target_is_within_it() -> None:
    """1.2049 prints as 1.20 and is ok; 1.2051 prints as 1.21 and is over: never "1.20 OVER"."""
    empty, full = _phases({"claim": 1.2049, "clock": 1.2051})
    out = history.render(
        1000, empty, full, Load(1000, 0.1, 0.1, 0.1, [("jobs", 1000, 1, 1, 2)]), "machine"
    )
    cells = {
        label: line.removeprefix(label).split()
        for line in out.splitlines()
        for _, _, label in history.ROWS
        if line.startswith(label)
    }
    assert cells["claim: Store.claim p50"][2:4] == ["1.20", "ok"]
    assert cells["claim: Store.claim p99"][2:4] == ["1.20", "ok"]
    clock = next(label for label in cells if label.startswith("clock:"))
    assert cells[clock][2:4] == ["1.21", "OVER"]
    assert out.endswith(f"MISSED (1 of {len(history.ROWS)} over)")
