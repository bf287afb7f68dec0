"""``orchestrator breaker status|open|close``: read and override the shared breakers.

An override is recorded twice: with who, why and when in the breaker's Redis hash (what
``status`` shows) and as an ``operator_actions`` row in PostgreSQL (the audit trail, which
outlives Redis). The row is written first, in a transaction committed only once Redis has
applied the override, so the audit never claims an action that did not happen.
"""

from __future__ import annotations

import argparse
import getpass

import redis

from orchestrator.breaker import BreakerConfig, BreakerStatus, RedisBreaker
from orchestrator.breaker import redis_client as make_redis_client
from orchestrator.cli.common import EXIT_OK, Commands, UsageError, command, group, print_json
from orchestrator.config import Settings, load_settings
from orchestrator.db.ops import audited
from orchestrator.errors import OrchestratorError
from orchestrator.providers.registry import provider_names

# The CLI talks to Redis once per command: a generous timeout (s) beats a false "unreachable".
CLI_REDIS_TIMEOUT_S = 2.0


def register(commands: Commands) -> None:
    breaker = group(commands, "breaker", "inspect and override the per-provider breakers")
    p = command(breaker, "status", cmd_status, "state, counts, opened at, next probe")
    p.add_argument("--json", action="store_true")
    for action, help_ in (
        ("open", "hold a breaker open (no calls, no probes) until closed"),
        ("close", "close a breaker: counts and cooldown reset, any hold released"),
    ):
        p = command(breaker, action, cmd_override, help_)
        p.add_argument("provider", choices=provider_names())
        p.add_argument("--reason", required=True, help="why (recorded with your name)")
        p.add_argument("--actor", help="who (default: cli:<login name>)")
        p.set_defaults(action=action)


def _breaker(settings: Settings) -> RedisBreaker:
    client = make_redis_client(settings.redis_url, CLI_REDIS_TIMEOUT_S)
    return RedisBreaker(client, BreakerConfig.from_settings(settings), settings.redis_namespace)


def _unreachable(exc: redis.RedisError) -> OrchestratorError:
    """The one place this module translates redis-py's exceptions (never echoing the URL)."""
    return OrchestratorError(f"Redis (REDIS_URL) is unreachable: {type(exc).__name__}")


def cmd_status(args: argparse.Namespace) -> int:
    settings = load_settings()
    breaker = _breaker(settings)
    try:
        statuses = [breaker.status(p) for p in provider_names()]
    except redis.RedisError as exc:
        raise _unreachable(exc) from exc
    if args.json:
        print_json([s.to_dict() for s in statuses])
        return EXIT_OK
    for status in statuses:
        print(_line(status))
    return EXIT_OK


def _line(s: BreakerStatus) -> str:
    parts = [
        f"{s.provider:<9} {s.state:<9}",
        f"failures in a row={s.consecutive_failures}",
        f"window={s.window_failures}/{s.window_calls} failed",
        f"trips={s.trips}",
    ]
    if s.opened_at:
        parts.append(f"opened_at={s.opened_at:%Y-%m-%d %H:%M:%S}Z")
    if s.next_probe_at:
        parts.append(f"next_probe={s.next_probe_at:%H:%M:%S}Z cooldown={s.cooldown_s:g}s")
    if s.probe_in_flight:
        parts.append("probe in flight")
    if s.trip_reason:
        parts.append(f"why: {s.trip_reason}")
    if s.override:
        o = s.override
        parts.append(f"last override: {o['action']} by {o['by']} at {o['at']}: {o['reason']}")
    return "  ".join(parts)


def cmd_override(args: argparse.Namespace) -> int:
    reason = args.reason.strip()
    if not reason or len(reason) > 500:
        raise UsageError("--reason must be 1 to 500 characters")
    actor = args.actor or f"cli:{getpass.getuser()}"
    settings = load_settings()
    breaker = _breaker(settings)
    try:
        before = breaker.status(args.provider)
        details = {"previous_state": before.state, "trips": before.trips}
        action = f"breaker.{args.action}"
        with audited(settings.database_url, actor, action, args.provider, reason, details):
            state = breaker.override(args.provider, args.action, actor, reason)
    except redis.RedisError as exc:
        raise _unreachable(exc) from exc
    print(f"{args.provider}: {before.state} -> {state} ({args.action} by {actor}: {reason})")
    return EXIT_OK
