"""The deployment's commands: ``migrate``, the long-running ``worker``, ``clock`` and ``web``
processes, and ``reconcile`` (one clock pass by hand)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from orchestrator.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    Commands,
    UsageError,
    command,
    open_orchestrator,
    print_json,
)
from orchestrator.config import load_settings
from orchestrator.secrets.tokens import setting_token

# Idle workers poll Redis this often (ms); dramatiq's default of 1000 adds up to 1 s latency.
WORKER_POLL_MS = "100"


def register_migrate(commands: Commands) -> None:
    """``migrate`` comes first in ``--help``; the rest follow the job commands."""
    p = command(commands, "migrate", cmd_migrate, "apply the pending schema migrations, in order")
    p.add_argument(
        "--check",
        action="store_true",
        help="change nothing: exit 0 when up to date, 1 listing what is pending",
    )


def register(commands: Commands) -> None:
    p = command(
        commands,
        "reconcile",
        cmd_reconcile,
        "one clock pass: lease expiry, dispatch sweep, retention",
    )
    p.add_argument("--once", action="store_true")
    p.add_argument(
        "--dry-run", action="store_true", help="count what a pass would do; change nothing"
    )
    p.add_argument("--json", action="store_true")

    p = command(commands, "worker", cmd_worker, "run dramatiq workers over the actors package")
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--threads", type=int, default=8)

    command(commands, "clock", cmd_clock, "run the periodic scheduler (one active instance)")

    p = command(
        commands,
        "web",
        cmd_web,
        "serve webhooks, /healthz, /readyz, /metrics (or on ORCHESTRATOR_METRICS_BIND) and /ops/",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int)


def cmd_migrate(args: argparse.Namespace) -> int:
    from orchestrator.db.pool import migrate, pending_migrations

    settings = load_settings()
    if args.check:
        pending = pending_migrations(settings.database_url)
        for m in pending:
            print(f"pending: {m.version:04d} {m.name}")
        if not pending:
            print("schema up to date")
        return EXIT_FAILED if pending else EXIT_OK
    applied = migrate(settings.database_url)
    for m in applied:
        print(f"applied: {m.version:04d} {m.name}")
    print("schema up to date" if applied else "schema up to date (nothing to apply)")
    return EXIT_OK


def cmd_reconcile(args: argparse.Namespace) -> int:
    from orchestrator.maintenance.clock import Clock

    if not args.once:
        raise UsageError("reconcile runs one pass: pass --once (the clock process loops)")
    with open_orchestrator() as orch:
        report = Clock(orch).run_once(dry_run=args.dry_run)
    if args.json:
        print_json({"dry_run": report.dry_run, **report.counts})
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
    from orchestrator.maintenance.clock import Clock

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with open_orchestrator() as orch:
        Clock(orch).run(stop)
    return EXIT_OK


def cmd_web(args: argparse.Namespace) -> int:
    import uvicorn

    from orchestrator.ops.metrics import serve_metrics
    from orchestrator.web import create_app

    settings = load_settings()
    port = args.port or int(os.environ.get("PORT", "8000"))
    app = create_app()
    metrics_server = None
    if settings.metrics_bind_address is not None:
        # /metrics only on its own listener (the app's own /metrics answers 404), same registry
        # and, when set, the same ORCHESTRATOR_METRICS_TOKEN.
        host, metrics_port = settings.metrics_bind_address
        token = setting_token(settings, "metrics_token")
        metrics_server = serve_metrics(app.state.metrics_registry, host, metrics_port, token)
    try:
        # Forwarded headers are believed only from ORCHESTRATOR_TRUSTED_PROXIES, by the ops
        # routes themselves: uvicorn's own rule (trust loopback) is switched off.
        uvicorn.run(
            app,
            host=args.host,
            port=port,
            log_config=None,
            access_log=False,
            proxy_headers=False,
        )
    finally:
        if metrics_server is not None:
            metrics_server.stop()
    return EXIT_OK
