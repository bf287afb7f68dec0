"""The HTTP server and :class:`Simulator`, which serves it from a daemon thread."""

from __future__ import annotations

import contextlib
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

from orchestrator.dev.simulator.common import Response, sendgrid_error, stripe_error
from orchestrator.dev.simulator.control import control
from orchestrator.dev.simulator.payments import snapshot_payment_intents
from orchestrator.dev.simulator.pipeline import Pipeline, Request
from orchestrator.dev.simulator.razorpay_payments import snapshot as razorpay_snapshot
from orchestrator.dev.simulator.state import State
from orchestrator.dev.simulator.webhooks import WebhookSender

SERVE_POLL_INTERVAL_S = 0.05
IDLE_CONNECTION_TIMEOUT_S = 120.0
LISTEN_BACKLOG = 256
# Razorpay is served under this prefix: the SDK's base_url is "<simulator url>/razorpay".
RAZORPAY_PREFIX = "/razorpay"
_HTTP_REASONS = {
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, address: tuple[str, int], state: State) -> None:
        self.state = state
        self.pipeline = Pipeline(state)
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        """Silence client disconnects; print real bugs."""
        if not isinstance(sys.exc_info()[1], OSError):
            traceback.print_exc()

    def close_all_connections(self) -> None:
        with self.connections_lock:
            connections = list(self.connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    timeout = IDLE_CONNECTION_TIMEOUT_S

    @property
    def _sim(self) -> _Server:
        assert isinstance(self.server, _Server)
        return self.server

    def setup(self) -> None:
        super().setup()
        with self._sim.connections_lock:
            self._sim.connections.add(self.connection)

    def finish(self) -> None:
        with self._sim.connections_lock:
            self._sim.connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """No per-request logging: the simulator is on benchmark hot paths."""

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        body = self._read_body()
        split = urlsplit(self.path)
        try:
            resp = self._answer(split.path, split.query, body)
        except Exception:  # a simulator bug: answer 500 rather than hang the client
            traceback.print_exc()
            resp = stripe_error(500, "api_error", "simulator internal error")
        if resp is None:
            self._cut()
            return
        self._write(resp)

    def _answer(self, path: str, query: str, body: bytes) -> Response | None:
        if path.startswith("/_sim/"):
            return control(self._sim.state, self.command, path, body)
        provider = "sendgrid" if path.startswith("/v3/") else "stripe"
        if path == RAZORPAY_PREFIX or path.startswith(RAZORPAY_PREFIX + "/"):
            provider = "razorpay"
            # Tolerate a base_url with a trailing slash ("/razorpay//v1/orders").
            path = "/" + "/".join(p for p in path[len(RAZORPAY_PREFIX) :].split("/") if p)
        if provider == "sendgrid" and not (self.command == "POST" and path == "/v3/mail/send"):
            return sendgrid_error(404, f"{self.command} {path} is not supported by the simulator")
        headers = {name.lower(): value for name, value in self.headers.items()}
        req = Request(provider, self.command, path, query, body, headers)
        return self._sim.pipeline.handle(req)

    def _read_body(self) -> bytes:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        return self.rfile.read(length) if length > 0 else b""

    def _write(self, resp: Response) -> None:
        headers = dict(resp.headers)
        headers["Content-Length"] = str(len(resp.body))
        if self.close_connection:
            headers["Connection"] = "close"
        reason = _HTTP_REASONS.get(resp.status, "")
        lines = [f"HTTP/1.1 {resp.status} {reason}"]
        lines.extend(f"{name}: {value}" for name, value in headers.items())
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.wfile.write(head + resp.body)

    def _cut(self) -> None:
        """Reset the TCP connection without answering (RST via SO_LINGER 0)."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()


class Simulator:
    """A Stripe + SendGrid + Razorpay simulator serving HTTP from a daemon thread."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        stripe_api_key: str | None = None,
        sendgrid_api_key: str | None = None,
        seed: int | None = None,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        razorpay_key_id: str | None = None,
        razorpay_key_secret: str | None = None,
        razorpay_webhook_url: str | None = None,
        razorpay_webhook_secret: str | None = None,
        razorpay_receipt_mode: str = "reject",
    ) -> None:
        self._host = host
        self._port = port
        self._state = State(
            stripe_api_key,
            sendgrid_api_key,
            seed,
            razorpay_key_id=razorpay_key_id,
            razorpay_key_secret=razorpay_key_secret,
        )
        self._state.set_webhook(webhook_url, webhook_secret)
        self._state.set_razorpay_webhook(razorpay_webhook_url, razorpay_webhook_secret)
        self._state.set_receipt_mode(razorpay_receipt_mode)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._sender: WebhookSender | None = None

    def start(self) -> Simulator:
        """Bind, start serving in a daemon thread and return once listening."""
        if self._server is not None:
            raise RuntimeError("simulator already started")
        self._state.stop_event.clear()
        server = _Server((self._host, self._port), self._state)
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": SERVE_POLL_INTERVAL_S},
            name="orchestrator-simulator",
            daemon=True,
        )
        thread.start()
        sender = WebhookSender(self._state)
        sender.start()
        self._server, self._thread, self._sender = server, thread, sender
        return self

    def stop(self) -> None:
        """Stop serving, drop open keep-alive connections and release the port."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._state.stop_event.set()
        server.shutdown()
        server.server_close()
        server.close_all_connections()
        thread.join()
        if self._sender is not None:
            self._sender.join()
        self._server = self._thread = self._sender = None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("simulator not started")
        host, port = self._server.server_address[:2]
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else str(host)  # noqa: S104
        return f"http://{shown}:{port}"

    @property
    def razorpay_url(self) -> str:
        """The Razorpay SDK's ``base_url`` for this simulator."""
        return self.url + RAZORPAY_PREFIX

    def set_faults(self, provider: str = "all", **faults: float | bool) -> None:
        """Replace a provider's fault config ("stripe", "sendgrid", "razorpay" or "all")."""
        self._state.set_faults(provider, faults)

    def reset(self) -> None:
        """Clear objects, logs, idempotency keys and faults; re-seed the fault RNG; set the
        simulated clock back to real time."""
        self._state.reset()

    def advance_clock(self, seconds: float) -> None:
        """Move the simulated clock forward: ``created`` of new objects, search lag,
        idempotency-key expiry and settling of ``processing`` intents follow it."""
        self._state.advance_clock(seconds)

    def payment_intents(self) -> list[dict[str, Any]]:
        return snapshot_payment_intents(self._state)

    def refunds(self) -> list[dict[str, Any]]:
        return self._state.snapshot("refunds")

    def mail(self) -> list[dict[str, Any]]:
        return self._state.snapshot("mail")

    def requests_log(self) -> list[dict[str, Any]]:
        return self._state.snapshot("requests")

    def set_webhook(self, url: str | None, secret: str | None = None) -> None:
        """Send events to ``url`` signed with ``secret`` (None stops sending); kept by reset."""
        self._state.set_webhook(url, secret)

    def webhook_deliveries(self) -> list[dict[str, Any]]:
        """Finished deliveries (both providers): provider, event id, type, last HTTP status
        (None: no answer), attempts."""
        return self._state.snapshot("webhooks")

    # -- Razorpay ---------------------------------------------------------------------

    def set_razorpay_webhook(self, url: str | None, secret: str | None = None) -> None:
        """Send Razorpay events to ``url`` signed with ``secret`` (None stops sending); kept
        by reset."""
        self._state.set_razorpay_webhook(url, secret)

    def set_receipt_mode(self, mode: str) -> None:
        """``"reject"`` (400 "Order receipt should be unique.") or ``"return_existing"`` (the
        order that has the receipt) for a Razorpay order create reusing a receipt; kept by
        reset."""
        self._state.set_receipt_mode(mode)

    def razorpay_orders(self) -> list[dict[str, Any]]:
        return razorpay_snapshot(self._state, "orders")

    def razorpay_payments(self) -> list[dict[str, Any]]:
        return razorpay_snapshot(self._state, "payments")

    def razorpay_refunds(self) -> list[dict[str, Any]]:
        return razorpay_snapshot(self._state, "refunds")


def serve(
    host: str,
    port: int,
    *,
    stripe_api_key: str | None,
    sendgrid_api_key: str | None,
    razorpay_key_id: str | None = None,
    razorpay_key_secret: str | None = None,
) -> None:
    """Run a simulator in the foreground until Ctrl-C (or SIGTERM)."""
    sim = Simulator(
        host,
        port,
        stripe_api_key=stripe_api_key,
        sendgrid_api_key=sendgrid_api_key,
        razorpay_key_id=razorpay_key_id,
        razorpay_key_secret=razorpay_key_secret,
    )
    sim.start()
    _install_sigterm_handler()
    print(f"simulator listening on {sim.url}", flush=True)
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()


def _install_sigterm_handler() -> None:
    if threading.current_thread() is not threading.main_thread():
        return

    def _raise_interrupt(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _raise_interrupt)
