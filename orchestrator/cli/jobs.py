"""``orchestrator charge|send|refund`` (enqueue) and ``orchestrator jobs list|show`` (inspect)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from orchestrator.cli.common import (
    EXIT_OK,
    Commands,
    UsageError,
    add_filters,
    add_paging,
    command,
    group,
    job_filter,
    open_orchestrator,
    operations,
    print_job_detail,
    print_json,
    print_page,
)


def register(commands: Commands) -> None:
    p = command(commands, "charge", cmd_charge, "enqueue a charge")
    p.add_argument("--amount", type=int, required=True, help="minor units, e.g. 1000 = $10.00")
    p.add_argument("--currency", required=True)
    p.add_argument("--customer")
    p.add_argument("--payment-method", required=True)
    p.add_argument("--idempotency-key", required=True)
    p.add_argument("--description")
    p.add_argument("--metadata", action="append", metavar="KEY=VALUE")
    p.add_argument("--json", action="store_true")

    p = command(commands, "send", cmd_send, "enqueue an email (a body or a SendGrid template)")
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

    p = command(commands, "refund", cmd_refund, "enqueue a refund of a succeeded charge")
    p.add_argument("charge_job_id")
    p.add_argument("--amount", type=int, help="minor units; default: all that remains")
    p.add_argument("--idempotency-key", required=True)
    p.add_argument("--json", action="store_true")

    jobs = group(commands, "jobs", "inspect jobs")
    p = command(jobs, "show", cmd_jobs_show, "one job: attempts, transitions, operator actions")
    p.add_argument("job_id")
    p.add_argument("--json", action="store_true")
    p = command(jobs, "list", cmd_jobs_list, "jobs, newest first, filtered and paged")
    p.add_argument("--state")
    add_filters(p)
    add_paging(p)


# -- enqueueing ----------------------------------------------------------------------------


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
    with open_orchestrator() as orch:
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
        print_json(job.to_dict())
    else:
        print(f"{job.id} {job.state} {job.amount} {job.currency}")
    return EXIT_OK


def cmd_send(args: argparse.Namespace) -> int:
    try:
        template_data = json.loads(args.template_data) if args.template_data else None
    except ValueError:
        raise UsageError("--template-data must be a JSON object") from None
    with open_orchestrator() as orch:
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
        print_json(job.to_dict())
    else:
        print(f"{job.id} {job.state} email to {', '.join(job.params['to'])}")
    return EXIT_OK


def cmd_refund(args: argparse.Namespace) -> int:
    with open_orchestrator() as orch:
        job = orch.refund(args.charge_job_id, args.amount, idempotency_key=args.idempotency_key)
    if args.json:
        print_json(job.to_dict())
    else:
        print(f"{job.id} {job.state} refund {job.amount} {job.currency} of {job.parent_job_id}")
    return EXIT_OK


# -- inspecting ----------------------------------------------------------------------------


def cmd_jobs_list(args: argparse.Namespace) -> int:
    with open_orchestrator() as orch:
        page = operations(orch).list_jobs(
            job_filter(args, with_state=True), limit=args.limit, cursor=args.cursor
        )
    print_page(page, as_json=args.json)
    return EXIT_OK


def cmd_jobs_show(args: argparse.Namespace) -> int:
    with open_orchestrator() as orch:
        detail = operations(orch).show(args.job_id)
    print_job_detail(detail, as_json=args.json)
    return EXIT_OK
