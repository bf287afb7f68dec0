"""Who may use the ``/ops`` surface: the ops token, dashboard sessions, sign-in throttling and
the client's address as seen through trusted proxies.

* The JSON API (and ``/ops/openapi.json``) wants ``Authorization: Bearer
  $ORCHESTRATOR_OPS_TOKEN``, compared in constant time (:meth:`OpsAuth.bearer_ok`). No token
  configured: every request is refused (401), never let through.
* The dashboard logs in with the same token through a form. The cookie holds a random
  session id signed with the token (``<issued>.<id>.<HMAC(token, issued.id)>``), never the
  token itself; it is ``HttpOnly``, ``SameSite=Strict``, ``Secure`` when the dashboard is
  reached over https (see below) and expires after :data:`SESSION_TTL_S`. The session also
  lives server-side in Redis (:class:`SessionStore`, same TTL, bound to the token): signing out
  deletes it, so a copied cookie stops working at once, and rotating the token ends every
  session. Redis unavailable: :class:`SessionsUnavailable`, and the dashboard refuses (503),
  never lets a cookie through on its signature alone. Every dashboard POST also carries a
  per-session CSRF token (an HMAC of the session, :meth:`OpsAuth.csrf_for`), so a cross-site
  form cannot act even where SameSite is not enforced.
* Sign-in attempts are throttled per client (:class:`LoginThrottle`): past
  :data:`LOGIN_MAX_FAILURES` failures in :data:`LOGIN_WINDOW_S`, 429 with ``Retry-After``,
  the token not even checked.
* The client address and scheme come from the connection, except when the direct peer is one
  of ``ORCHESTRATOR_TRUSTED_PROXIES``: then ``X-Forwarded-For`` and ``X-Forwarded-Proto`` are
  believed (:class:`ClientInfo`). ``ORCHESTRATOR_PUBLIC_URL=https://...`` makes the cookie
  ``Secure`` whatever the request says.

The routes that use these live in :mod:`orchestrator.ops.http` (JSON API) and
:mod:`orchestrator.ops.dashboard_routes` (dashboard).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis
from starlette.requests import Request

from orchestrator.config import ProxyNetwork
from orchestrator.errors import OrchestratorError
from orchestrator.secrets.tokens import Token, token_reader

SESSION_COOKIE = "orchestrator_ops_session"
# A dashboard session lasts one working day; logging in again is cheap.
SESSION_TTL_S = 8 * 3600
# A cookie issued this far in the future (clock skew between web hosts) is still accepted.
SESSION_SKEW_S = 60
# Failed sign-ins allowed per client in a window; past them: 429 until the window ends.
LOGIN_MAX_FAILURES = 5
LOGIN_WINDOW_S = 15 * 60


class OpsAuth:
    """Bearer checks, dashboard sessions and CSRF tokens, all keyed on the ops token."""

    def __init__(self, token: Token, now: Callable[[], float] = time.time) -> None:
        self._read_token = token_reader(token)  # per request: a rotation applies at once
        self._now = now

    @property
    def _token(self) -> bytes | None:
        return self._read_token()

    def bearer_ok(self, request: Request) -> bool:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if self._token is None or scheme.lower() != "bearer" or not value.strip():
            return False
        return hmac.compare_digest(value.strip().encode(), self._token)

    def token_ok(self, candidate: str) -> bool:
        if self._token is None or not candidate:
            return False
        return hmac.compare_digest(candidate.encode(), self._token)

    def _sign(self, purpose: str, value: str) -> str:
        assert self._token is not None
        return hmac.new(self._token, f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()

    def new_session(self) -> str:
        """A fresh cookie value: issue time, a random id, their HMAC under the token."""
        issued = f"{int(self._now())}.{secrets.token_urlsafe(24)}"
        return f"{issued}.{self._sign('ops-session', issued)}"

    def session_ok(self, cookie: str | None) -> bool:
        """The cookie's own checks (signed under the current token, not expired); whether the
        session still exists server-side is :meth:`SessionStore.active`'s answer."""
        if self._token is None or not cookie:
            return False
        signed, _, sig = cookie.rpartition(".")
        issued, _, session_id = signed.partition(".")
        if (
            not issued.isascii()
            or not issued.isdigit()
            or not session_id
            or not _same(sig, self._sign("ops-session", signed))
        ):
            return False
        age_s = self._now() - int(issued)
        return -SESSION_SKEW_S <= age_s <= SESSION_TTL_S

    def binding(self) -> str:
        """What a server-side session is bound to: a hash of the current token (rotating the
        token orphans every stored session)."""
        return self._sign("ops-session-binding", "token")

    def csrf_for(self, cookie: str) -> str:
        return self._sign("ops-csrf", cookie)[:32]

    def csrf_ok(self, cookie: str, candidate: str) -> bool:
        return bool(candidate) and _same(candidate, self.csrf_for(cookie))


def _same(candidate: str, expected: str) -> bool:
    """Constant-time comparison of text from a client, which may hold any character
    (hmac.compare_digest refuses non-ASCII str: compare the UTF-8 bytes)."""
    return hmac.compare_digest(candidate.encode("utf-8", "replace"), expected.encode())


class SessionsUnavailable(OrchestratorError):
    """Redis could not be asked about sessions or sign-in attempts: the dashboard refuses."""


