"""``orchestrator audit --since DURATION`` (the ledger against Stripe's lists) and
``orchestrator drift list`` (the drift recorded by webhooks and audits).

``audit`` exits 0 when the ledger and the provider agree over the window, 1 when they do not
(each finding is recorded in ``ledger_drift``), 2 on a bad DURATION.
"""

from __future__ import annotations

import argparse
from datetime import timedelta
from typing import Any

from orchestrator.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    Commands,
    command,
    group,
    open_orchestrator,
    operations,
    print_each,
    print_json,
)
from orchestrator.ops.ledger import parse_duration

MAX_LIMIT = 500


def register(commands: Commands) -> None:
    p = command(
        commands,
        "audit",
        cmd_audit,
        "compare the ledger with Stripe's objects created in a window; exit 1 on drift",
    )
    p.add_argument(
        "--since",
        type=_duration,
        required=True,
        metavar="DURATION",
        help="how far back: 90m, 24h, 7d, 3600s",
    )
    p.add_argument("--json", action="store_true")

    drift = group(commands, "drift", "ledger drift recorded by webhooks and audits")
    p = command(drift, "list", cmd_drift_list, "recorded drift, newest first")
    p.add_argument("--limit", type=_limit, default=50, help="how many (1-500)")
    p.add_argument("--json", action="store_true")


def _duration(text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _limit(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"expected 1 to {MAX_LIMIT}, got {text!r}")
    return int(text)


def cmd_audit(args: argparse.Namespace) -> int:
    from orchestrator.maintenance.audit import run_audit, stripe_lister

    with open_orchestrator() as orch:
        since = orch.ops_store.now() - args.since
        report = run_audit(orch.ops_store, stripe_lister(orch), since, "cli")
    if args.json:
        print_json(report.to_dict())
    else:
        print(
            f"ledger audit since {since.isoformat(timespec='seconds')}: "
            f"{report.objects} provider objects, {report.jobs} jobs compared"
        )
        for f in report.findings:
            print(f"{f.kind:<30} {f.job_id or '-'} {f.provider_ref or '-'} {f.detail}")
        if report.findings:
            print(f"drift: {len(report.findings)} finding(s), {report.new} newly recorded")
        else:
            print("no drift")
    return EXIT_FAILED if report.findings else EXIT_OK


def cmd_drift_list(args: argparse.Namespace) -> int:
    with open_orchestrator() as orch:
        rows = operations(orch).drift(args.limit)["drift"]
    print_each(rows, _drift_line, as_json=args.json, json_of=lambda d: d)
    return EXIT_OK


def _drift_line(d: dict[str, Any]) -> str:
    return (
        f"{d['found_at'][:19]} {d['source']:<7} {d['kind']:<30} {d['job_id'] or '-'} "
        f"{d['provider_ref'] or '-'} {d['detail']}"
    )
