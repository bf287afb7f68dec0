"""What every command group shares: exit codes, usage errors, the parser and its commands,
opening the Orchestrator, and printing (JSON, job lines, the one job-detail view).

Command modules import from here; :mod:`orchestrator.cli.main` imports the command modules.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, NoReturn, TypeAlias, TypeVar

from orchestrator.ops.filters import JobFilter

if TYPE_CHECKING:
    from orchestrator.api import Orchestrator
    from orchestrator.models import Job
    from orchestrator.ops.filters import Page
    from orchestrator.ops.service import JobDetail, Operations

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
T = TypeVar("T")

Handler = Callable[[argparse.Namespace], int]
# What build_parser hands each command module: the subparsers to add commands to.
Commands: TypeAlias = "argparse._SubParsersAction[Parser]"


class UsageError(Exception):
    """Bad usage found after parsing: one line on stderr, exit 2."""


class Parser(argparse.ArgumentParser):
    """Parse errors become :class:`UsageError` (one line, exit 2), not argparse's own exit."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def command(commands: Commands, name: str, handler: Handler, help_: str) -> argparse.ArgumentParser:
    """Declare ``name``, run by ``handler``; returns its parser for the arguments."""
    p = commands.add_parser(name, help=help_)
    p.set_defaults(handler=handler)
    return p


def group(commands: Commands, name: str, help_: str) -> Commands:
    """Declare a command group (``orchestrator NAME SUBCOMMAND``); returns its subcommands."""
    p = command(commands, name, lambda args: EXIT_USAGE, help_)
    return p.add_subparsers(dest=f"{name}_command", required=True, parser_class=Parser)


# -- the application -----------------------------------------------------------------------


def open_orchestrator() -> Orchestrator:
    """The Orchestrator from the environment (use as a context manager: it closes its pool)."""
    from orchestrator.api import Orchestrator

    return Orchestrator.from_env()


def operations(orch: Orchestrator) -> Operations:
    from orchestrator.ops.service import Operations

    return Operations.from_orchestrator(orch)


# -- filters and paging (jobs list, dlq list, dlq replay) ----------------------------------


def add_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", help="charge, refund or email")
    p.add_argument("--provider", help="e.g. stripe")
    p.add_argument("--error-code", help="the job's last error code, e.g. rate_limit")
    p.add_argument("--since", help="created at or after (ISO 8601 with zone)")
    p.add_argument("--until", help="created before (ISO 8601 with zone)")


def add_paging(p: argparse.ArgumentParser) -> None:
    p.add_argument("--limit", type=int, default=50, help="page size (1-500)")
    p.add_argument("--cursor", help="the 'more:' cursor printed by the previous page")
    p.add_argument("--json", action="store_true")


def job_filter(args: argparse.Namespace, *, with_state: bool = False) -> JobFilter:
    return JobFilter.parse(
        state=getattr(args, "state", None) if with_state else None,
        kind=args.kind,
        provider=args.provider,
        error_code=args.error_code,
        created_after=args.since,
        created_before=args.until,
    )


# -- the job views (jobs list|show, dlq list|show) -----------------------------------------


def list_jobs(args: argparse.Namespace, *, dead: bool) -> int:
    """``jobs list`` and ``dlq list``: one page of jobs (dead ones only with ``dead``)."""
    with open_orchestrator() as orch:
        ops = operations(orch)
        list_page = ops.list_dead if dead else ops.list_jobs
        flt = job_filter(args, with_state=not dead)
        page = list_page(flt, limit=args.limit, cursor=args.cursor)
    print_page(page, as_json=args.json)
    return EXIT_OK


def add_show_job(commands: Commands) -> None:
    """``jobs show`` and ``dlq show``: one job with its attempts, transitions, operator actions."""
    p = command(commands, "show", _cmd_show_job, "one job: attempts, transitions, operator actions")
    p.add_argument("job_id")
    p.add_argument("--json", action="store_true")


def _cmd_show_job(args: argparse.Namespace) -> int:
    with open_orchestrator() as orch:
        detail = operations(orch).show(args.job_id)
    print_job_detail(detail, as_json=args.json)
    return EXIT_OK


# -- printing ------------------------------------------------------------------------------


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def print_each(
    items: Sequence[T], line: Callable[[T], str], *, as_json: bool, json_of: Callable[[T], Any]
) -> None:
    """One line a item, or the items as one JSON list (each as ``json_of`` gives it)."""
    if as_json:
        print_json([json_of(x) for x in items])
        return
    for x in items:
        print(line(x))


def _job_line(j: Job) -> str:
    amount = f"{j.amount} {j.currency}" if j.amount is not None else "-"
    created = f"{j.created_at:%Y-%m-%d %H:%M:%S}"
    return (
        f"{j.id}  {j.kind:<6} {j.provider:<8} {j.state:<10} {j.attempts}/{j.max_attempts} "
        f"{amount:<12} {created} {j.last_error_code or '-'} {j.dead_reason or ''}"
    ).rstrip()


def print_page(page: Page, *, as_json: bool) -> None:
    """One job a line (the next page's cursor on stderr), or the page as JSON."""
    if as_json:
        print_json(page.to_dict())
        return
    for job in page.jobs:
        print(_job_line(job))
    if page.next_cursor:
        print(f"more: --cursor {page.next_cursor}", file=sys.stderr)


def print_job_detail(detail: JobDetail, *, as_json: bool) -> None:
    """``jobs show`` and ``dlq show``: the job, its attempts, transitions, operator actions."""
    if as_json:
        print_json(detail.to_dict())
        return
    job = detail.job
    print(f"job {job.id}  {job.kind} via {job.provider}  state={job.state}")
    print(
        f"  key={job.idempotency_key}  attempts={job.attempts}/{job.max_attempts}"
        f"  generation={job.key_generation}  ref={job.provider_ref or '-'}"
    )
    if job.last_error:
        print(f"  last error: {job.last_error}")
    if job.dead_reason:
        print(f"  dead reason: {job.dead_reason}")
    for a in detail.attempts:
        print(
            f"  attempt {a.attempt} {a.provider or job.provider} g{a.key_generation} {a.outcome} "
            f"{a.error_code or ''} {a.http_status or ''} {a.duration_ms}ms"
        )
    for t in detail.transitions:
        print(
            f"  {t.at:%Y-%m-%d %H:%M:%S} {t.from_state or '-'} -> {t.to_state} "
            f"by {t.changed_by}: {t.reason}"
        )
    for x in detail.actions:
        at = datetime.fromisoformat(x["at"])
        print(f"  {at:%Y-%m-%d %H:%M:%S} {x['action']} by {x['actor']}: {x['reason'] or ''}")
