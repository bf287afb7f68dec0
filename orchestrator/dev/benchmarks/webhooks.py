"""Webhook ingest: ``POST /webhooks/stripe`` beside a bare ASGI endpoint, in the same run.

Both servers are uvicorn in their own process with the same settings (one worker, loopback,
no access log), started by this module's ``serve`` entry point so nothing else differs:

* ``verified ingest``: the real ``web`` app (:func:`orchestrator.web.create_app`) against a
  throwaway database: body read with the 1 MiB cap, signature verified, event inserted and
  committed, processing message sent to Redis, then 200;
* ``bare ASGI``: an ASGI callable that reads the body and answers 200, the floor set by
  uvicorn, HTTP and the driver.

For each, the driver first sends distinct signed ``payment_intent.succeeded`` events at a
fixed rate (``--quick``: 2 s, else 10 s, at ``RATE_PER_S``), each request due at its slot,
and measures time to 2xx from that slot (so a stalled server is charged for the queue it
builds); then it saturates the server from ``SATURATION_THREADS`` threads for a few seconds
to measure the highest rate it sustains. Bodies and signatures are made before timing.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis
import requests
import stripe

from orchestrator.dev.benchmarks import support
from orchestrator.dev.benchmarks.support import BenchError

# The target, reported against (never asserted): p99 time to 2xx at this rate.
RATE_PER_S = 200
TARGET_P99_MS = 50.0
PACED_S, QUICK_PACED_S = 10.0, 2.0
SATURATION_S, QUICK_SATURATION_S = 3.0, 1.0
# Enough client threads that a slow answer never delays the next slot at 200 req/s.
PACED_THREADS = 16
# Closed-loop clients for the capacity figure; more only queue in the driver's GIL.
SATURATION_THREADS = 8
REQUEST_TIMEOUT_S = 10.0
SERVER_START_TIMEOUT_S = 20.0
BENCH_SECRET = "whsec_orchestratorBench"  # noqa: S105  (signs throwaway bench events only)
# A PaymentIntent-sized event (Stripe's are 1-3 KB).
PADDING_CHARS = 1200


# -- the two servers -----------------------------------------------------------------------

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


async def bare_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Read the whole body, answer 200 with a small JSON body: nothing else."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = bool(message.get("more_body"))
    body = b'{"received":true}'
    headers = [(b"content-type", b"application/json"), (b"content-length", b"17")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def serve(which: str, port: int) -> None:
    """Run one server in the foreground; the same uvicorn settings for both."""
    import uvicorn

    from orchestrator.logs import configure_logging

    configure_logging("json", "warning")
    if which == "bare":
        app: Any = bare_app
    else:
        from orchestrator.web import create_app

        app = create_app()
    uvicorn.run(app, host="127.0.0.1", port=port, log_config=None, access_log=False)


@contextmanager
def _server(which: str, env: dict[str, str], log_dir: Path) -> Iterator[str]:
    port = support.free_port()
    argv = [sys.executable, "-m", "orchestrator.dev.benchmarks.webhooks", which, str(port)]
    url = f"http://127.0.0.1:{port}"
    log_path = log_dir / f"web-{which}.log"
    with log_path.open("ab") as log:
        popen = subprocess.Popen(  # noqa: S603  (our own interpreter and module)
            argv,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tempfile.gettempdir(),  # away from any .env in the working directory
        )
        try:
            _wait_listening(url, popen, log_path)
            yield url
        finally:
            popen.terminate()
            try:
                popen.wait(10)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()


def _wait_listening(url: str, popen: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
            raise BenchError(f"web server exited while starting: {' | '.join(tail)}")
        try:
            requests.get(f"{url}/healthz", timeout=1)
            return
        except requests.ConnectionError:
            time.sleep(0.05)
    raise BenchError(f"web server not listening after {SERVER_START_TIMEOUT_S:.0f}s")


# -- load ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivery:
    body: bytes
    headers: dict[str, str]


def deliveries(count: int) -> list[Delivery]:
    """Distinct signed events, made before any timing starts."""
    out = []
    for _ in range(count):
        event = {
            "id": f"evt_bench_{uuid.uuid4().hex}",
            "object": "event",
            "type": "payment_intent.succeeded",
            "created": int(time.time()),
            "data": {
                "object": {
                    "id": f"pi_bench_{uuid.uuid4().hex[:16]}",
                    "object": "payment_intent",
                    "amount": 1000,
                    "currency": "usd",
                    "status": "succeeded",
                    "description": "x" * PADDING_CHARS,
                }
            },
        }
        text = json.dumps(event)
        header = stripe.WebhookSignature.generate_signature_header(text, BENCH_SECRET)
        headers = {"Content-Type": "application/json", "Stripe-Signature": header}
        out.append(Delivery(text.encode(), headers))
    return out


@dataclass(frozen=True, slots=True)
class Figures:
    sent: int
    errors: int
    rate_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float


def paced(url: str, items: list[Delivery], rate_per_s: float) -> Figures:
    """Send ``items`` at ``rate_per_s``, each due at its slot; latency counted from the slot."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    cursor = iter(range(len(items)))
    start = time.perf_counter() + 0.2

    def client() -> None:
        session = _Client(url)
        while True:
            with lock:
                i = next(cursor, None)
            if i is None:
                return
            due = start + i / rate_per_s
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            ok = session.post(items[i])
            elapsed_ms = (time.perf_counter() - due) * 1000
            with lock:
                latencies.append(elapsed_ms)
                errors[0] += 0 if ok else 1

    _run_threads(client, PACED_THREADS)
    duration = max(time.perf_counter() - start, 1e-9)
    return _figures(latencies, errors[0], len(items) / duration)


