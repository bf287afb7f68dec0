"""A fault-injecting HTTP reverse proxy, for AWS clients talking to moto over real HTTP.

It listens on a free loopback port and forwards each request to an upstream (moto's server).
Per request, a seeded RNG picks at most one fault by the configured probabilities:

* ``drop``: close the connection without forwarding (nothing delivered; the client cannot know);
* ``server_error``: answer a 5xx (``server_error_status``) without forwarding;
* ``throttle``: answer a throttling error without forwarding, in SESv2's REST-JSON form
  (``x-amzn-ErrorType`` header and ``{"message"}`` body) or, with ``throttle_format="xml"``,
  as SES v1's XML ``ErrorResponse`` (a REST-JSON client then sees only the status);
* ``cut_after``: forward, read the upstream's whole answer, then close the connection without
  returning it: delivered, and the client does not know.

``latency_s`` delays every request before it is forwarded (a client whose read timeout is
shorter gives up while the request is still delivered). :meth:`FaultProxy.refusing` closes the
listener and every open connection, so that connecting is refused until it ends.

Every request is logged (:class:`ProxyRecord`): its fault, whether it was forwarded, the
upstream's status and ``MessageId``, and the request's ``orchestrator_job_id`` email tag.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

# Faults in the order the RNG's draw is matched against their probabilities.
FAULTS = ("drop", "server_error", "throttle", "cut_after")
# Headers that belong to one connection, never forwarded as they are.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "content-length",
    }
)
# How long a kept-alive connection may sit idle: longer than any test, so the proxy never
# closes a connection the client is about to reuse (that race would be a fault of its own).
IDLE_TIMEOUT_S = 600.0
SERVER_ERROR_CODES = {500: "InternalFailure", 502: "BadGateway", 503: "ServiceUnavailable"}


@dataclass(frozen=True)
class Faults:
    """Per-request fault probabilities (summing to at most 1) and their details."""

    drop: float = 0.0
    server_error: float = 0.0
    throttle: float = 0.0
    cut_after: float = 0.0
    latency_s: float = 0.0
    server_error_status: int = 500
    throttle_status: int = 429
    throttle_code: str = "TooManyRequestsException"
    throttle_message: str = "Maximum sending rate exceeded."
    throttle_format: str = "json"

    def __post_init__(self) -> None:
        if sum(getattr(self, name) for name in FAULTS) > 1.0 + 1e-9:
            raise ValueError("fault probabilities sum to more than 1")


@dataclass
class ProxyRecord:
    """One request that reached the proxy."""

    method: str
    path: str
    fault: str | None
    forwarded: bool = False
    status: int | None = None
    message_id: str | None = None
    job_id: str | None = None
    at: float = field(default_factory=time.monotonic)
    upstream_s: float | None = None  # how long the upstream took to answer


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        with self.connections_lock:
            self.connections.add(sock)
        return sock, address

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet about clients that went away (one that timed out closes its connection
        before the proxy answers); anything else is printed as usual."""
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)

    def close_connections(self) -> None:
        with self.connections_lock:
            open_now = list(self.connections)
        for sock in open_now:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as botocore's pooled connections expect
    timeout = IDLE_TIMEOUT_S
    server: _Server

    def do_POST(self) -> None:
        self.server.proxy.handle(self)

    do_GET = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_POST

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: one line per request would drown the test output."""

    def reply(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def cut(self) -> None:
        """Close the connection without a byte of answer."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


