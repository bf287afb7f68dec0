"""Child processes and ports of the local stack (see :mod:`orchestrator.dev.devstack`).

Every child runs in its own process group and is told by the kernel to stop if its parent
dies (``PR_SET_PDEATHSIG``); stopping signals the whole group, then SIGKILLs it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from orchestrator.errors import OrchestratorError

# A PostgreSQL or Redis that is not accepting connections this long after its start is
# broken (a cold initdb plus start takes a few seconds even on a loaded 2-core machine).
SERVICE_START_TIMEOUT_S = 60.0
# Warm shutdown lets workers finish in-flight provider calls; past this, SIGKILL.
STOP_TIMEOUT_S = 15.0
READY_POLL_S = 0.1
_PR_SET_PDEATHSIG = 1


class DevStackError(OrchestratorError):
    """A local service could not be started or stopped; the message says which and why."""


def free_port(preferred: int = 0, host: str = "127.0.0.1") -> int:
    """``preferred`` when nothing listens there, else a port the kernel picks."""
    for candidate in (preferred, 0) if preferred else (0,):
        with socket.socket() as sock:
            try:
                sock.bind((host, candidate))
            except OSError:
                continue
            port: int = sock.getsockname()[1]
            return port
    raise DevStackError(f"no free TCP port on {host}")


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """Whether something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def die_with_parent(sig: signal.Signals) -> Callable[[], None]:
    """A preexec hook asking the kernel to send ``sig`` to the child when its parent dies.

    The signal follows the parent *thread*: start children from a long-lived thread.
    """

    def hook() -> None:
        if sys.platform.startswith("linux"):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)

    return hook


def stop_process(proc: subprocess.Popen[bytes], sig: signal.Signals, timeout_s: float) -> None:
    """Signal the child (the leader of its own session), wait, then SIGKILL what is left of
    its process group: everything after ``timeout_s``, stragglers at once.

    The signal goes to the child alone, as ``kill PID`` would, not to its whole group: a
    dramatiq main process forwards it to its worker processes, and a worker process that gets
    a second SIGTERM while it stops (the group's, then the forwarded one) exits at once,
    without its shutdown hooks (dramatiq's ``cli.worker_process``)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout_s)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=timeout_s)


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
