"""Where a drained job's CPU went: CPU time per group of processes, read from ``/proc``.

A benchmark takes a :func:`snapshot` before and after a drain; :func:`per_job_ms` divides the
difference by the jobs drained. The groups:

* ``driver``: this process (the producer and its background threads);
* ``workers`` and ``simulator``: the process trees the benchmark started (by root pid);
* ``postgresql``: every process named ``postgres`` (backends, WAL writer, autovacuum), with
  the CPU of children they reaped (an autovacuum worker that exits during the drain);
* ``redis``: every ``redis-server``.

PostgreSQL and Redis are counted only when they run on this machine (a remote server reads as
0), and a machine's other work in those servers is counted too. Linux only: elsewhere every
snapshot is empty and the figures read 0.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DRIVER = "driver"
WORKERS = "workers"
SIMULATOR = "simulator"
POSTGRESQL = "postgresql"
REDIS = "redis"
# Servers found by process name (/proc/PID/comm), and whether reaped children count.
_SERVERS = {"postgres": POSTGRESQL, "redis-server": REDIS}
# The order the columns are printed in.
ORDER = (DRIVER, WORKERS, SIMULATOR, POSTGRESQL, REDIS)

_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True, slots=True)
class _Stat:
    comm: str
    ppid: int
    own_s: float  # utime + stime
    children_s: float  # cutime + cstime: children it waited for


@dataclass(frozen=True, slots=True)
class Snapshot:
    """CPU seconds used so far by each process counted, keyed by (group, pid)."""

    seconds: Mapping[tuple[str, int], float]


def parse_stat(text: str) -> _Stat:
    """One ``/proc/PID/stat`` line. The name is in parentheses and may hold spaces and
    parentheses itself, so the fields are counted from the last ``)``."""
    open_at, close_at = text.index("("), text.rindex(")")
    fields = text[close_at + 2 :].split()
    # fields[0] is the state; ppid, then utime, stime, cutime, cstime at 11-14 (proc(5)).
    ticks = [int(f) for f in fields[11:15]]
    return _Stat(
        comm=text[open_at + 1 : close_at],
        ppid=int(fields[1]),
        own_s=(ticks[0] + ticks[1]) / _TICKS_PER_S,
        children_s=(ticks[2] + ticks[3]) / _TICKS_PER_S,
    )


def _read_all(proc: Path) -> dict[int, _Stat]:
    stats = {}
    try:
        entries = [e for e in os.listdir(proc) if e.isdigit()]
    except OSError:  # no /proc: not Linux
        return {}
    for entry in entries:
        try:
            stats[int(entry)] = parse_stat((proc / entry / "stat").read_text())
        except (OSError, ValueError, IndexError):  # exited meanwhile, or unreadable
            continue
    return stats


def snapshot(
    trees: Mapping[str, int], *, driver_pid: int | None = None, proc: Path = Path("/proc")
) -> Snapshot:
    """CPU used so far by the driver, by each tree in ``trees`` (group name -> root pid; the
    root and every descendant) and by the local PostgreSQL and Redis processes."""
    stats = _read_all(proc)
    driver = os.getpid() if driver_pid is None else driver_pid
    group_of: dict[int, str] = {}
    for group, root in trees.items():
        for pid in _tree(stats, root):
            group_of[pid] = group
    seconds: dict[tuple[str, int], float] = {}
    for pid, stat in stats.items():
        if pid == driver:
            # Not its reaped children: those are other variants' workers and simulators.
            seconds[(DRIVER, pid)] = stat.own_s
        elif pid in group_of:
            seconds[(group_of[pid], pid)] = stat.own_s
        elif stat.comm in _SERVERS:
            seconds[(_SERVERS[stat.comm], pid)] = stat.own_s + stat.children_s
    return Snapshot(seconds)


def _tree(stats: Mapping[int, _Stat], root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, stat in stats.items():
        children.setdefault(stat.ppid, []).append(pid)
    found, todo = set(), [root] if root in stats else []
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo.extend(children.get(pid, ()))
    return found


def per_job_ms(before: Snapshot, after: Snapshot, jobs: int) -> dict[str, float]:
    """Milliseconds of CPU per job by group, between two snapshots. A process that started in
    between counts whole; one that exited in between is lost unless a counted parent reaped it."""
    used: dict[str, float] = {}
    for key, seconds in after.seconds.items():
        used[key[0]] = used.get(key[0], 0.0) + max(seconds - before.seconds.get(key, 0.0), 0.0)
    return {group: s * 1000 / max(jobs, 1) for group, s in used.items()}