def _redis_call(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except (redis.RedisError, OSError) as exc:
        raise SessionsUnavailable(f"session store unavailable ({type(exc).__name__})") from exc


class SessionStore:
    """Dashboard sessions in Redis: ``<namespace>:orchestrator:ops:session:<sha256(cookie)>``
    holding the token binding, with a TTL of :data:`SESSION_TTL_S`. Only a hash of the cookie
    is stored, so reading Redis yields no usable cookie. ``client`` None: every call raises
    :class:`SessionsUnavailable` (fail closed)."""

    def __init__(self, client: redis.Redis | None, namespace: str, auth: OpsAuth) -> None:
        self._client = client
        self._prefix = f"{namespace}:orchestrator:ops:session:"
        self._auth = auth

    def _key(self, cookie: str) -> str:
        return self._prefix + hashlib.sha256(cookie.encode("utf-8", "replace")).hexdigest()

    def _redis(self) -> redis.Redis:
        if self._client is None:
            raise SessionsUnavailable("no session store is configured")
        return self._client

    def create(self, cookie: str) -> None:
        client = self._redis()
        _redis_call(lambda: client.set(self._key(cookie), self._auth.binding(), ex=SESSION_TTL_S))

    def active(self, cookie: str) -> bool:
        client = self._redis()
        stored = _redis_call(lambda: client.get(self._key(cookie)))
        return isinstance(stored, str | bytes) and _same(
            stored if isinstance(stored, str) else stored.decode("utf-8", "replace"),
            self._auth.binding(),
        )

    def revoke(self, cookie: str) -> None:
        client = self._redis()
        _redis_call(lambda: client.delete(self._key(cookie)))


# KEYS[1]: the client's counter. ARGV[1]: the window (s). One more attempt, counted atomically
# (concurrent attempts cannot all slip under the limit); the window starts at the first one.
_RESERVE_LUA = """
local n = redis.call('INCR', KEYS[1])
local ttl = redis.call('TTL', KEYS[1])
if ttl < 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {n, ttl}
"""
# A successful sign-in gives its own reservation back (never touches other clients' counters);
# a counter back at zero is dropped.
_RELEASE_LUA = """
local n = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if n <= 1 then
  redis.call('DEL', KEYS[1])
  return 0
end
return redis.call('DECR', KEYS[1])
"""


class LoginThrottle:
    """Sign-in attempts per client in Redis (a fixed window from the first attempt): every
    attempt is counted before the token is checked, a successful one is given back, so at most
    ``limit`` failures pass per ``window_s``; the rest get 429."""

    def __init__(
        self,
        client: redis.Redis | None,
        namespace: str,
        limit: int = LOGIN_MAX_FAILURES,
        window_s: int = LOGIN_WINDOW_S,
    ) -> None:
        self._client = client
        self._prefix = f"{namespace}:orchestrator:ops:login-attempts:"
        self.limit = limit
        self.window_s = window_s
        self._reserve = client.register_script(_RESERVE_LUA) if client is not None else None
        self._release = client.register_script(_RELEASE_LUA) if client is not None else None

    def reserve(self, client_id: str) -> tuple[bool, int]:
        """Count one attempt of ``client_id``: (allowed, seconds until its window ends)."""
        if self._reserve is None:
            raise SessionsUnavailable("no session store is configured")
        script = self._reserve
        key = self._prefix + client_id
        count, ttl = _redis_call(lambda: script(keys=[key], args=[self.window_s]))
        return int(count) <= self.limit, max(1, int(ttl))

    def release(self, client_id: str) -> None:
        """Give a successful attempt's count back."""
        if self._release is None:
            raise SessionsUnavailable("no session store is configured")
        script = self._release
        key = self._prefix + client_id
        _redis_call(lambda: script(keys=[key]))


class ClientInfo:
    """Who is asking and over what scheme: the connection's own values, or what a trusted
    proxy (the direct peer, in ``trusted``) forwarded."""

    def __init__(self, trusted: Sequence[ProxyNetwork], public_url: str | None) -> None:
        self._trusted = tuple(trusted)
        self._public_https = bool(public_url) and str(public_url).lower().startswith("https://")

    def _is_trusted(self, host: str | None) -> bool:
        address = _ip(host)
        return address is not None and any(address in net for net in self._trusted)

    def _peer(self, request: Request) -> str | None:
        return request.client.host if request.client else None

    def client_ip(self, request: Request) -> str:
        """The client's address: the peer's, or (peer trusted) the nearest address in
        X-Forwarded-For that is not a trusted proxy."""
        peer = self._peer(request)
        if not self._is_trusted(peer):
            return peer or "unknown"
        hops = [
            h.strip()
            for value in request.headers.getlist("x-forwarded-for")
            for h in value.split(",")
        ]
        client = peer or "unknown"
        for hop in reversed([h for h in hops if h]):
            if _ip(hop) is None:
                break  # garbage from a proxy: the last hop known is the client
            client = hop
            if not self._is_trusted(hop):
                break
        return client

    def throttle_key(self, request: Request) -> str:
        """The client's address as counted by the throttle (an IPv6 client's /64: one host
        usually holds the whole network)."""
        raw = self.client_ip(request)
        address = _ip(raw)
        if address is None:
            return raw[:100]
        if address.version == 6:
            return str(ipaddress.ip_network(f"{address}/64", strict=False))
        return str(address)

    def https(self, request: Request) -> bool:
        """Whether the browser reached the dashboard over https: ORCHESTRATOR_PUBLIC_URL says
        so, or the connection is TLS, or a trusted peer forwarded ``X-Forwarded-Proto:
        https`` (its own, the last value)."""
        if self._public_https or request.url.scheme == "https":
            return True
        if not self._is_trusted(self._peer(request)):
            return False
        protos = [
            p.strip().lower()
            for value in request.headers.getlist("x-forwarded-proto")
            for p in value.split(",")
        ]
        return bool(protos) and protos[-1] == "https"


def _ip(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped if mapped is not None else address
