"""The shared options of every benchmark and the loop that runs the registered modules.

Exit codes follow the CLI: 0 ok, 1 a benchmark failed (one line on stderr saying why).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Protocol, cast

from orchestrator.dev.benchmarks import MODULES
from orchestrator.logs import configure_logging

EXIT_OK, EXIT_FAILED = 0, 1
# A server-level URL: each benchmark creates (and drops) its own database on that server.
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class BenchError(Exception):
    """A benchmark could not run or did not finish; the message says why, in one line."""


class BenchmarkModule(Protocol):
    def run(self, args: argparse.Namespace) -> None: ...


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every benchmark shares (``orchestrator bench`` adds the same ones)."""
    parser.add_argument(
        "--quick", action="store_true", help="a small smoke run (about a tenth of the work)"
    )
    parser.add_argument(
        "--charges",
        type=_positive_int,
        metavar="N",
        help="charges per run at 0 ms provider latency (half as many at 50 ms)",
    )
    parser.add_argument(
        "--jobs",
        type=_positive_int,
        metavar="N",
        help="burndown: jobs inserted before the workers start (default 1,000,000; "
        "--quick: 20,000)",
    )
    parser.add_argument(
        "--producers",
        type=_positive_int,
        default=1,
        help="threads enqueueing at once (1: one caller, as fast as it can)",
    )
    parser.add_argument(
        "--repeat",
        type=_positive_int,
        default=1,
        metavar="N",
        help="charges: measure N times over and end with the median ratios (a shared machine "
        "varies from run to run)",
    )
    parser.add_argument(
        "--naive-http",
        choices=("sdk", "orchestrator"),
        default="sdk",
        help="the naive baseline's HTTP client: the stripe SDK's default (sdk), or the one "
        "the orchestrator builds (orchestrator), to compare durability alone",
    )
    parser.add_argument("--processes", type=_positive_int, default=2, help="worker processes")
    parser.add_argument("--threads", type=_positive_int, default=8, help="threads per process")
    parser.add_argument(
        "--only", metavar="NAME", help="run only benchmarks whose module name contains NAME"
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE_URL),
        help="PostgreSQL server to create the throwaway bench database on "
        "(default $BENCH_DATABASE_URL or the local server)",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS_URL),
        help="Redis to use, under a namespace unique to the run (default $BENCH_REDIS_URL)",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def selected_modules(only: str | None) -> list[str]:
    names = [name for name in MODULES if not only or only in name]
    if not names:
        raise BenchError(f"no benchmark module matches {only!r}")
    return names


def run_all(args: argparse.Namespace) -> int:
    """Run the selected benchmark modules in registry order; 1 with one line if one fails."""
    # The driver's own info events (one per enqueued job) would drown the figures.
    configure_logging("auto", "warning")
    try:
        for name in selected_modules(args.only):
            module = cast(BenchmarkModule, importlib.import_module(name))
            module.run(args)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench", description="Run the orchestrator's benchmarks and print their figures."
    )
    add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_all(build_parser().parse_args(argv))
