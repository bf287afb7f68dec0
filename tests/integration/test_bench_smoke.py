"""The charges benchmark at tiny scale, through the same code path as ``scripts/bench``."""

from __future__ import annotations

import argparse
import os

import psycopg
import pytest

from orchestrator.dev.benchmarks import charges
from orchestrator.dev.benchmarks.runner import build_parser
from tests.conftest import TEST_DATABASE_URL, TEST_REDIS_URL

SMOKE_CHARGES = 30


def test_charges_benchmark_reports_a_rate_for_every_variant() -> None:
    """30 charges (15 at 50 ms) with 1 worker process x 2 threads: every variant finishes
    every job at both latencies (the floor's rows settled in PostgreSQL), the report prints a
    positive rate and the ratios, and the throwaway database is gone afterwards."""
    args = bench_args("--charges", str(SMOKE_CHARGES), "--processes", "1", "--threads", "2")
    report = charges.measure(charges.config_from_args(args))

    expected = {
        (variant, latency): jobs
        for variant in charges.Variant
        for latency, jobs in ((0.0, SMOKE_CHARGES), (charges.SLOW_LATENCY_MS, SMOKE_CHARGES // 2))
    }
    assert {(r.variant, r.latency_ms): r.jobs for r in report.results} == expected
    for result in report.results:
        assert result.rate > 0
        assert result.total_s >= result.enqueue_s > 0
        assert len(result.enqueue_ms) == result.jobs
        # Where the CPU went, from /proc (in clock ticks of 10 ms: a small drain may read 0).
        assert {"driver", "workers", "simulator"} <= set(result.cpu_ms), result.cpu_ms
    orch = report.result(charges.Variant.ORCHESTRATOR, 0.0)
    assert orch.cpu_ms["workers"] > 0 and orch.cpu_ms["postgresql"] > 0, orch.cpu_ms
    assert orch.busy_cores > 0
    assert_dropped(f"orchestrator_bench_{os.getpid()}")
    text = charges.render(report)
    assert "orchestrator/naive" in text
    assert "orchestrator/noop" in text
    floor = report.result(charges.Variant.FLOOR, 0.0)
    naive = report.result(charges.Variant.NAIVE, 0.0)
    assert f"floor/naive {floor.rate / naive.rate:.2f}" in text
    assert f"orchestrator/floor {orch.rate / floor.rate:.2f}" in text
    assert "floor enqueue p99" in text and "naive enqueue p99" in text
    assert "orch.charge() p99" in text
    assert "CPU per job (ms) over each drain" in text
    assert "0 ms: naive/orchestrator CPU per job" in text
    summary = charges.render_summary([report, report])
    assert summary.startswith("== over 2 runs")
    above = orch.rate / floor.rate
    assert f"orchestrator/floor {above:.2f} ({above:.2f}-{above:.2f})" in summary
    ratio = (
        report.result(charges.Variant.ORCHESTRATOR, 0.0).rate
        / report.result(charges.Variant.NAIVE, 0.0).rate
    )
    assert f"0 ms: orchestrator/naive {ratio:.2f} ({ratio:.2f}-{ratio:.2f})" in summary
    total = f"{orch.cpu_total_ms:.2f}"
    assert f"CPU per job at 0 ms: orchestrator {total} ({total}-{total}) ms" in summary


def test_history_benchmark_reports_every_operation(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The history benchmark with 20,000 finished jobs (and fewer calls per operation): the
    table names all five operations with both figures, a ratio and a verdict, the load is
    reported with the tables' sizes, and the throwaway database is gone afterwards."""
    from orchestrator.dev.benchmarks import history

    for name, value in (("ENQUEUE_CALLS", 50), ("CLAIMS", 50), ("WARMUP_CALLS", 10)):
        monkeypatch.setattr(history, name, value)
    args = bench_args("--only", "history", "--charges", "20000")
    history.run(args)
    out = capsys.readouterr().out
    assert "the present beside 20,000 finished jobs" in out
    labels = {label: operation for operation, _, label in history.ROWS}
    rows = {
        label: line.removeprefix(label).split()
        for line in out.splitlines()
        for label in labels
        if line.startswith(label)
    }
    assert set(labels.values()) == set(history.OPERATIONS)
    assert set(rows) == set(labels), set(labels) - set(rows)
    for label, cells in rows.items():
        empty_ms, full_ms, ratio, verdict = cells[:4]
        assert float(empty_ms) > 0 and float(full_ms) > 0, label
        assert verdict == ("ok" if float(ratio) <= history.TARGET_RATIO else "OVER"), label
    assert "history loaded in" in out
    assert "for comparison, no target: Store.count_by_state (every job)" in out
    for table in ("jobs", "job_transitions", "job_attempts"):
        assert any(line.startswith(f"{table} ") for line in out.splitlines()), table
    assert "target: every operation within 1.20x" in out
    assert_dropped(f"orchestrator_bench_history_{os.getpid()}")


def test_burndown_benchmark_reports_both_rates_and_the_ratio(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """300 jobs inserted up front, drained by 1 worker process x 2 threads: the orchestrator
    (no-op provider) succeeds every job, bare dramatiq acks every message, the report prints
    both rates, the ratio, the insert rates and what PostgreSQL wrote per job, and the
    throwaway database is gone afterwards."""
    from orchestrator.dev.benchmarks import burndown

    args = bench_args("--only", "burndown", "--jobs", "300", "--processes", "1", "--threads", "2")
    burndown.run(args)
    out = capsys.readouterr().out

    assert out.startswith("== burn-down: 300 jobs inserted")
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()}
    for variant in burndown.Variant:
        cells = rows[str(variant)]
        assert cells[1] == "300", cells
        rates = (cells[3], cells[6], cells[7])  # inserted/s, jobs/s, incl. boot jobs/s
        assert all(float(rate.replace(",", "")) > 0 for rate in rates), cells
    assert "orchestrator/dramatiq: " in out
    assert "insert: charge_many" in out
    assert "PostgreSQL, drain: 6.0 rows/job" in out, "claim + settle: two updates, four inserts"
    assert_dropped(f"orchestrator_bench_burndown_{os.getpid()}")


def test_floor_benchmark_runs_its_variants_in_alternating_rounds(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Two rounds of 40 jobs per variant: every orchestrator job succeeds (the round raises
    otherwise) and every floor job is claimed and settled; the rounds alternate the order of
    the variants; the orchestrator writes more WAL per job than three bare commits (its row's
    indexes, three transitions, the attempt, the settlement); logging at info renders a job's
    three events (accepted, attempt started, settled) and the other variants log none; the
    report prints the medians and their ratios, and the throwaway database is gone afterwards."""
    from orchestrator.dev.benchmarks import floor

    args = bench_args("--only", "floor", "--charges", "40", "--repeat", "2")
    floor.run(args)
    out = capsys.readouterr().out

    assert out.startswith("== durability floor: one thread, 40 jobs per round, 2 round(s)")
    variants = {str(v) for v in floor.Variant}
    rows = [line.split() for line in out.splitlines()]
    rounds = [r for r in rows if len(r) == 8 and r[0].isdigit() and r[1] in variants]
    assert [(r[0], r[1], r[2]) for r in rounds] == [
        ("1", "floor", "40"),
        ("1", "orchestrator", "40"),
        ("1", "orchestrator-info", "40"),
        ("2", "orchestrator-info", "40"),
        ("2", "orchestrator", "40"),
        ("2", "floor", "40"),
    ]
    wal = {(r[0], r[1]): int(r[6]) for r in rounds}
    log_lines = {(r[0], r[1]): float(r[7]) for r in rounds}
    for round_ in ("1", "2"):
        assert 0 < wal[(round_, "floor")] < wal[(round_, "orchestrator")], wal
        assert log_lines[(round_, "orchestrator-info")] == 3.0, log_lines
        assert log_lines[(round_, "orchestrator")] == log_lines[(round_, "floor")] == 0.0
    for label in ("postgresql CPU", "client CPU", "WAL", "wall"):
        assert f"{label} per job, medians: orchestrator " in out, label
    assert "logging at info, medians: 3.0 lines per job, client CPU per job " in out
    assert_dropped(f"orchestrator_bench_floor_{os.getpid()}")


def assert_dropped(database: str) -> None:
    """The benchmark dropped its throwaway database at the end."""
    with psycopg.connect(TEST_DATABASE_URL) as conn:
        left = conn.execute(
            "SELECT count(*) FROM pg_database WHERE datname = %s", (database,)
        ).fetchone()
    assert left == (0,), f"the bench database {database} is dropped at the end"


def bench_args(*options: str) -> argparse.Namespace:
    """``scripts/bench`` options, against the tests' PostgreSQL and Redis."""
    urls = ["--database-url", TEST_DATABASE_URL, "--redis-url", TEST_REDIS_URL]
    return build_parser().parse_args([*options, *urls])
