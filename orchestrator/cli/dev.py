"""Local development: ``simulator`` (the fake Stripe/SendGrid), ``dev`` (the whole stack),
``demo`` and ``bench``."""

from __future__ import annotations

import argparse
import os
import sys

from orchestrator.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    Commands,
    UsageError,
    command,
    print_json,
)
from orchestrator.logs import configure_logging


def register(commands: Commands) -> None:
    p = command(
        commands, "simulator", cmd_simulator, "serve the Stripe/SendGrid-compatible simulator"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=12111)

    command(
        commands, "dev", cmd_dev, "run the whole stack locally (embedded PostgreSQL/Redis if unset)"
    )
    p = command(
        commands, "demo", cmd_demo, "enqueue charges and sends under faults; show progress, summary"
    )
    p.add_argument("--charges", type=int, default=500)
    p.add_argument("--sends", type=int, default=100)
    p.add_argument("--seed", type=int, default=42, help="payment-method mix and amounts")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for settling")
    p.add_argument("--outage", type=float, default=2.0, help="Stripe outage seconds (0: none)")
    p.add_argument("--json", action="store_true", help="summary as JSON on stdout")

    from orchestrator.dev.benchmarks.runner import add_arguments as add_bench_arguments

    p = command(commands, "bench", cmd_bench, "run the benchmarks (what scripts/bench runs)")
    add_bench_arguments(p)


def cmd_simulator(args: argparse.Namespace) -> int:
    from orchestrator.dev.simulator import serve

    serve(
        args.host,
        args.port,
        stripe_api_key=os.environ.get("STRIPE_API_KEY") or None,
        sendgrid_api_key=os.environ.get("SENDGRID_API_KEY") or None,
        razorpay_key_id=os.environ.get("RAZORPAY_KEY_ID") or None,
        razorpay_key_secret=os.environ.get("RAZORPAY_KEY_SECRET") or None,
    )
    return EXIT_OK


def cmd_dev(args: argparse.Namespace) -> int:
    from orchestrator.dev import devstack

    return devstack.run_dev(devstack.state_dir())


def cmd_demo(args: argparse.Namespace) -> int:
    from rich.console import Console

    from orchestrator.dev import demo, devstack

    if args.charges < 0 or args.sends < 0 or args.charges + args.sends == 0:
        raise UsageError("--charges and --sends must be >= 0, and not both 0")
    if "ORCHESTRATOR_LOG_LEVEL" not in os.environ:  # the progress table needs a quiet stderr
        configure_logging("auto", "warning")
    options = demo.DemoOptions(args.charges, args.sends, args.seed, args.timeout, args.outage)
    progress = Console(file=sys.stderr)
    with devstack.stack_for_demo(devstack.state_dir()) as (info, started):
        if started:
            progress.print(f"started a local stack for the demo (embedded: {info.embedded})")
        summary = demo.run(info, options, console=progress)
    if args.json:
        print_json(summary.to_dict())
    else:
        demo.render_summary(summary, Console())
        if started:
            print("(the demo's stack is stopped: `orchestrator dev` keeps one up, data kept)")
    return EXIT_OK if summary.ok else EXIT_FAILED


def cmd_bench(args: argparse.Namespace) -> int:
    from orchestrator.dev.benchmarks.runner import run_all

    return run_all(args)
