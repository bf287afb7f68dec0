"""``orchestrator charge|send|refund`` (enqueue) and ``orchestrator jobs list|show`` (inspect)."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from orchestrator.cli.common import (
    EXIT_OK,
    Commands,
    UsageError,
    add_filters,
    add_paging,
    command,
    group,
    list_jobs,
    open_orchestrator,
    operations,
    print_job_detail,
    print_json,
)

if TYPE_CHECKING:
    from orchestrator.models import Job


def register(commands: Commands) -> None:
    p = command(commands, "charge", cmd_charge, "enqueue a charge")
    p.add_argument("--amount", type=int, required=True, help="minor units, e.g. 1000 = $10.00")
    p.add_argument("--currency", required=True)
    p.add_argument("--customer")
    p.add_argument("--payment-method", required=True)
    p.add_argument("--idempotency-key", required=True)
    p.add_argument("--description")
    p.add_argument("--metadata", action="append", type=_metadata_pair, metavar="KEY=VALUE")
    p.add_argument(
        "--provider", help="a registered payment provider (default: ORCHESTRATOR_ROUTES)"
    )
    p.add_argument(
        "--provider-option",
        action="append",
        type=_metadata_pair,
        metavar="KEY=VALUE",
        help="a field the provider takes (Razorpay: email=..., contact=...)",
    )
    p.add_argument("--json", action="store_true")

    p = command(commands, "send", cmd_send, "enqueue an email (a body or a SendGrid template)")
    p.add_argument("--to", action="append", required=True, metavar="ADDRESS")
    p.add_argument("--subject")
    content = p.add_mutually_exclusive_group(required=True)
    content.add_argument("--body")
    content.add_argument("--template", metavar="TEMPLATE_ID")
    p.add_argument("--template-data", type=_template_data, metavar="JSON")
    p.add_argument("--from", dest="from_email", help="default: ORCHESTRATOR_EMAIL_FROM")
    p.add_argument("--at-least-once", action="store_true", help="retry even if maybe delivered")
    p.add_argument("--provider", help="sendgrid, ses, ... (default: ORCHESTRATOR_EMAIL_PROVIDER)")
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


# Argument types: a bad value is a usage error (exit 2) raised while the line is parsed.


def _metadata_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep:
        raise UsageError(f"expected KEY=VALUE, got {key!r}")
    return key, value


def _template_data(text: str) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        raise UsageError("--template-data must be a JSON object") from None


def cmd_charge(args: argparse.Namespace) -> int:
    with open_orchestrator() as orch:
        job = orch.charge(
            amount=args.amount,
            currency=args.currency,
            customer=args.customer,
            payment_method=args.payment_method,
            idempotency_key=args.idempotency_key,
            metadata=dict(args.metadata or []),
            description=args.description,
            provider=args.provider,
            provider_options=dict(args.provider_option) if args.provider_option else None,
        )
    return _print_enqueued(args, job, f"{job.amount} {job.currency}")


def cmd_send(args: argparse.Namespace) -> int:
    with open_orchestrator() as orch:
        job = orch.send_email(
            args.to,
            args.subject,
            args.body,
            args.template,
            idempotency_key=args.idempotency_key,
            from_email=args.from_email,
            template_data=args.template_data,
            at_least_once=args.at_least_once,
            provider=args.provider,
        )
    return _print_enqueued(args, job, f"email to {', '.join(job.params['to'])}")


def cmd_refund(args: argparse.Namespace) -> int:
    with open_orchestrator() as orch:
        job = orch.refund(args.charge_job_id, args.amount, idempotency_key=args.idempotency_key)
    return _print_enqueued(args, job, f"refund {job.amount} {job.currency} of {job.parent_job_id}")


def _print_enqueued(args: argparse.Namespace, job: Job, summary: str) -> int:
    """The job as JSON, or one line: its id, its state and ``summary``."""
    if args.json:
        print_json(job.to_dict())
    else:
        print(f"{job.id} {job.state} {summary}")
    return EXIT_OK


# -- inspecting ----------------------------------------------------------------------------


def cmd_jobs_list(args: argparse.Namespace) -> int:
    return list_jobs(args, dead=False)


def cmd_jobs_show(args: argparse.Namespace) -> int:
    """``jobs show``: as ``dlq show``, plus where an authorization stands (JSON: the job's
    ``captured``, ``captured_amount``, ``capture_before`` fields)."""
    with open_orchestrator() as orch:
        detail = operations(orch).show(args.job_id)
    print_job_detail(detail, as_json=args.json)
    line = capture_line(detail.job)
    if line and not args.json:
        print(line)
    return EXIT_OK


def capture_line(job: Job) -> str | None:
    """One line on a charge made with ``capture=False``: authorized (and until when), captured
    (how much), or voided."""
    if job.captured_amount is None:
        return None
    if job.captured_amount > 0:
        return f"  captured {job.captured_amount} of {job.amount} {job.currency} authorized"
    deadline = f"{job.capture_before:%Y-%m-%d %H:%M:%S %Z}" if job.capture_before else "-"
    if job.state != "succeeded":
        return f"  authorization of {job.amount} {job.currency} released ({job.state})"
    in_flight = f", capture of {job.capture_reserved} in flight" if job.capture_reserved else ""
    return (
        f"  authorized {job.amount} {job.currency}, not captured{in_flight}; "
        f"capture before {deadline}"
    )
