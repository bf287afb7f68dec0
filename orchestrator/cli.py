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

from orchestrator import ops_cli
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


def cmd_send(args: argparse.Namespace) -> int:
    try:
        template_data = json.loads(args.template_data) if args.template_data else None
    except ValueError:
        raise UsageError("--template-data must be a JSON object") from None
    with _orchestrator() as orch:
        job = orch.send_email(
            args.to,
            args.subject,
            args.body,
            args.template,
            idempotency_key=args.idempotency_key,
            from_email=args.from_email,
            template_data=template_data,
            at_least_once=args.at_least_once,
        )
    if args.json:
        _print_json(job.to_dict())
    else:
        print(f"{job.id} {job.state} email to {', '.join(job.params['to'])}")
    return EXIT_OK


def cmd_refund(args: argparse.Namespace) -> int:
    with _orchestrator() as orch:
        job = orch.refund(args.charge_job_id, args.amount, idempotency_key=args.idempotency_key)
    if args.json:
        _print_json(job.to_dict())
    else:
        print(f"{job.id} {job.state} refund {job.amount} {job.currency} of {job.parent_job_id}")
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


def cmd_reconcile(args: argparse.Namespace) -> int:
    from orchestrator.clock import Clock

    if not args.once:
        raise UsageError("reconcile runs one pass: pass --once (the clock process loops)")
    with _orchestrator() as orch:
        report = Clock(orch).run_once(dry_run=args.dry_run)
    if args.json:
        _print_json({"dry_run": report.dry_run, **report.counts})
        return EXIT_OK
    verb = "would act on" if report.dry_run else "acted on"
    for name, count in report.counts.items():
        print(f"{name:<24} {verb} {count}")
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


def cmd_dev(args: argparse.Namespace) -> int:
    from orchestrator import devstack

    return devstack.run_dev(devstack.state_dir())


def cmd_demo(args: argparse.Namespace) -> int:
    from rich.console import Console

    from orchestrator import demo, devstack

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
        _print_json(summary.to_dict())
    else:
        demo.render_summary(summary, Console())
        if started:
            print("(the demo's stack is stopped: `orchestrator dev` keeps one up, data kept)")
    return EXIT_OK if summary.ok else EXIT_FAILED


def cmd_bench(args: argparse.Namespace) -> int:
    from orchestrator.benchmarks.runner import run_all

    return run_all(args)


def cmd_events_list(args: argparse.Namespace) -> int:
    from orchestrator import webhooks

    with _orchestrator() as orch:
        events = webhooks.list_events(
            orch, status=args.status, event_type=args.type, job_id=args.job, limit=args.limit
        )
    if args.json:
        _print_json([e.to_dict() for e in events])
        return EXIT_OK
    for e in events:
        print(
            f"{e.id:<8} {e.received_at:%Y-%m-%d %H:%M:%S} {e.status:<9} {e.type:<32} "
            f"{e.event_id} {e.job_id or '-'} {e.note or ''}"
        )
    return EXIT_OK


def cmd_events_show(args: argparse.Namespace) -> int:
    from orchestrator import webhooks
    from orchestrator.logs import redact

    with _orchestrator() as orch:
        event = webhooks.get_event(orch, args.event)
    # The payload is the provider's; scrub anything secret- or card-shaped before showing it.
    shown = redact(None, "", event.to_dict())
    if args.json:
        _print_json(shown)
        return EXIT_OK
    print(f"event {event.id} {event.event_id}  {event.type}  status={event.status}")
    print(
        f"  object={event.object_id or '-'}  job={event.job_id or '-'}  attempts={event.attempts}"
    )
    processed = f"{event.processed_at:%Y-%m-%d %H:%M:%S}" if event.processed_at else "-"
    print(f"  received {event.received_at:%Y-%m-%d %H:%M:%S}  processed {processed}")
    if event.note:
        print(f"  note: {event.note}")
    if event.last_error:
        print(f"  last error: {event.last_error}")
    print(json.dumps(shown["payload"], indent=2, default=str))
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

    p = add("send", cmd_send, "enqueue an email (a body or a SendGrid template)")
    p.add_argument("--to", action="append", required=True, metavar="ADDRESS")
    p.add_argument("--subject")
    content = p.add_mutually_exclusive_group(required=True)
    content.add_argument("--body")
    content.add_argument("--template", metavar="TEMPLATE_ID")
    p.add_argument("--template-data", metavar="JSON")
    p.add_argument("--from", dest="from_email", help="default: ORCHESTRATOR_EMAIL_FROM")
    p.add_argument("--at-least-once", action="store_true", help="retry even if maybe delivered")
    p.add_argument("--idempotency-key", required=True)
    p.add_argument("--json", action="store_true")

    p = add("refund", cmd_refund, "enqueue a refund of a succeeded charge")
    p.add_argument("charge_job_id")
    p.add_argument("--amount", type=int, help="minor units; default: all that remains")
    p.add_argument("--idempotency-key", required=True)
    p.add_argument("--json", action="store_true")

    jobs = add("jobs", lambda a: EXIT_USAGE, "inspect jobs")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True, parser_class=_Parser)
    p = add("show", cmd_jobs_show, "one job with its attempts and transitions", jobs_sub)
    p.add_argument("job_id")
    p.add_argument("--json", action="store_true")
    ops_cli.add_jobs_list(jobs_sub, add)
    ops_cli.add_dlq(sub, add, _Parser)

    events = add("events", lambda a: EXIT_USAGE, "inspect received provider webhook events")
    events_sub = events.add_subparsers(dest="events_command", required=True, parser_class=_Parser)
    p = add("list", cmd_events_list, "events, newest first (no payloads)", events_sub)
    p.add_argument("--status", choices=["received", "processed", "ignored", "failed"])
    p.add_argument("--type", help="e.g. payment_intent.succeeded")
    p.add_argument("--job", help="only events resolved to this job id")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    p = add("show", cmd_events_show, "one event with its payload", events_sub)
    p.add_argument("event", help="row id or provider event id (evt_...)")
    p.add_argument("--json", action="store_true")

    p = add("reconcile", cmd_reconcile, "one clock pass: lease expiry, dispatch sweep, retention")
    p.add_argument("--once", action="store_true")
    p.add_argument(
        "--dry-run", action="store_true", help="count what a pass would do; change nothing"
    )
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

    add("dev", cmd_dev, "run the whole stack locally (embedded PostgreSQL/Redis if unset)")
    p = add("demo", cmd_demo, "enqueue charges and sends under faults; show progress, summary")
    p.add_argument("--charges", type=int, default=500)
    p.add_argument("--sends", type=int, default=100)
    p.add_argument("--seed", type=int, default=42, help="payment-method mix and amounts")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for settling")
    p.add_argument("--outage", type=float, default=2.0, help="Stripe outage seconds (0: none)")
    p.add_argument("--json", action="store_true", help="summary as JSON on stdout")

    from orchestrator.benchmarks.runner import add_arguments as add_bench_arguments

    p = add("bench", cmd_bench, "run the benchmarks (what scripts/bench runs)")
    add_bench_arguments(p)

    from orchestrator.breaker_cli import add_commands as add_breaker_commands

    add_breaker_commands(add)
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
