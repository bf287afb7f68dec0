"""The ``orchestrator`` command.

Exit codes: 0 ok, 1 the operation failed, 2 usage or configuration error. Errors are one line
on stderr naming the problem; listings accept ``--json``.

Each command group lives in its own module (``jobs``, ``dlq``, ``events``, ``processes``,
``dev``, ``breaker``, ``status``, ``audit``), all built on :mod:`orchestrator.cli.common`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from orchestrator import __version__
from orchestrator.cli import audit, breaker, dev, dlq, events, jobs, processes, status
from orchestrator.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Parser, UsageError
from orchestrator.errors import (
    ConfigError,
    IdempotencyConflict,
    JobNotFound,
    OrchestratorError,
    ValidationError,
)
from orchestrator.logs import configure_logging


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="orchestrator", description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    processes.register_migrate(commands)
    jobs.register(commands)
    dlq.register(commands)
    events.register(commands)
    processes.register(commands)
    dev.register(commands)
    breaker.register(commands)
    status.register(commands)
    audit.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command not in {"simulator"}:
            _configure_logging_from_env()
        code: int = args.handler(args)
        return code
    except UsageError as exc:
        print(f"orchestrator: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ConfigError, ValidationError, IdempotencyConflict) as exc:
        print(f"orchestrator: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except JobNotFound as exc:
        print(f"orchestrator: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OrchestratorError as exc:
        print(f"orchestrator: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_OK


def _configure_logging_from_env() -> None:
    fmt = os.environ.get("ORCHESTRATOR_LOG_FORMAT", "auto")
    level = os.environ.get("ORCHESTRATOR_LOG_LEVEL", "info")
    configure_logging(
        fmt if fmt in {"auto", "json", "console"} else "auto",
        level if level in {"debug", "info", "warning", "error"} else "info",
    )
