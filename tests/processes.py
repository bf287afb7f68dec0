"""Real worker and clock processes for integration tests, configured like production."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
from pydantic import SecretStr

from orchestrator.config import _ALIASES

ROOT = Path(__file__).resolve().parent.parent
# The redis-server on PATH, else the one the project's venv may hold.
REDIS_SERVER = shutil.which("redis-server") or str(ROOT / ".venv" / "bin" / "redis-server")


def settings_env(settings: Any, **extra: str) -> dict[str, str]:
    """The environment that reproduces ``settings`` in a child process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    for name, alias in _ALIASES.items():
        value = getattr(settings, name)
        if value is None:
            continue
        env[alias] = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
    env["dramatiq_worker_timeout"] = "50"
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


class Proc:
    def __init__(self, popen: subprocess.Popen[bytes], log_path: Path) -> None:
        self.popen = popen
        self.log_path = log_path

    def kill(self) -> None:
        """SIGKILL the whole process group: no cleanup, no acks, mid-call if it was."""
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM to the process alone, as a process manager sends it (a dramatiq main process
        forwards it to its workers: a worker that also got the group's SIGTERM would take the
        second one as "kill now" and skip its shutdown hooks); then SIGKILL to what is left of
        the group, at once, or to all of it after 15 s."""
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def spawn(args: list[str], env: dict[str, str], log_path: Path) -> Iterator[Proc]:
    with log_path.open("wb") as out:
        popen = subprocess.Popen(
            args, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    proc = Proc(popen, log_path)
    try:
        yield proc
    finally:
        proc.stop()


def worker_args(processes: int = 1, threads: int = 8) -> list[str]:
    return [
        sys.executable,
        "-m",
        "dramatiq",
        "actors",
        "--processes",
        str(processes),
        "--threads",
        str(threads),
        "--skip-logging",
    ]


def clock_args() -> list[str]:
    return [sys.executable, "-m", "orchestrator", "clock"]


def in_netns(namespace: str, args: list[str], hostname: str | None = None) -> list[str]:
    """``args`` run inside the network namespace ``namespace``, under ``hostname`` when given
    (a UTS namespace of its own, so ``socket.gethostname()`` names the test host). Each step
    execs the next: the spawned pid is the command's own, so :meth:`Proc.kill` works."""
    if hostname is None:
        return ["ip", "netns", "exec", namespace, *args]
    rename = 'hostname "$0" && exec "$@"'
    return ["ip", "netns", "exec", namespace, "unshare", "--uts", "--", "sh", "-c", rename,
            hostname, *args]  # fmt: skip


def wait_for_log(proc: Proc, needle: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if needle in proc.log():
            return
        if proc.popen.poll() is not None:
            raise AssertionError(f"process exited early:\n{proc.log()[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"{needle!r} not logged within {timeout_s}s:\n{proc.log()[-3000:]}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on (bound once, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_server_args(port: int, *extra: str) -> list[str]:
    """A throwaway redis-server on 127.0.0.1:``port``: nothing saved to disk."""
    return [
        REDIS_SERVER,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        *extra,
    ]


def wait_for_redis(port: int, timeout_s: float = 10.0) -> None:
    """Until the Redis on 127.0.0.1:``port`` answers a PING."""
    client = redis.Redis(port=port, socket_timeout=1)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    return
            except redis.RedisError:
                pass
            time.sleep(0.05)
    finally:
        client.close()
    raise AssertionError(f"redis on port {port} did not answer within {timeout_s}s")
