"""The charges benchmark at tiny scale, through the same code path as ``scripts/bench``."""

from __future__ import annotations

import os

import psycopg

from orchestrator.dev.benchmarks import charges
from orchestrator.dev.benchmarks.runner import build_parser
from tests.conftest import TEST_DATABASE_URL, TEST_REDIS_URL

SMOKE_CHARGES = 30


def test_charges_benchmark_reports_a_rate_for_every_variant() -> None:
    """30 charges (15 at 50 ms) with 1 worker process x 2 threads: every variant finishes
    every job at both latencies, the report prints a positive rate and both ratios, and the
    throwaway database is gone afterwards."""
    args = build_parser().parse_args(
        [
            "--charges",
            str(SMOKE_CHARGES),
            "--processes",
            "1",
            "--threads",
            "2",
            "--database-url",
            TEST_DATABASE_URL,
            "--redis-url",
            TEST_REDIS_URL,
        ]
    )
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
    with psycopg.connect(TEST_DATABASE_URL) as conn:
        left = conn.execute(
            "SELECT count(*) FROM pg_database WHERE datname = %s",
            (f"orchestrator_bench_{os.getpid()}",),
        ).fetchone()
    assert left == (0,), "the bench database is dropped at the end"
    text = charges.render(report)
    assert "orchestrator/naive" in text
    assert "orchestrator/noop" in text
    assert "orch.charge() p99" in text
    summary = charges.render_summary([report, report])
    assert summary.startswith("== over 2 runs")
    ratio = (
        report.result(charges.Variant.ORCHESTRATOR, 0.0).rate
        / report.result(charges.Variant.NAIVE, 0.0).rate
    )
    assert f"0 ms: orchestrator/naive {ratio:.2f} ({ratio:.2f}-{ratio:.2f})" in summary
