"""CPU per process group for the benchmarks (orchestrator.dev.benchmarks.cpu)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.dev.benchmarks import cpu

TICKS = cpu._TICKS_PER_S


def _stat(pid: int, comm: str, ppid: int, utime: int, stime: int, cutime: int = 0) -> str:
    # proc(5): pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt
    # cmajflt utime stime cutime cstime ...
    fields = ["S", ppid, 1, 1, 0, -1, 0, 0, 0, 0, 0, utime, stime, cutime, 0, 20, 0, 1, 0]
    return f"{pid} ({comm}) " + " ".join(str(f) for f in fields) + "\n"


def _fake_proc(root: Path, processes: list[tuple[int, str, int, int, int, int]]) -> Path:
    for pid, comm, ppid, utime, stime, cutime in processes:
        (root / str(pid)).mkdir(parents=True, exist_ok=True)
        (root / str(pid) / "stat").write_text(_stat(pid, comm, ppid, utime, stime, cutime))
    (root / "self").mkdir(exist_ok=True)  # not a pid: skipped
    return root


def test_a_name_with_spaces_and_parentheses_is_read_from_the_last_parenthesis() -> None:
    stat = cpu.parse_stat(_stat(42, "python (worker 1)", 7, 3 * TICKS, TICKS, 2 * TICKS))
    assert (stat.comm, stat.ppid) == ("python (worker 1)", 7)
    assert (stat.own_s, stat.children_s) == (4.0, 2.0)


def test_processes_are_grouped_by_tree_and_by_server_name(tmp_path: Path) -> None:
    """The driver by pid (not its reaped children), each tree from its root down, PostgreSQL
    with what it reaped, Redis by name; anything else is not counted."""
    proc = _fake_proc(
        tmp_path,
        [
            (10, "python", 1, 100, 0, 5000),  # the driver; reaped earlier variants: not counted
            (20, "python", 10, 10, 10, 0),  # workers root
            (21, "python", 20, 200, 0, 0),  # a worker process
            (22, "python", 21, 100, 0, 0),  # its child
            (30, "python", 10, 50, 0, 0),  # simulator
            (40, "postgres", 1, 10, 0, 300),  # postmaster, reaped an autovacuum worker
            (41, "postgres", 40, 400, 0, 0),  # a backend
            (50, "redis-server", 1, 70, 0, 0),
            (60, "bash", 1, 999, 0, 0),  # unrelated
        ],
    )
    snap = cpu.snapshot({"workers": 20, "simulator": 30, "gone": 99}, driver_pid=10, proc=proc)
    totals: dict[str, float] = {}
    for (group, _), seconds in snap.seconds.items():
        totals[group] = totals.get(group, 0.0) + seconds * TICKS
    assert totals == {
        "driver": 100,
        "workers": 20 + 200 + 100,
        "simulator": 50,
        "postgresql": 10 + 300 + 400,
        "redis": 70,
    }


def test_per_job_counts_what_was_used_in_between(tmp_path: Path) -> None:
    """A process that started in between counts whole; per job is the sum over the jobs."""
    before_proc = _fake_proc(tmp_path / "a", [(41, "postgres", 1, 100, 0, 0)])
    after_proc = _fake_proc(
        tmp_path / "b",
        [(41, "postgres", 1, 100 + TICKS, 0, 0), (42, "postgres", 1, TICKS, TICKS, 0)],
    )
    before = cpu.snapshot({}, driver_pid=1, proc=before_proc)
    after = cpu.snapshot({}, driver_pid=1, proc=after_proc)
    assert cpu.per_job_ms(before, after, 1000) == {"postgresql": pytest.approx(3.0)}


def test_no_proc_reads_as_nothing(tmp_path: Path) -> None:
    assert cpu.snapshot({"workers": 1}, proc=tmp_path / "missing").seconds == {}


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="Linux /proc only")
def test_a_real_child_burning_cpu_shows_in_its_tree() -> None:
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\nt = time.process_time()\n"
            "while time.process_time() - t < 0.3: pass\ntime.sleep(30)",
        ]
    )
    try:
        before = cpu.snapshot({"workers": child.pid})
        deadline = time.monotonic() + 10
        used: dict[str, float] = {}
        while time.monotonic() < deadline:
            used = cpu.per_job_ms(before, cpu.snapshot({"workers": child.pid}), 1)
            if used.get("workers", 0.0) >= 200:
                break
            time.sleep(0.05)
        assert used.get("workers", 0.0) >= 200, used
        assert used.get("driver", 0.0) >= 0
    finally:
        child.kill()
        child.wait()