class FaultProxy:
    """The proxy in front of ``upstream`` (a base URL); start it, point clients at :attr:`url`."""

    def __init__(self, upstream: str, *, seed: int = 7) -> None:
        parts = urlsplit(upstream)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._faults = Faults()
        self._log: list[ProxyRecord] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def start(self) -> FaultProxy:
        self._server = _Server(("127.0.0.1", self._port), self)
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="fault-proxy", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @contextlib.contextmanager
    def refusing(self) -> Iterator[None]:
        """Connections to the proxy are refused (nothing listens on its port) inside."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    def set_faults(self, **faults: Any) -> None:
        """Replace the fault configuration (no argument: no faults)."""
        with self._lock:
            self._faults = Faults(**faults)

    def log(self) -> list[ProxyRecord]:
        with self._lock:
            return list(self._log)

    def reset(self) -> None:
        """No faults and an empty log."""
        with self._lock:
            self._faults = Faults()
            self._log.clear()

    # -- one request ------------------------------------------------------------------------

    def _draw(self) -> tuple[Faults, str | None]:
        with self._lock:
            faults = self._faults
            roll = self._rng.random()
        threshold = 0.0
        for name in FAULTS:
            threshold += getattr(faults, name)
            if roll < threshold:
                return faults, name
        return faults, None

    def handle(self, handler: _Handler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        faults, fault = self._draw()
        record = ProxyRecord(handler.command, handler.path, fault, job_id=_job_id_of(body))
        with self._lock:
            self._log.append(record)
        if faults.latency_s:
            time.sleep(faults.latency_s)
        if fault == "drop":
            handler.cut()
            return
        if fault == "server_error":
            status = faults.server_error_status
            code = SERVER_ERROR_CODES.get(status, "InternalFailure")
            record.status = status
            handler.reply(status, *_json_error(code, "We encountered an internal error."))
            return
        if fault == "throttle":
            record.status = faults.throttle_status
            make = _xml_error if faults.throttle_format == "xml" else _json_error
            headers, payload = make(faults.throttle_code, faults.throttle_message)
            handler.reply(faults.throttle_status, headers, payload)
            return
        forwarded_at = time.monotonic()
        status, headers, payload = self._forward(handler, body)
        record.forwarded, record.status = True, status
        record.upstream_s = time.monotonic() - forwarded_at
        record.message_id = _message_id_of(payload)
        if fault == "cut_after":
            handler.cut()
            return
        handler.reply(status, headers, payload)

    def _forward(self, handler: _Handler, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(*self._upstream, timeout=30)
        try:
            headers = {k: v for k, v in handler.headers.items() if k.lower() not in HOP_BY_HOP}
            headers["Content-Length"] = str(len(body))
            conn.request(handler.command, handler.path, body=body, headers=headers)
            response = conn.getresponse()
            payload = response.read()
            kept = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP]
            return response.status, kept, payload
        finally:
            conn.close()


def _json_error(code: str, message: str) -> tuple[list[tuple[str, str]], bytes]:
    """An error as a REST-JSON AWS service (SESv2) writes it."""
    headers = [
        ("Content-Type", "application/json"),
        ("x-amzn-ErrorType", code),
        ("x-amzn-RequestId", str(uuid.uuid4())),
    ]
    return headers, json.dumps({"message": message}).encode()


def _xml_error(code: str, message: str) -> tuple[list[tuple[str, str]], bytes]:
    """An error as SES v1 (the Query protocol) writes it."""
    request_id = str(uuid.uuid4())
    body = (
        '<ErrorResponse xmlns="http://ses.amazonaws.com/doc/2010-12-01/">'
        f"<Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error>"
        f"<RequestId>{request_id}</RequestId></ErrorResponse>"
    )
    return [("Content-Type", "text/xml"), ("x-amzn-RequestId", request_id)], body.encode()


def _json_of(payload: bytes) -> dict[str, Any]:
    try:
        value = json.loads(payload or b"{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _job_id_of(body: bytes) -> str | None:
    for tag in _json_of(body).get("EmailTags") or []:
        if isinstance(tag, dict) and tag.get("Name") == "orchestrator_job_id":
            return str(tag.get("Value"))
    return None


def _message_id_of(payload: bytes) -> str | None:
    message_id = _json_of(payload).get("MessageId")
    return str(message_id) if message_id else None
