"""``orchestrator dlq list|show|replay|discard``: the dead-letter queue (jobs in state dead).

Operator identity (audited with every action) is ``cli:<--actor>``, defaulting to
``$ORCHESTRATOR_OPERATOR`` or the OS user.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from typing import Any

from orchestrator.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    Commands,
    add_filters,
    add_paging,
    add_show_job,
    command,
    group,
    job_filter,
    list_jobs,
    open_orchestrator,
    operations,
    print_each,
    print_json,
)
from orchestrator.errors import ValidationError
from orchestrator.models import Job
from orchestrator.ops.filters import JobFilter
from orchestrator.ops.replay import ReplayAction, ReplayResult


def register(commands: Commands) -> None:
    dlq = group(commands, "dlq", "the dead-letter queue (jobs in state dead)")

    p = command(dlq, "list", cmd_dlq_list, "dead jobs, newest first")
    add_filters(p)
    add_paging(p)
    p.add_argument(
        "--broker",
        action="store_true",
        help="messages dramatiq dead-lettered on the broker (Redis or RabbitMQ), as the clock "
        "copied them to PostgreSQL",
    )

    add_show_job(dlq)

    p = command(dlq, "replay", cmd_dlq_replay, "replay dead jobs by id or by filter")
    p.add_argument("job_ids", nargs="*", metavar="JOB_ID", help="explicit ids: no prompt")
    add_filters(p)
    p.add_argument("--limit", type=int, help="replay at most this many (filter mode)")
    p.add_argument("--rate", type=parse_rate, help="at most N/s (default 10/s)")
    p.add_argument("--dry-run", action="store_true", help="list what would be replayed")
    p.add_argument(
        "--accept-duplicate-risk",
        action="store_true",
        help="also replay sends whose outcome was ambiguous (they may have been delivered: "
        "the recipient may get them twice); audited",
    )
    p.add_argument("--yes", action="store_true", help="skip the confirmation prompt")
    p.add_argument("--reason", help="recorded in the audit log")
    p.add_argument("--actor", default=default_actor(), help="who is acting (audited)")
    p.add_argument("--json", action="store_true")

    p = command(dlq, "discard", cmd_dlq_discard, "give up on dead jobs (dead -> cancelled)")
    p.add_argument("job_ids", nargs="+", metavar="JOB_ID")
    p.add_argument("--reason", required=True, help="why (required, audited)")
    p.add_argument("--actor", default=default_actor(), help="who is acting (audited)")
    p.add_argument(
        "--force",
        action="store_true",
        help="discard even a charge or refund the provider holds a success or pending object "
        "for (audited with what it held)",
    )
    p.add_argument("--json", action="store_true")


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


# -- commands ------------------------------------------------------------------------------


def cmd_dlq_list(args: argparse.Namespace) -> int:
    from orchestrator.brokers import BrokerUnavailable
    from orchestrator.maintenance.deadletters import (
        broker_dead_letters_waiting,
        recent_dead_letters,
    )

    if not args.broker:
        return list_jobs(args, dead=True)
    with open_orchestrator() as orch:
        letters = recent_dead_letters(orch, args.limit)
        try:
            waiting: int | None = broker_dead_letters_waiting(orch.settings)
        except BrokerUnavailable:
            waiting = None
    print_each(letters, _letter_line, as_json=args.json, json_of=dict)
    if not args.json:  # stderr: the listing itself stays one letter per line
        if waiting is None:
            print(
                "orchestrator: the broker did not answer: letters not copied yet are not counted",
                file=sys.stderr,
            )
        elif waiting:
            print(
                f"orchestrator: {waiting} more in the broker's dead-letter queue, not copied "
                "yet (the clock's next pass copies them)",
                file=sys.stderr,
            )
    return EXIT_OK


def _letter_line(x: dict[str, Any]) -> str:
    return (
        f"{x['dead_lettered_at']}  job={x['job_id'] or '-'}  state then={x['job_state'] or '-'}"
        f"  action={x['action']}  message={x['message_id']}"
    )


def cmd_dlq_replay(args: argparse.Namespace) -> int:
    has_filter = any([args.kind, args.provider, args.error_code, args.since, args.until])
    if args.job_ids and has_filter:
        raise ValidationError("give job ids or a filter (--provider, --error-code, ...), not both")
    actor = f"cli:{args.actor}"
    if args.limit is not None and args.limit < 1:
        raise ValidationError("--limit must be at least 1")
    with open_orchestrator() as orch:
        ops = operations(orch)
        if args.job_ids:
            results = [
                ops.replay(
                    job_id,
                    actor,
                    reason=args.reason,
                    accept_duplicate_risk=args.accept_duplicate_risk,
                )
                for job_id in args.job_ids
            ]
            return _report(args, results)
        flt = job_filter(args)
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
            accept_duplicate_risk=args.accept_duplicate_risk,
        )
    if args.json:
        print_json(report.to_dict())
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


def _result_line(r: ReplayResult) -> str:
    return f"{r.job_id}  {r.action:<6} g{r.key_generation}  {r.state:<9} {r.reason}"


def _print_result(r: ReplayResult) -> None:
    print(_result_line(r))


def _report(args: argparse.Namespace, results: list[ReplayResult]) -> int:
    print_each(results, _result_line, as_json=args.json, json_of=ReplayResult.to_dict)
    skipped = any(r.action is ReplayAction.SKIP for r in results)
    return EXIT_FAILED if skipped else EXIT_OK


def cmd_dlq_discard(args: argparse.Namespace) -> int:
    with open_orchestrator() as orch:
        ops = operations(orch)
        jobs = [
            ops.discard(job_id, f"cli:{args.actor}", args.reason, force=args.force)
            for job_id in args.job_ids
        ]
    print_each(jobs, lambda j: f"{j.id}  {j.state}", as_json=args.json, json_of=Job.to_dict)
    return EXIT_OK
