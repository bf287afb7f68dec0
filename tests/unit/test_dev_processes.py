"""Stopping the dev stack's children (orchestrator.dev.processes.stop_process)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from orchestrator.dev.processes import stop_process

# A parent that forwards SIGTERM to its child a moment later, and a child that stops slowly
# and takes a second SIGTERM as "exit now": dramatiq's main and worker processes.
PARENT = textwrap.dedent(
    """
    import signal, subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]])
    def forward(signum, frame):
        time.sleep(0.1)
        child.send_signal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, forward)
    sys.exit(child.wait())
    """
)
CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path
    stopping = False
    def term(signum, frame):
        global stopping
        if stopping:
            os._exit(1)  # the second SIGTERM: no shutdown hooks
        stopping = True
    signal.signal(signal.SIGTERM, term)
    Path(sys.argv[1] + ".ready").touch()
    while not stopping:
        time.sleep(0.01)
    time.sleep(0.5)  # stopping: its shutdown hooks
    Path(sys.argv[1]).write_text("stopped cleanly")
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX process groups")
def test_the_signal_goes_to_the_child_alone_so_its_workers_stop_cleanly(tmp_path: Path) -> None:
    """Signalled as its own process group, the worker would get SIGTERM twice (the group's,
    then the forwarded one) and exit without its shutdown hooks."""
    marker = tmp_path / "marker"
    proc = subprocess.Popen(
        [sys.executable, "-c", PARENT, CHILD, str(marker)], start_new_session=True
    )
    deadline = time.monotonic() + 20
    while not Path(str(marker) + ".ready").exists():
        assert time.monotonic() < deadline and proc.poll() is None, "the child never started"
        time.sleep(0.02)

    stop_process(proc, signal.SIGTERM, 10)

    assert proc.returncode == 0
    assert marker.read_text() == "stopped cleanly"


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX process groups")
def test_what_ignores_the_signal_is_killed_with_its_group(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", "import signal, time\n"
         "signal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(60)"],
        start_new_session=True,
    )  # fmt: skip
    time.sleep(0.3)
    started = time.monotonic()
    stop_process(proc, signal.SIGTERM, 1)
    assert proc.returncode == -signal.SIGKILL
    assert time.monotonic() - started < 5
