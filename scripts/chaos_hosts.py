"""Multi-host chaos: worker and clock "hosts" as network namespaces, faults between them.

Each host is a network namespace joined to the root namespace by a veth pair on a /30 of
10.213.<n>.0 (the host is .2, the root side .1; n = 4 x (pid mod 60) + 1..4 below)::

    host a  10.213.1.2  worker (2 processes)  ┐
    host b  10.213.2.2  worker (2 processes)  │ veth -- forwarder on 10.213.<n>.1 -- 127.0.0.1:
    host c  10.213.3.2  clock (the leader)    │   PostgreSQL, Redis, RabbitMQ, the simulator
    host d  10.213.4.2  clock (the standby)   ┘

The services listen on 127.0.0.1 only, so each host reaches them through a TCP forwarder
(``python scripts/chaos_hosts.py forward ...``) bound to the root side of its veth. The
forwarder stands in for the servers' end of each connection on a real network: TCP keepalive
(5 s idle, 3 probes 2 s apart) and TCP_USER_TIMEOUT 11 s, as PostgreSQL's
``tcp_keepalives_*`` / ``tcp_user_timeout``, Redis's ``tcp-keepalive`` and RabbitMQ's
heartbeats do when tuned. So ~11 s into a partition the servers drop the cut host's sessions
(and the clock's advisory lock with its session), and when the partition heals the host's
old connections meet a reset.

A partition is a black hole, not a refused connection: one service port's packets are dropped
both ways as they arrive at either end of the host's veth (tc: an ingress u32 filter
redirecting them to an ifb device whose queue holds nothing; needs only cls_u32, act_mirred
and ifb, no netem or gact). A freeze is SIGSTOP of every process in the host's namespace.

Every scenario enqueues N charges from the root namespace, injects its fault once a quarter
have succeeded, heals it after a hold, waits until every job settled, waits a quiet period
(a frozen worker wakes mid-call), then checks: at most one successful PaymentIntent per job,
no job lost, every job settled, and the ledger matching the provider.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

import psycopg
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator.api import Orchestrator  # noqa: E402
from orchestrator.config import Settings, load_settings  # noqa: E402
from orchestrator.db import migrate  # noqa: E402
from orchestrator.dev.simulator import SimulatorControl  # noqa: E402
from orchestrator.logs import configure_logging  # noqa: E402
from orchestrator.maintenance.clock import CLOCK_LOCK_ID  # noqa: E402
from tests.processes import (  # noqa: E402
    Proc,
    clock_args,
    free_port,
    in_netns,
    settings_env,
    spawn,
    wait_for_log,
    worker_args,
)

ADMIN_URL = os.environ.get("CHAOS_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("CHAOS_REDIS_URL", "redis://127.0.0.1:6379/14")
AMQP_URL = os.environ.get("CHAOS_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
STRIPE_KEY = "sk_test_chaosHostsKey"
SUBNET = "10.213"  # each host a /30 of 10.213.<n>.0; n from our pid and the host's index
NS_PREFIX = "orchx"
# name -> (subnet index, role). Names are short: interface names hold 15 characters.
HOSTS = {"a": (1, "worker"), "b": (2, "worker"), "c": (3, "clock"), "d": (4, "clock")}
# The forwarder's keepalive: a silent peer is given up after IDLE + COUNT x INTERVAL = 11 s.
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT = 5, 2, 3
USER_TIMEOUT_MS = 11_000  # unacknowledged data to a silent peer: given up after as long
# Calls in flight when the fault lands: the simulator answers each call after this long.
PROVIDER_LATENCY_MS = 200
WORKER_PROCESSES, WORKER_THREADS = 2, 4
SETTLE_TIMEOUT_S = 240.0
# After everything settled: a frozen or cut worker's last calls finish (read timeout 3 s).
QUIET_S = 6.0
# After the clock's partition heals: the old leader's TCP retransmits back off (up to ~30 s
# after a 30 s cut) before it meets the reset that tells it its session is gone.
STEPDOWN_TIMEOUT_S = 90.0
TERMINAL = ("succeeded", "failed", "dead", "cancelled")


class Unavailable(Exception):
    """This machine cannot run multi-host chaos; the message says why."""


def preflight() -> None:
    """Raise :class:`Unavailable` unless we are root with working ``ip netns`` and ``tc``."""
    if os.geteuid() != 0:
        raise Unavailable("multi-host chaos needs root (network namespaces, tc)")
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            raise Unavailable(f"multi-host chaos needs `{tool}` (iproute2)")
    probe = f"orchx-probe{os.getpid()}"
    made = _sh("ip", "netns", "add", probe, check=False)
    _sh("ip", "netns", "del", probe, check=False)
    if made.returncode != 0:
        raise Unavailable(f"`ip netns` is unavailable: {made.stderr.strip() or 'failed'}")


def _sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, capture_output=True, text=True, check=False)  # noqa: S603
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {done.stderr.strip()}")
    return done


# -- hosts ------------------------------------------------------------------------------------


@dataclass
class Host:
    """One test host: a namespace, a veth pair, black-hole plumbing, its forwarder."""

    name: str
    index: int
    ns: str = field(init=False)
    root_dev: str = field(init=False)
    host_dev: str = field(init=False)
    root_sink: str = field(init=False)
    host_sink: str = field(init=False)
    net: str = field(init=False)
    cuts: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        # Named and numbered by our pid: two runs at once (a test beside the script) never
        # share a namespace, a device or an address.
        pid = os.getpid()
        self.ns = f"{NS_PREFIX}{pid}-{self.name}"
        dev = f"ox{pid % 100000}{self.name}"
        self.root_dev, self.host_dev = f"{dev}0", f"{dev}1"
        self.root_sink, self.host_sink = f"{dev}s0", f"{dev}s1"
        self.net = f"{SUBNET}.{(pid % 60) * 4 + self.index}"

    @property
    def root_ip(self) -> str:
        return f"{self.net}.1"

    @property
    def ip(self) -> str:
        return f"{self.net}.2"

    def up(self) -> None:
        sweep_leftovers()
        _sh("ip", "netns", "add", self.ns)
        _sh("ip", "link", "add", self.root_dev, "type", "veth", "peer", "name", self.host_dev)
        _sh("ip", "link", "set", self.host_dev, "netns", self.ns)
        _sh("ip", "addr", "add", f"{self.root_ip}/30", "dev", self.root_dev)
        _sh("ip", "link", "set", self.root_dev, "up")
        _sh("ip", "-n", self.ns, "addr", "add", f"{self.ip}/30", "dev", self.host_dev)
        _sh("ip", "-n", self.ns, "link", "set", self.host_dev, "up")
        _sh("ip", "-n", self.ns, "link", "set", "lo", "up")
        for ip, tc, dev, sink in self._sides():
            # The sink: an ifb device whose queue holds nothing. A cut redirects the packets a
            # side receives to it, so that they vanish after leaving their sender: its TCP
            # sees silence, as across a real partition (a drop in the sender's own queue
            # would tell its TCP, which then retries its probes forever instead).
            _sh(*ip, "link", "add", sink, "type", "ifb")
            _sh(*ip, "link", "set", sink, "up")
            _sh(*tc, "qdisc", "add", "dev", sink, "root", "pfifo", "limit", "0")
            _sh(*tc, "qdisc", "add", "dev", dev, "ingress")

    def _sides(self) -> list[tuple[list[str], list[str], str, str]]:
        """(``ip``, ``tc``, veth end, sink) of the host's side, then of the root side."""
        return [
            (["ip", "-n", self.ns], ["tc", "-n", self.ns], self.host_dev, self.host_sink),
            (["ip"], ["tc"], self.root_dev, self.root_sink),
        ]

    def down(self) -> None:
        for pid in self.pids():
            _signal(pid, signal.SIGKILL)
        _sh("ip", "link", "del", self.root_dev, check=False)
        _sh("ip", "link", "del", self.root_sink, check=False)
        _sh("ip", "netns", "del", self.ns, check=False)

    def pids(self) -> list[int]:
        done = _sh("ip", "netns", "pids", self.ns, check=False)
        return [int(p) for p in done.stdout.split()] if done.returncode == 0 else []

    def cut(self, port: int) -> None:
        """Drop every packet to and from ``root_ip:port``, both ways, until :meth:`heal`."""
        to_host = ["match", "ip", "src", f"{self.root_ip}/32", "match", "ip", "sport"]
        to_root = ["match", "ip", "dst", f"{self.root_ip}/32", "match", "ip", "dport"]
        for (_, tc, dev, sink), match in zip(self._sides(), (to_host, to_root), strict=True):
            filt = ["filter", "add", "dev", dev, "parent", "ffff:", "protocol", "ip", "pref"]
            sunk = ["action", "mirred", "egress", "redirect", "dev", sink]
            _sh(*tc, *filt, str(port), "u32", *match, str(port), "0xffff", *sunk)
        self.cuts.add(port)

    def heal(self, port: int) -> None:
        for _, tc, dev, _ in self._sides():
            _sh(*tc, "filter", "del", "dev", dev, "parent", "ffff:", "pref", str(port))
        self.cuts.discard(port)

    def freeze(self) -> None:
        """SIGSTOP every process of the host (the kernel still answers for its sockets)."""
        for pid in self.pids():
            _signal(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in self.pids():
            _signal(pid, signal.SIGCONT)


def sweep_leftovers() -> None:
    """Delete the namespaces of runs whose process is gone (killed before its cleanup); the
    veth pairs go with them."""
    listed = _sh("ip", "netns", "list", check=False).stdout.split()
    for ns in listed:
        owner = ns.removeprefix(NS_PREFIX).partition("-")[0]
        if ns.startswith(NS_PREFIX) and owner.isdigit() and not _alive(int(owner)):
            for pid in _sh("ip", "netns", "pids", ns, check=False).stdout.split():
                _signal(int(pid), signal.SIGKILL)
            _sh("ip", "netns", "del", ns, check=False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _signal(pid: int, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, sig)


# -- the forwarder ----------------------------------------------------------------------------


def _keepalive(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_MS)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()  # either side gone: the other goes too


async def _forward(
    target: tuple[str, int], down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter
) -> None:
    _keepalive(down_w.get_extra_info("socket"))
    try:
        up_r, up_w = await asyncio.open_connection(*target)
    except OSError:
        down_w.close()
        return
    await asyncio.gather(_pipe(down_r, up_w), _pipe(up_r, down_w))


async def _serve(routes: list[tuple[str, int, str, int]]) -> None:
    servers = []
    for listen_host, listen_port, target_host, target_port in routes:
        handler = partial(_forward, (target_host, target_port))
        servers.append(
            await asyncio.start_server(handler, listen_host, listen_port, reuse_address=True)
        )
    print("forwarder: listening", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


def forward_main(argv: list[str]) -> int:
    """``forward LISTEN_IP:PORT=TARGET_IP:PORT ...``: forward each until killed."""
    routes = []
    for spec in argv:
        listen, _, target = spec.partition("=")
        lhost, _, lport = listen.rpartition(":")
        thost, _, tport = target.rpartition(":")
        routes.append((lhost, int(lport), thost, int(tport)))
    asyncio.run(_serve(routes))
    return 0


# -- one scenario's world -------------------------------------------------------------------


def _endpoint(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def _with_host(url: str, host: str) -> str:
    """``url`` reaching its server at ``host`` (same port, credentials, path)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")
    auth = f"{netloc[0]}@" if netloc[1] else ""
    return parts._replace(netloc=f"{auth}{host}:{parts.port}").geturl()


def broker_supported() -> bool:
    """True once the orchestrator reads ``ORCHESTRATOR_BROKER_URL`` (RabbitMQ possible)."""
    return "broker_url" in Settings.model_fields


class World:
    """Four hosts, their forwarders, a simulator, workers on a and b, clocks on c and d."""

    def __init__(
        self,
        name: str,
        broker: str,
        logs: Path,
        admin_url: str = ADMIN_URL,
        redis_url: str = REDIS_URL,
        amqp_url: str = AMQP_URL,
    ) -> None:
        self.name, self.broker, self.logs = name, broker, logs
        self.tag = f"{name}_{broker}_{uuid.uuid4().hex[:6]}"
        self.admin_url, self.redis_url, self.amqp_url = admin_url, redis_url, amqp_url
        self.db = f"orchestrator_chaos_hosts_{self.tag}"
        self.stack = ExitStack()
        self.hosts = {n: Host(n, i) for n, (i, _) in HOSTS.items()}
        self.workers: dict[str, Proc] = {}
        self.clocks: dict[str, Proc] = {}
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{self.db}"')
        self.stack.callback(self._drop_database)
        sim_port = free_port()
        extra: dict[str, object] = {}
        if self.broker == "rabbitmq":
            extra["broker_url"] = self.amqp_url
        self.settings = load_settings(
            database_url=f"{self.admin_url.rpartition('/')[0]}/{self.db}",
            redis_url=self.redis_url,
            redis_namespace=f"chaos-{self.tag}",
            queue_name=f"chaos_{self.tag}",
            stripe_api_key=STRIPE_KEY,
            stripe_api_base=f"http://127.0.0.1:{sim_port}",
            backoff_base_s=0.2,
            backoff_max_s=2.0,
            search_grace_s=1.0,
            dispatch_grace_s=2.0,
            clock_interval_s=0.5,
            provider_connect_timeout_s=1.0,
            provider_read_timeout_s=3.0,
            lease_margin_s=2.0,
            max_attempts=20,
            audit_interval_s=0,
            log_level="warning",
            log_format="json",
            breaker_cooldown_s=1.0,
            breaker_cooldown_max_s=5.0,
            rate_limit_pause_max_s=0.2,
            **extra,
        )
        migrate(self.settings.database_url)
        self.ports = {
            "postgres": _endpoint(self.admin_url, 5432),
            "redis": _endpoint(self.redis_url, 6379),
            "amqp": _endpoint(self.amqp_url, 5672),
            "simulator": ("127.0.0.1", sim_port),
        }
        env = settings_env(self.settings, STRIPE_API_KEY=STRIPE_KEY)
        self.stack.enter_context(
            spawn(
                [sys.executable, "-m", "orchestrator", "simulator", "--port", str(sim_port)],
                env,
                self.logs / f"{self.tag}-simulator.log",
            )
        )
        self.sim = SimulatorControl(f"http://127.0.0.1:{sim_port}")
        _wait(self.sim.health, 20)
        self.sim.set_faults("stripe", latency_ms=PROVIDER_LATENCY_MS)
        for host in self.hosts.values():
            self.stack.callback(host.down)
            host.up()
            routes = [f"{host.root_ip}:{p}={h}:{p}" for h, p in self.ports.values()]
            fwd = self.stack.enter_context(
                spawn(
                    [sys.executable, str(Path(__file__).resolve()), "forward", *routes],
                    env,
                    self.logs / f"{self.tag}-forward-{host.name}.log",
                )
            )
            wait_for_log(fwd, "forwarder: listening")
        self.orch = Orchestrator(self.settings)
        self.stack.callback(self.orch.close)
        # The leader first, then the standby (it waits for the lock).
        for name, needle in (("c", "clock.lock_acquired"), ("d", "clock.waiting_for_lock")):
            clock = self.start(name, clock_args(), ORCHESTRATOR_LOG_LEVEL="info")
            self.clocks[name] = clock
            wait_for_log(clock, needle, 30)
        for name in ("a", "b"):
            self.workers[name] = self.start(name, worker_args(WORKER_PROCESSES, WORKER_THREADS))

    def port(self, service: str) -> int:
        return self.ports[service][1]

    def host_env(self, host: Host, **extra: str) -> dict[str, str]:
        """The environment of a process on ``host``: every service through its forwarder."""
        urls = {
            "DATABASE_URL": _with_host(self.settings.database_url, host.root_ip),
            "REDIS_URL": _with_host(self.settings.redis_url, host.root_ip),
            "STRIPE_API_BASE": f"http://{host.root_ip}:{self.port('simulator')}",
        }
        if self.broker == "rabbitmq":
            urls["ORCHESTRATOR_BROKER_URL"] = _with_host(self.amqp_url, host.root_ip)
        return settings_env(self.settings, **urls, **extra)

    def start(self, host_name: str, args: list[str], **extra: str) -> Proc:
        host = self.hosts[host_name]
        n = len(list(self.logs.glob(f"{self.tag}-{host_name}-*.log")))
        log_path = self.logs / f"{self.tag}-{host_name}-{n}.log"
        return self.stack.enter_context(
            spawn(in_netns(host.ns, args, host.ns), self.host_env(host, **extra), log_path)
        )

    def enqueue(self, n: int) -> list[str]:
        return [
            self.orch.charge(100 + i % 5000, "usd", None, "pm_card_visa", f"{self.tag}-{i}").id
            for i in range(n)
        ]

    def states(self) -> dict[str, int]:
        return self.orch.store.count_by_state()

    def settled(self) -> int:
        states = self.states()
        return sum(states.get(s, 0) for s in TERMINAL)

    def leaders(self) -> int:
        """How many sessions hold the clock's lock."""
        with psycopg.connect(self.settings.database_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                " AND objid = %s",
                (CLOCK_LOCK_ID,),
            ).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        for host in self.hosts.values():
            host.thaw()  # a frozen process cannot act on SIGTERM
        self.stack.close()

    def _drop_database(self) -> None:
        client = redis.Redis.from_url(self.redis_url)
        keys = list(client.scan_iter(match=f"{self.settings.redis_namespace}*"))
        if keys:
            client.delete(*keys)
        client.close()
        if self.broker == "rabbitmq":
            _delete_queues(self.amqp_url, self.settings.queue_name)
        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')


def _delete_queues(amqp_url: str, queue: str) -> None:
    try:
        import pika

        connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        try:
            channel = connection.channel()
            for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
                channel.queue_delete(name)
        finally:
            connection.close()
    except Exception as exc:
        print(f"  (could not delete the RabbitMQ queues {queue}*: {exc})")


def _wait(predicate: Callable[[], bool], timeout_s: float, poll_s: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except Exception:  # noqa: S110  (a service still starting)
            pass
        time.sleep(poll_s)
    return False


# -- scenarios --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """A fault: ``inject`` once a quarter of the jobs succeeded, ``heal`` ``hold_s`` later."""

    doc: str
    inject: Callable[[World], None]
    heal: Callable[[World], None]
    hold_s: float
    broker: str | None = None  # runs only with this broker


def _cut(host: str, service: str) -> Callable[[World], None]:
    return lambda w: w.hosts[host].cut(w.port(service))


def _heal(host: str, service: str) -> Callable[[World], None]:
    return lambda w: w.hosts[host].heal(w.port(service))


def _clock_cut(world: World) -> None:
    """The leader's host loses PostgreSQL, and host a's workers die, leaving leases that
    only a clock (the standby, once it holds the lock) can expire."""
    world.hosts["c"].cut(world.port("postgres"))
    world.workers["a"].kill()


SCENARIOS: dict[str, Scenario] = {
    "pg": Scenario(
        "worker host a cut from PostgreSQL (black hole) for 20 s",
        _cut("a", "postgres"),
        _heal("a", "postgres"),
        20.0,
    ),
    "redis": Scenario(
        "worker host a cut from Redis (breaker, rate limits; the broker too on Redis) for 20 s",
        _cut("a", "redis"),
        _heal("a", "redis"),
        20.0,
    ),
    "amqp": Scenario(
        "worker host a cut from RabbitMQ (the broker) for 20 s",
        _cut("a", "amqp"),
        _heal("a", "amqp"),
        20.0,
        broker="rabbitmq",
    ),
    "clock": Scenario(
        "the leading clock's host c cut from PostgreSQL for 30 s; host a's workers killed",
        _clock_cut,
        _heal("c", "postgres"),
        30.0,
    ),
    "freeze": Scenario(
        "worker host a frozen (SIGSTOP) for 25 s, past its 10 s leases, then SIGCONT",
        lambda w: w.hosts["a"].freeze(),
        lambda w: w.hosts["a"].thaw(),
        25.0,
    ),
}


@dataclass
class Result:
    scenario: str
    broker: str
    n: int
    states: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    lost: int = 0
    unsettled: int = 0
    mismatched: int = 0
    settled_after_fault_s: float | None = None
    recovery_s: float | None = None
    takeover_s: float | None = None
    stepdown_s: float | None = None
    leaders: int = 1
    skipped: str | None = None

    @property
    def ok(self) -> bool:
        if self.skipped:
            return True
        # The clock scenario also needs the old leader to stand down once the partition
        # heals: two clocks acting at once is what the advisory lock is there to prevent.
        takeover_ok = self.scenario != "clock" or (
            self.takeover_s is not None and self.stepdown_s is not None
        )
        return (
            takeover_ok
            and self.leaders == 1
            and not (self.duplicates or self.lost or self.unsettled or self.mismatched)
        )

    def line(self) -> str:
        if self.skipped:
            return f"{self.scenario:7} {self.broker:9} skipped: {self.skipped}"

        def s(v: float | None) -> str:
            return "never" if v is None else f"{v:.1f}s"

        takeover = (
            f"  takeover {s(self.takeover_s)}  old leader stood down {s(self.stepdown_s)} "
            f"after the heal  leaders {self.leaders}"
            if self.scenario == "clock"
            else ""
        )
        return (
            f"{self.scenario:7} {self.broker:9} jobs {self.n}  duplicates {self.duplicates}  "
            f"lost {self.lost}  unsettled {self.unsettled}  mismatched {self.mismatched}  "
            f"fault->settled {s(self.settled_after_fault_s)}  "
            f"healed->settled {s(self.recovery_s)}{takeover}  "
            f"{'OK' if self.ok else 'BROKEN'}"
        )


def run_scenario(
    name: str, broker: str, n: int, logs: Path, hold_s: float | None = None, **urls: str
) -> Result:
    """Build a world, run ``name`` on it with ``n`` charges, check the invariants."""
    scenario = SCENARIOS[name]
    result = Result(name, broker, n)
    if scenario.broker and scenario.broker != broker:
        result.skipped = f"needs --broker {scenario.broker}"
        return result
    if broker == "rabbitmq" and not broker_supported():
        result.skipped = "ORCHESTRATOR_BROKER_URL is not supported by this checkout yet"
        return result
    world = World(name, broker, logs, **urls)
    try:
        ids = world.enqueue(n)
        _wait(lambda: world.states().get("succeeded", 0) >= n // 4, 120, 0.05)
        fault_at = time.monotonic()
        scenario.inject(world)
        settled_at: float | None = None
        heal_at = fault_at + (scenario.hold_s if hold_s is None else hold_s)
        while time.monotonic() < heal_at:
            now = time.monotonic()
            if settled_at is None and world.settled() >= n:
                settled_at = now
            if result.takeover_s is None and "clock.lock_acquired" in world.clocks["d"].log():
                result.takeover_s = now - fault_at
            time.sleep(0.2)
        scenario.heal(world)
        heal_at = time.monotonic()
        if settled_at is None and _wait(lambda: world.settled() >= n, SETTLE_TIMEOUT_S, 0.1):
            settled_at = time.monotonic()
        if settled_at is not None:
            result.settled_after_fault_s = settled_at - fault_at
            result.recovery_s = max(0.0, settled_at - heal_at)
        if name == "clock":  # the old leader, its connections reset, steps down
            old = world.clocks["c"]
            stood_down = ("clock.connection_lost", "clock.lock_lost")
            if _wait(lambda: any(e in old.log() for e in stood_down), STEPDOWN_TIMEOUT_S, 0.1):
                result.stepdown_s = time.monotonic() - heal_at
        time.sleep(QUIET_S)
        result.leaders = world.leaders()
        _check(world, ids, result)
    finally:
        world.close()
    return result


def _check(world: World, ids: list[str], result: Result) -> None:
    intents = world.sim.payment_intents()
    succeeded = Counter(
        pi["metadata"].get("orchestrator_job_id") for pi in intents if pi["status"] == "succeeded"
    )
    result.states = world.states()
    result.duplicates = sum(1 for c in succeeded.values() if c > 1)
    result.lost = len(ids) - sum(result.states.values())
    result.unsettled = len(ids) - sum(result.states.get(s, 0) for s in TERMINAL)
    jobs = {job_id: world.orch.job(job_id) for job_id in ids}
    # The ledger: a job is succeeded exactly when the provider holds one success for it.
    result.mismatched = sum(
        1
        for job_id, job in jobs.items()
        if job is None or (job.state == "succeeded") != (succeeded.get(job_id, 0) == 1)
    )
    print(f"  jobs by state:              {dict(sorted(result.states.items()))}")
    print(f"  PaymentIntents by status:   {dict(Counter(pi['status'] for pi in intents))}")
    print(f"  successes per job:          {dict(Counter(succeeded.values()))}")


# -- CLI ----------------------------------------------------------------------------------------


def _raise_exit(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through every cleanup


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/chaos --multi-host",
        description="Multi-host chaos: hosts as network namespaces, partitions and freezes.",
    )
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--scenario", action="append", choices=list(SCENARIOS))
    parser.add_argument("--broker", choices=("redis", "rabbitmq", "both"), default="both")
    args = parser.parse_args(argv)
    try:
        preflight()
    except Unavailable as exc:
        print(f"chaos --multi-host: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _raise_exit)
    configure_logging("console", "warning")
    logs = Path(tempfile.mkdtemp(prefix="orchestrator-chaos-hosts-"))
    brokers = ["redis", "rabbitmq"] if args.broker == "both" else [args.broker]
    print(f"chaos --multi-host: {args.jobs} jobs per scenario; process logs in {logs}")
    results = []
    for broker in brokers:
        for name in args.scenario or list(SCENARIOS):
            print(f"\n== {name} on {broker}: {SCENARIOS[name].doc}", flush=True)
            result = run_scenario(name, broker, args.jobs, logs)
            print(f"  {result.line()}", flush=True)
            results.append(result)
    print("\nsummary")
    for result in results:
        print(f"  {result.line()}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["forward"]:
        raise SystemExit(forward_main(sys.argv[2:]))
    raise SystemExit(main())