def saturate(url: str, items: list[Delivery], seconds: float) -> Figures:
    """Closed loop from several threads for ``seconds``: the highest rate sustained."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    cursor = iter(range(len(items)))
    stop_at = time.perf_counter() + seconds

    def client() -> None:
        session = _Client(url)
        while time.perf_counter() < stop_at:
            with lock:
                i = next(cursor, None)
            if i is None:
                return
            began = time.perf_counter()
            ok = session.post(items[i])
            with lock:
                latencies.append((time.perf_counter() - began) * 1000)
                errors[0] += 0 if ok else 1

    began = time.perf_counter()
    _run_threads(client, SATURATION_THREADS)
    return _figures(latencies, errors[0], len(latencies) / (time.perf_counter() - began))


class _Client:
    """One keep-alive connection through the stdlib: a light client, so the driver's own CPU
    (it shares the machine with the server) stays small next to what is measured."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port, self.path = parts.hostname or "127.0.0.1", parts.port, parts.path
        self.conn: http.client.HTTPConnection | None = None

    def post(self, item: Delivery) -> bool:
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection(
                    self.host, self.port, timeout=REQUEST_TIMEOUT_S
                )
            self.conn.request("POST", self.path or "/", body=item.body, headers=item.headers)
            resp = self.conn.getresponse()
            resp.read()
        except (OSError, http.client.HTTPException):
            if self.conn is not None:
                self.conn.close()
            self.conn = None
            return False
        return 200 <= resp.status < 300


def _run_threads(target: Callable[[], None], count: int) -> None:
    threads = [threading.Thread(target=target, daemon=True) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _figures(latencies: list[float], errors: int, rate: float) -> Figures:
    if not latencies:
        raise BenchError("no request completed")
    return Figures(
        sent=len(latencies),
        errors=errors,
        rate_per_s=rate,
        p50_ms=support.percentile(latencies, 50),
        p99_ms=support.percentile(latencies, 99),
        max_ms=max(latencies),
    )


# -- the run -------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> None:
    """Measure and print (the registry's entry point)."""
    paced_s = QUICK_PACED_S if args.quick else PACED_S
    saturation_s = QUICK_SATURATION_S if args.quick else SATURATION_S
    namespace = f"orchestrator-bench-webhooks-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(args.redis_url)
    results: dict[str, tuple[Figures, Figures]] = {}
    try:
        with (
            support.fresh_database(args.database_url) as database_url,
            tempfile.TemporaryDirectory(prefix="bench-webhooks-") as log_dir,
        ):
            env = {
                "DATABASE_URL": database_url,
                "REDIS_URL": args.redis_url,
                "ORCHESTRATOR_REDIS_NAMESPACE": namespace,
                "STRIPE_WEBHOOK_SECRET": BENCH_SECRET,
                "ORCHESTRATOR_LOG_LEVEL": "warning",
            }
            machine = support.machine_summary(database_url, client)
            for label, which, path in (
                ("bare ASGI", "bare", "/"),
                ("verified ingest", "full", "/webhooks/stripe"),
            ):
                with _server(which, env, Path(log_dir)) as url:
                    count = int(paced_s * RATE_PER_S)
                    warm = saturate(url + path, deliveries(50), 1.0)
                    del warm
                    slow = paced(url + path, deliveries(count), RATE_PER_S)
                    most = int(saturation_s * 3000)
                    fast = saturate(url + path, deliveries(most), saturation_s)
                    results[label] = (slow, fast)
    finally:
        support.flush_namespace(client, namespace)
        client.close()
    print(render(results, paced_s, machine), flush=True)


def render(results: dict[str, tuple[Figures, Figures]], paced_s: float, machine: str) -> str:
    headers = [
        "endpoint",
        f"p50 ms @{RATE_PER_S}/s",
        f"p99 ms @{RATE_PER_S}/s",
        "max ms",
        "errors",
        "max req/s",
        "p99 ms @max",
    ]
    rows = [
        [
            label,
            f"{slow.p50_ms:.1f}",
            f"{slow.p99_ms:.1f}",
            f"{slow.max_ms:.1f}",
            str(slow.errors + fast.errors),
            f"{fast.rate_per_s:.0f}",
            f"{fast.p99_ms:.1f}",
        ]
        for label, (slow, fast) in results.items()
    ]
    ingest = results.get("verified ingest")
    verdict = ""
    if ingest is not None:
        met = "met" if ingest[0].p99_ms <= TARGET_P99_MS and not ingest[0].errors else "NOT met"
        verdict = (
            f"target: p99 time to 2xx <= {TARGET_P99_MS:.0f} ms at {RATE_PER_S} req/s: {met} "
            f"({ingest[0].p99_ms:.1f} ms over {ingest[0].sent} requests)"
        )
    title = (
        f"== webhooks: POST /webhooks/stripe beside a bare ASGI endpoint "
        f"({RATE_PER_S} req/s for {paced_s:.0f} s, then saturated) =="
    )
    return "\n".join([title, machine, support.render_table(headers, rows), verdict])


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]))
