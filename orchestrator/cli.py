"""The ``orchestrator`` command.

Exit codes: 0 ok, 1 the operation failed, 2 usage or configuration error. Errors are one line
on stderr naming the problem; listings accept ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from orchestrator.config import load_settings
from orchestrator.errors import (
    ConfigError,
    IdempotencyConflict,
    JobNotFound,
    OrchestratorError,
    ValidationError,
)
from orchestrator.logs import configure_logging

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# Idle workers poll Redis this often (ms); dramatiq's default of 1000 adds up to 1 s latency.
WORKER_POLL_MS = "100"


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def _orchestrator() -> Any:
    from orchestrator.api import Orchestrator

    return Orchestrator.from_env()


# -- commands ------------------------------------------------------------------------------


def cmd_migrate(args: argparse.Namespace) -> int:
    from orchestrator.store import migrate

    settings = load_settings()
    migrate(settings.database_url)
    print("schema applied")
    return EXIT_OK


def _parse_metadata(pairs: Sequence[str]) -> dict[str, str]:
    metadata: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UsageError(f"--metadata expects KEY=VALUE, got {key!r}")
        metadata[key] = value
    return metadata


def cmd_charge(args: argparse.Namespace) -> int:
    metadata = _parse_metadata(args.metadata or [])
    with _orchestrator() as orch:
        job = orch.charge(
            args.amount,
            args.currency,
            args.customer,
            args.payment_method,
            args.idempotency_key,
            metadata,
            description=args.description,
        )
    if args.json:
        _print_json(job.to_dict())
    else:
        print(f"{job.id} {job.state} {job.amount} {job.currency}")
    return EXIT_OK


def cmd_jobs_show(args: argparse.Namespace) -> int:
    from orchestrator.models import row_to_json

    with _orchestrator() as orch:
        job = orch.job(args.job_id)
        attempts = orch.attempts(job.id)
        transitions = orch.transitions(job.id)
    if args.json:
        _print_json(
            {
                **job.to_dict(),
                "attempt_history": [row_to_json(a) for a in attempts],
                "transitions": [row_to_json(t) for t in transitions],
            }
        )
        return EXIT_OK
    print(f"job {job.id}  {job.kind} via {job.provider}  state={job.state}")
    print(
        f"  key={job.idempotency_key}  attempts={job.attempts}/{job.max_attempts}"
        f"  generation={job.key_generation}  ref={job.provider_ref or '-'}"
    )
    if job.last_error:
        print(f"  last error: {job.last_error}")
    if job.dead_reason:
        print(f"  dead reason: {job.dead_reason}")
    for a in attempts:
        print(
            f"  attempt {a.attempt} g{a.key_generation} {a.outcome} "
            f"{a.error_code or ''} {a.http_status or ''} {a.duration_ms}ms"
        )
    for t in transitions:
        print(
            f"  {t.at:%Y-%m-%d %H:%M:%S} {t.from_state or '-'} -> {t.to_state} "
            f"by {t.changed_by}: {t.reason}"
        )
    return EXIT_OK


def cmd_jobs_list(args: argparse.Namespace) -> int:
    with _orchestrator() as orch:
        jobs = orch.store.list_jobs(
            state=args.state, kind=args.kind, provider=args.provider, limit=args.limit
        )
    if args.json:
        _print_json([j.to_dict() for j in jobs])
        return EXIT_OK
    for j in jobs:
        print(
            f"{j.id}  {j.kind:<6} {j.state:<10} {j.attempts}/{j.max_attempts} "
            f"{j.amount or ''} {j.currency or ''} {j.last_error_code or ''}"
        )
    return EXIT_OK


def cmd_reconcile(args: argparse.Namespace) -> int:
    from orchestrator.clock import Clock

    if not args.once:
        raise UsageError("reconcile runs one pass: pass --once (the clock process loops)")
    with _orchestrator() as orch:
        report = Clock(orch).run_once()
    if args.json:
        _print_json({"leases_expired": report.leases_expired, "dispatched": report.dispatched})
    else:
        print(f"leases expired: {report.leases_expired}  re-dispatched: {report.dispatched}")
    return EXIT_OK


def cmd_worker(args: argparse.Namespace) -> int:
    load_settings()  # fail here, with exit 2, rather than inside every worker process
    env = {**os.environ}
    env.setdefault("dramatiq_worker_timeout", WORKER_POLL_MS)
    argv = [
        sys.executable,
        "-m",
        "dramatiq",
        "actors",
        "--processes",
        str(args.processes),
        "--threads",
        str(args.threads),
        "--skip-logging",
    ]
    os.execvpe(sys.executable, argv, env)  # noqa: S606


def cmd_clock(args: argparse.Namespace) -> int:
    from orchestrator.clock import Clock

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with _orchestrator() as orch:
        Clock(orch).run(stop)
    return EXIT_OK


def cmd_web(args: argparse.Namespace) -> int:
    import uvicorn

    from orchestrator.web import create_app

    load_settings()
    port = args.port or int(os.environ.get("PORT", "8000"))
    uvicorn.run(create_app(), host=args.host, port=port, log_config=None, access_log=False)
    return EXIT_OK


def cmd_simulator(args: argparse.Namespace) -> int:
    from orchestrator.simulator import serve

    serve(
        args.host,
        args.port,
        stripe_api_key=os.environ.get("STRIPE_API_KEY") or None,
        sendgrid_api_key=os.environ.get("SENDGRID_API_KEY") or None,
    )
    return EXIT_OK


# -- parser --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="orchestrator", description=__doc__.splitlines()[0] if __doc__ else "")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add(
        name: str, handler: Callable[[argparse.Namespace], int], help_: str, parent: Any = sub
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name, help=help_)
        p.set_defaults(handler=handler)
        return p

    add("migrate", cmd_migrate, "apply schema.sql (idempotent)")

    p = add("charge", cmd_charge, "enqueue a charge")
    p.add_argument("--amount", type=int, required=True, help="minor units, e.g. 1000 = $10.00")
    p.add_argument("--currency", required=True)
    p.add_argument("--customer")
    p.add_argument("--payment-method", required=True)
    p.add_argument("--idempotency-key", required=True)
    p.add_argument("--description")
    p.add_argument("--metadata", action="append", metavar="KEY=VALUE")
    p.add_argument("--json", action="store_true")

    jobs = add("jobs", lambda a: EXIT_USAGE, "inspect jobs")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True, parser_class=_Parser)
    p = add("show", cmd_jobs_show, "one job with its attempts and transitions", jobs_sub)
    p.add_argument("job_id")
    p.add_argument("--json", action="store_true")
    p = add("list", cmd_jobs_list, "jobs, newest first", jobs_sub)
    p.add_argument("--state")
    p.add_argument("--kind")
    p.add_argument("--provider")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")

    p = add("reconcile", cmd_reconcile, "one pass of lease expiry and the dispatch sweep")
    p.add_argument("--once", action="store_true")
    p.add_argument("--dry-run", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true")

    p = add("worker", cmd_worker, "run dramatiq workers over the actors package")
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--threads", type=int, default=8)

    add("clock", cmd_clock, "run the periodic scheduler (one active instance)")

    p = add("web", cmd_web, "serve /healthz and /metrics")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int)

    p = add("simulator", cmd_simulator, "serve the Stripe/SendGrid-compatible simulator")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=12111)
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


if __name__ == "__main__":
    sys.exit(main())
