"""``orchestrator events list|show``: the provider webhook events received."""

from __future__ import annotations

import argparse
import json

from orchestrator.cli.common import (
    EXIT_OK,
    Commands,
    command,
    group,
    open_orchestrator,
    print_each,
    print_json,
)
from orchestrator.models import WebhookEvent


def register(commands: Commands) -> None:
    events = group(commands, "events", "inspect received provider webhook events")
    p = command(events, "list", cmd_events_list, "events, newest first (no payloads)")
    p.add_argument("--status", choices=["received", "processed", "ignored", "failed"])
    p.add_argument("--type", help="e.g. payment_intent.succeeded")
    p.add_argument("--job", help="only events resolved to this job id")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    p = command(events, "show", cmd_events_show, "one event with its payload")
    p.add_argument("event", help="row id or provider event id (evt_...)")
    p.add_argument("--provider", help="whose event id it is (default: any provider's)")
    p.add_argument("--json", action="store_true")


def cmd_events_list(args: argparse.Namespace) -> int:
    from orchestrator.webhooks import listing

    with open_orchestrator() as orch:
        events = listing.list_events(
            orch, status=args.status, event_type=args.type, job_id=args.job, limit=args.limit
        )
    print_each(events, _event_line, as_json=args.json, json_of=WebhookEvent.to_dict)
    return EXIT_OK


def _event_line(e: WebhookEvent) -> str:
    return (
        f"{e.id:<8} {e.received_at:%Y-%m-%d %H:%M:%S} {e.status:<9} {e.type:<32} "
        f"{e.event_id} {e.job_id or '-'} {e.note or ''}"
    )


def cmd_events_show(args: argparse.Namespace) -> int:
    from orchestrator.logs import redact
    from orchestrator.webhooks import listing

    with open_orchestrator() as orch:
        event = listing.get_event(orch, args.event, provider=args.provider)
    # The payload is the provider's; scrub anything secret- or card-shaped before showing it.
    shown = redact(None, "", event.to_dict())
    if args.json:
        print_json(shown)
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
