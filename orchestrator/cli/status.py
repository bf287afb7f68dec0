"""``orchestrator status``: the live workers and the clock leader, from their heartbeats in
Redis (:mod:`orchestrator.ops.heartbeats`). Exit 1 when no clock leader was seen recently."""

from __future__ import annotations

import argparse
from typing import Any

from orchestrator.cli.common import EXIT_FAILED, EXIT_OK, Commands, command, print_json
from orchestrator.config import load_settings


def register(commands: Commands) -> None:
    p = command(
        commands,
        "status",
        cmd_status,
        "live workers and the clock leader (exit 1 when no clock leader was seen recently)",
    )
    p.add_argument("--json", action="store_true")


def cmd_status(args: argparse.Namespace) -> int:
    from orchestrator.ops.heartbeats import FleetStatus

    reader = FleetStatus(load_settings())
    try:
        status = reader()
    finally:
        reader.close()
    if args.json:
        print_json(status)
    else:
        for line in status_lines(status):
            print(line)
    return EXIT_OK if status["ok"] else EXIT_FAILED


def status_lines(status: dict[str, Any]) -> list[str]:
    """One line a clock and a worker, then the problems and warnings."""
    lines = []
    for clock in status["clocks"]:
        role = "leader" if clock.get("leader") else "standby"
        lines.append(f"clock   {role:<8} {clock['id']:<32} {_seen(clock)}")
    for worker in status["workers"]:
        threads = f"  {worker['threads']} threads" if "threads" in worker else ""
        lines.append(f"worker  {'':<8} {worker['id']:<32} {_seen(worker)}{threads}")
    lines += [f"PROBLEM: {p}" for p in status["problems"]]
    lines += [f"warning: {w}" for w in status["warnings"]]
    return lines


def _seen(process: dict[str, Any]) -> str:
    return f"last seen {process['age_s']:g}s ago ({process['last_seen']})"
