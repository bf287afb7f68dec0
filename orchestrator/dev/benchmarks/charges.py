"""Charges end to end: the orchestrator beside the least a durable job costs, the naive SDK
call and a no-op actor (what each variant runs: :mod:`orchestrator.dev.benchmarks.charges_measure`).

This module is the registry's entry point and prints the report: rates, enqueue latency,
the ratios held against the targets, and CPU per job by process.
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Sequence

from orchestrator.dev.benchmarks import cpu, support
from orchestrator.dev.benchmarks.charges_measure import (
    DEFAULT_CHARGES,
    QUICK_CHARGES,
    SLOW_LATENCY_MS,
    Config,
    Report,
    Result,
    Scenario,
    Variant,
    measure,
)
from orchestrator.dev.benchmarks.support import WorkerShape

__all__ = ["SLOW_LATENCY_MS", "Report", "Result", "Variant", "measure", "render", "run"]

# The targets, reported against (never asserted): the orchestrator's drain rate as a
# share of the naive call's, by provider latency, and the p99 of orch.charge() from one
# producer while the workers run.
TARGET_SHARE_OF_NAIVE = {0.0: 0.75, SLOW_LATENCY_MS: 0.95}
TARGET_ENQUEUE_P99_MS = 2.0
FLOOR_NOTE = (
    "floor: the naive call with a bare row inserted before the enqueue, claimed before the call "
    "and settled after (three commits, nothing else): what any design that records a job "
    "before and after the call reaches at the most on this machine"
)


# -- entry point ---------------------------------------------------------------------------


def run(args: argparse.Namespace) -> None:
    """Measure and print, ``--repeat`` times over (the registry's entry point)."""
    config = config_from_args(args)
    print(_header(config), flush=True)
    reports = []
    for round_ in range(1, args.repeat + 1):
        if args.repeat > 1:
            print(f"-- run {round_} of {args.repeat}", flush=True)
        reports.append(measure(config))
        print(render(reports[-1]), flush=True)
    if len(reports) > 1:
        print(render_summary(reports), flush=True)


def config_from_args(args: argparse.Namespace) -> Config:
    charges = args.charges or (QUICK_CHARGES if args.quick else DEFAULT_CHARGES)
    return Config(
        scenarios=(Scenario(0.0, charges), Scenario(SLOW_LATENCY_MS, max(1, charges // 2))),
        shape=WorkerShape(args.processes, args.threads),
        producers=args.producers,
        naive_http=args.naive_http,
        server_url=args.database_url,
        redis_url=args.redis_url,
    )


# -- printing ------------------------------------------------------------------------------


def _header(config: Config) -> str:
    runs = ", ".join(f"{s.charges} at {s.latency_ms:g} ms" for s in config.scenarios)
    return (
        f"== charges end to end ({runs}); workers: {config.shape.processes} processes x "
        f"{config.shape.threads} threads per variant; {config.producers} enqueueing "
        "thread(s); simulator in its own process; no call rate limit; naive HTTP client: "
        f"{config.naive_http}"
    )


def render(report: Report) -> str:
    """The figures as a table, then the ratios and the targets they are held against."""
    headers = ["latency", "variant", "jobs", "enqueue s", "total s", "jobs/s",
               "enq p50 ms", "enq p99 ms"]  # fmt: skip
    rows = [
        [
            f"{r.latency_ms:g} ms",
            str(r.variant),
            str(r.jobs),
            f"{r.enqueue_s:.2f}",
            f"{r.total_s:.2f}",
            f"{r.rate:.1f}",
            f"{r.enqueue_pct_ms(50):.2f}",
            f"{r.enqueue_pct_ms(99):.2f}",
        ]
        for r in sorted(
            report.results, key=lambda r: (r.latency_ms, list(Variant).index(r.variant))
        )
    ]
    lines = [report.machine, support.render_table(headers, rows, left=2), ""]
    lines.extend(_ratio_lines(report))
    lines.extend(["", *_cpu_lines(report)])
    return "\n".join(lines)


def _cpu_lines(report: Report) -> list[str]:
    """CPU per job by process group, and the share of the naive's that each variant's rate
    would be held to if the machine were CPU-bound (naive CPU per job / its own)."""
    results = sorted(report.results, key=lambda r: (r.latency_ms, list(Variant).index(r.variant)))
    groups = [g for g in cpu.ORDER if any(g in r.cpu_ms for r in results)]
    headers = ["latency", "variant", *groups, "total", "busy cores"]
    rows = [
        [
            f"{r.latency_ms:g} ms",
            str(r.variant),
            *(f"{r.cpu_ms.get(g, 0.0):.2f}" for g in groups),
            f"{r.cpu_total_ms:.2f}",
            f"{r.busy_cores:.2f}",
        ]
        for r in results
    ]
    lines = [
        "CPU per job (ms) over each drain, from /proc; postgresql and redis: local servers, "
        "all their work",
        support.render_table(headers, rows, left=2),
    ]
    for scenario in report.config.scenarios:
        orch = report.result(Variant.ORCHESTRATOR, scenario.latency_ms)
        naive = report.result(Variant.NAIVE, scenario.latency_ms)
        floor = report.result(Variant.FLOOR, scenario.latency_ms)
        if orch.cpu_total_ms > 0 and floor.cpu_total_ms > 0:
            lines.append(
                f"{scenario.latency_ms:g} ms: naive/orchestrator CPU per job "
                f"{naive.cpu_total_ms / orch.cpu_total_ms:.2f} (the rate ratio's ceiling when "
                f"every core is busy), naive/floor {naive.cpu_total_ms / floor.cpu_total_ms:.2f}; "
                f"orchestrator busy {orch.busy_cores:.2f} of {os.cpu_count()} cores"
            )
    return lines


def _ratio_lines(report: Report) -> list[str]:
    lines = []
    for scenario in report.config.scenarios:
        latency = scenario.latency_ms
        orch = report.result(Variant.ORCHESTRATOR, latency)
        naive = report.result(Variant.NAIVE, latency)
        vs_naive = orch.rate / naive.rate
        vs_noop = orch.rate / report.result(Variant.NOOP, latency).rate
        floor = report.result(Variant.FLOOR, latency)
        target = TARGET_SHARE_OF_NAIVE.get(latency)
        verdict = (
            "" if target is None else f"  (target >= {target:.2f}: {_verdict(vs_naive >= target)})"
        )
        lines.append(
            f"{latency:g} ms: orchestrator/naive {vs_naive:.2f}{verdict}   "
            f"floor/naive {floor.rate / naive.rate:.2f}   orchestrator/floor "
            f"{orch.rate / floor.rate:.2f}   orchestrator/noop {vs_noop:.2f}"
        )
    p99s = [report.result(Variant.ORCHESTRATOR, s.latency_ms).enqueue_pct_ms(99)
            for s in report.config.scenarios]  # fmt: skip
    worst = max(p99s)
    lines.append(
        f"orch.charge() p99: {_join_ms(p99s)}  "
        f"(target <= {TARGET_ENQUEUE_P99_MS:g} ms: {_verdict(worst <= TARGET_ENQUEUE_P99_MS)})"
    )
    for variant in (Variant.FLOOR, Variant.NAIVE):
        p99s = [report.result(variant, s.latency_ms).enqueue_pct_ms(99)
                for s in report.config.scenarios]  # fmt: skip
        lines.append(f"{variant} enqueue p99: {_join_ms(p99s)}")
    lines.append(FLOOR_NOTE)
    return lines


def render_summary(reports: Sequence[Report]) -> str:
    """Median, lowest and highest of each ratio and of the enqueue p99 over the runs."""
    first = reports[0]
    lines = [f"== over {len(reports)} runs: median (lowest-highest)"]
    for scenario in first.config.scenarios:
        latency = scenario.latency_ms
        ratios = [
            r.result(Variant.ORCHESTRATOR, latency).rate / r.result(Variant.NAIVE, latency).rate
            for r in reports
        ]
        target = TARGET_SHARE_OF_NAIVE.get(latency)
        verdict = "" if target is None else f"  (target >= {target:.2f})"
        floors = [
            r.result(Variant.FLOOR, latency).rate / r.result(Variant.NAIVE, latency).rate
            for r in reports
        ]
        above = [
            r.result(Variant.ORCHESTRATOR, latency).rate / r.result(Variant.FLOOR, latency).rate
            for r in reports
        ]
        lines.append(
            f"{latency:g} ms: orchestrator/naive {_spread(ratios, '.2f')}{verdict}   "
            f"floor/naive {_spread(floors, '.2f')}   orchestrator/floor {_spread(above, '.2f')}"
        )
    for scenario in first.config.scenarios:
        p99s = [
            r.result(Variant.ORCHESTRATOR, scenario.latency_ms).enqueue_pct_ms(99) for r in reports
        ]
        floor_p99s = [r.result(Variant.FLOOR, scenario.latency_ms).enqueue_pct_ms(99)
                      for r in reports]  # fmt: skip
        lines.append(
            f"orch.charge() p99 at {scenario.latency_ms:g} ms: {_spread(p99s, '.2f')} ms  "
            f"(target <= {TARGET_ENQUEUE_P99_MS:g} ms)   floor enqueue p99 "
            f"{_spread(floor_p99s, '.2f')} ms"
        )
    for scenario in first.config.scenarios:
        orchs = [r.result(Variant.ORCHESTRATOR, scenario.latency_ms) for r in reports]
        naives = [r.result(Variant.NAIVE, scenario.latency_ms) for r in reports]
        if all(o.cpu_total_ms > 0 for o in orchs):
            shares = [n.cpu_total_ms / o.cpu_total_ms for n, o in zip(naives, orchs, strict=True)]
            lines.append(
                f"CPU per job at {scenario.latency_ms:g} ms: orchestrator "
                f"{_spread([o.cpu_total_ms for o in orchs], '.2f')} ms (postgresql "
                f"{_spread([o.cpu_ms.get(cpu.POSTGRESQL, 0.0) for o in orchs], '.2f')}), naive "
                f"{_spread([n.cpu_total_ms for n in naives], '.2f')} ms; naive/orchestrator "
                f"{_spread(shares, '.2f')}"
            )
    return "\n".join(lines)


def _spread(values: Sequence[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _join_ms(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.2f} ms" for v in values)
