"""``orchestrator jobs list`` and ``orchestrator dlq list|show|replay|discard``.

Registered by :func:`orchestrator.cli.build_parser`. Operator identity (audited with every
action) is ``cli:<--actor>``, defaulting to ``$ORCHESTRATOR_OPERATOR`` or the OS user.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from orchestrator.errors import ValidationError
from orchestrator.operations import (
    JobFilter,
    Operations,
    ReplayAction,
    ReplayResult,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
Add = Callable[..., argparse.ArgumentParser]


def _print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def _ops() -> tuple[Any, Operations]:
    from orchestrator.api import Orchestrator

    orch = Orchestrator.from_env()
    return orch, Operations(orch)


def default_actor() -> str:
    name = os.environ.get("ORCHESTRATOR_OPERATOR") or ""
    if not name:
        try:
            name = getpass.getuser()
        except (KeyError, OSError):
            name = "unknown"
    return name


def parse_rate(value: str) -> float:
    """``10``, ``10/s`` or ``600/min``: replays per second."""
    number, _, unit = value.strip().partition("/")
    per = {"": 1.0, "s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0}.get(unit.strip())
    try:
        amount = float(number)
    except ValueError:
        amount = -1.0
    if per is None or amount <= 0:
        raise argparse.ArgumentTypeError(f"rate must look like 10/s or 600/min, got {value!r}")
    return amount / per


def _filter(args: argparse.Namespace, *, with_state: bool = False) -> JobFilter:
    return JobFilter.parse(
        state=getattr(args, "state", None) if with_state else None,
        kind=args.kind,
        provider=args.provider,
        error_code=args.error_code,
        created_after=args.since,
        created_before=args.until,
    )


def _job_line(j: Any) -> str:
    amount = f"{j.amount} {j.currency}" if j.amount is not None else "-"
    created = f"{j.created_at:%Y-%m-%d %H:%M:%S}"
    return (
        f"{j.id}  {j.kind:<6} {j.provider:<8} {j.state:<10} {j.attempts}/{j.max_attempts} "
        f"{amount:<12} {created} {j.last_error_code or '-'} {j.dead_reason or ''}"
    ).rstrip()


def _print_page(args: argparse.Namespace, page: Any) -> None:
    if args.json:
        _print_json(page.to_dict())
        return
    for job in page.jobs:
        print(_job_line(job))
    if page.next_cursor:
        print(f"more: --cursor {page.next_cursor}", file=sys.stderr)


# -- commands ------------------------------------------------------------------------------


def cmd_jobs_list(args: argparse.Namespace) -> int:
    orch, ops = _ops()
    with orch:
        page = ops.list_jobs(_filter(args, with_state=True), limit=args.limit, cursor=args.cursor)
    _print_page(args, page)
    return EXIT_OK


def cmd_dlq_list(args: argparse.Namespace) -> int:
    from orchestrator.deadletters import recent_dead_letters

    orch, ops = _ops()
    with orch:
        if args.broker:
            letters = recent_dead_letters(orch, args.limit)
        else:
            page = ops.list_dead(_filter(args), limit=args.limit, cursor=args.cursor)
    if not args.broker:
        _print_page(args, page)
        return EXIT_OK
    if args.json:
        _print_json(letters)
        return EXIT_OK
    for x in letters:
        print(
            f"{x['dead_lettered_at']}  job={x['job_id'] or '-'}  state then={x['job_state'] or '-'}"
            f"  action={x['action']}  message={x['message_id']}"
        )
    return EXIT_OK


def cmd_dlq_show(args: argparse.Namespace) -> int:
    orch, ops = _ops()
    with orch:
        detail = ops.show(args.job_id)
    if args.json:
        _print_json(detail.to_dict())
        return EXIT_OK
    job = detail.job
    print(_job_line(job))
    print(f"  key={job.idempotency_key}  generation={job.key_generation}")
    if job.last_error:
        print(f"  last error: {job.last_error}")
    for a in detail.attempts:
        print(
            f"  attempt {a.attempt} g{a.key_generation} {a.outcome} {a.error_code or ''} "
            f"{a.http_status or ''} {a.duration_ms}ms"
        )
    for t in detail.transitions:
        print(f"  {t.at:%Y-%m-%d %H:%M:%S} {t.from_state or '-'} -> {t.to_state} by {t.changed_by}")
    for x in detail.actions:
        print(f"  {x['at']} {x['action']} by {x['actor']}: {x['reason'] or ''}")
    return EXIT_OK


def cmd_dlq_replay(args: argparse.Namespace) -> int:
    has_filter = any([args.kind, args.provider, args.error_code, args.since, args.until])
    if args.job_ids and has_filter:
        raise ValidationError("give job ids or a filter (--provider, --error-code, ...), not both")
    actor = f"cli:{args.actor}"
    if args.limit is not None and args.limit < 1:
        raise ValidationError("--limit must be at least 1")
    orch, ops = _ops()
    with orch:
        if args.job_ids:
            results = [ops.replay(job_id, actor, reason=args.reason) for job_id in args.job_ids]
            return _report(args, results)
        flt = _filter(args)
        if not args.dry_run and not args.yes and not _confirm(ops.count_dead(flt), flt, args):
            print("orchestrator: aborted, nothing replayed", file=sys.stderr)
            return EXIT_FAILED
        report = ops.replay_matching(
            flt,
            actor,
            rate_per_s=args.rate,
            dry_run=args.dry_run,
            limit=args.limit,
            reason=args.reason,
            on_result=None if args.json else _print_result,
        )
    if args.json:
        _print_json(report.to_dict())
    else:
        counts = report.counts()
        verb = "dry run:" if report.dry_run else "done:"
        print(f"{verb} " + "  ".join(f"{k}={v}" for k, v in counts.items()))
    skipped = report.counts()[str(ReplayAction.SKIP)]
    return EXIT_OK if report.dry_run or skipped == 0 else EXIT_FAILED


def _confirm(count: int, flt: JobFilter, args: argparse.Namespace) -> bool:
    described = ", ".join(f"{k}={v}" for k, v in flt.describe().items()) or "no filter"
    limited = f" (at most {args.limit})" if args.limit else ""
    rate = f"{args.rate:g}/s" if args.rate else "the default rate"
    sys.stderr.write(f"Replay {count} dead job(s) matching {described}{limited} at {rate}? [y/N] ")
    sys.stderr.flush()
    answer = sys.stdin.readline().strip().lower()
    return answer in {"y", "yes"}


def _print_result(r: ReplayResult) -> None:
    print(f"{r.job_id}  {r.action:<6} g{r.key_generation}  {r.state:<9} {r.reason}")


def _report(args: argparse.Namespace, results: list[ReplayResult]) -> int:
    if args.json:
        _print_json([r.to_dict() for r in results])
    else:
        for r in results:
            _print_result(r)
    skipped = any(r.action is ReplayAction.SKIP for r in results)
    return EXIT_FAILED if skipped else EXIT_OK


def cmd_dlq_discard(args: argparse.Namespace) -> int:
    orch, ops = _ops()
    with orch:
        jobs = [ops.discard(job_id, f"cli:{args.actor}", args.reason) for job_id in args.job_ids]
    if args.json:
        _print_json([j.to_dict() for j in jobs])
    else:
        for j in jobs:
            print(f"{j.id}  {j.state}")
    return EXIT_OK


# -- parser --------------------------------------------------------------------------------


def _filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", help="charge, refund or email")
    p.add_argument("--provider", help="e.g. stripe")
    p.add_argument("--error-code", help="the job's last error code, e.g. rate_limit")
    p.add_argument("--since", help="created at or after (ISO 8601 with zone)")
    p.add_argument("--until", help="created before (ISO 8601 with zone)")


def _paging(p: argparse.ArgumentParser) -> None:
    p.add_argument("--limit", type=int, default=50, help="page size (1-500)")
    p.add_argument("--cursor", help="the 'more:' cursor printed by the previous page")
    p.add_argument("--json", action="store_true")


def add_jobs_list(jobs_sub: Any, add: Add) -> None:
    p = add("list", cmd_jobs_list, "jobs, newest first, filtered and paged", jobs_sub)
    p.add_argument("--state")
    _filters(p)
    _paging(p)


def add_dlq(sub: Any, add: Add, parser_class: type[argparse.ArgumentParser]) -> None:
    dlq = add("dlq", lambda a: EXIT_USAGE, "the dead-letter queue (jobs in state dead)")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True, parser_class=parser_class)

    p = add("list", cmd_dlq_list, "dead jobs, newest first", dlq_sub)
    _filters(p)
    _paging(p)
    p.add_argument(
        "--broker", action="store_true", help="messages dramatiq dead-lettered (from Redis)"
    )

    p = add("show", cmd_dlq_show, "one job: attempts, transitions, operator actions", dlq_sub)
    p.add_argument("job_id")
    p.add_argument("--json", action="store_true")

    p = add("replay", cmd_dlq_replay, "replay dead jobs by id or by filter", dlq_sub)
    p.add_argument("job_ids", nargs="*", metavar="JOB_ID", help="explicit ids: no prompt")
    _filters(p)
    p.add_argument("--limit", type=int, help="replay at most this many (filter mode)")
    p.add_argument("--rate", type=parse_rate, help="at most N/s (default 10/s)")
    p.add_argument("--dry-run", action="store_true", help="list what would be replayed")
    p.add_argument("--yes", action="store_true", help="skip the confirmation prompt")
    p.add_argument("--reason", help="recorded in the audit log")
    p.add_argument("--actor", default=default_actor(), help="who is acting (audited)")
    p.add_argument("--json", action="store_true")

    p = add("discard", cmd_dlq_discard, "give up on dead jobs (dead -> cancelled)", dlq_sub)
    p.add_argument("job_ids", nargs="+", metavar="JOB_ID")
    p.add_argument("--reason", required=True, help="why (required, audited)")
    p.add_argument("--actor", default=default_actor(), help="who is acting (audited)")
    p.add_argument("--json", action="store_true")
