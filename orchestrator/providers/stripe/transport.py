"""The Stripe SDK's HTTP transport: a thread-safe urllib3 pool with explicit timeouts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import requests
import stripe
import urllib3

# Pooled keep-alive connections per host: more than a worker's threads, so that no call has
# to open (and then drop) a connection of its own.
HTTP_POOL_SIZE = 64


def http_client_for(
    api_base: str, connect_timeout_s: float, read_timeout_s: float
) -> stripe.HTTPClient:
    """The HTTP client the SDK sends through, with the proxy environment read once.

    The proxy for ``api_base`` (``HTTPS_PROXY`` and ``NO_PROXY`` as set when the process
    started) is resolved here; nothing reads the environment or ``~/.netrc`` per call.
    """
    found = requests.utils.get_environ_proxies(api_base)
    proxy = found.get(urlsplit(api_base).scheme) or found.get("all")
    return Urllib3Client(connect_timeout_s, read_timeout_s, proxy=proxy)


class Urllib3Client(stripe.HTTPClient):
    """The SDK's transport on a thread-safe urllib3 pool: what the SDK's ``RequestsClient``
    does (Stripe's CA bundle, connect and read timeouts, no retries, no redirects, errors as
    ``APIConnectionError`` caused by the network error) without the requests session layer
    (settings merging, hooks, cookies, environment lookups), which cost about a quarter of a
    worker's CPU per call."""

    name = "urllib3"

    def __init__(
        self, connect_timeout_s: float, read_timeout_s: float, *, proxy: str | None = None
    ) -> None:
        super().__init__(verify_ssl_certs=True, proxy=proxy)
        options: dict[str, Any] = {
            "maxsize": HTTP_POOL_SIZE,
            "block": False,
            "retries": False,
            "timeout": urllib3.Timeout(connect=connect_timeout_s, read=read_timeout_s),
            "cert_reqs": "CERT_REQUIRED",
            "ca_certs": stripe.ca_bundle_path,
        }
        self._pool: urllib3.PoolManager = (
            urllib3.ProxyManager(proxy, proxy_headers=_proxy_auth(proxy), **options)
            if proxy
            else urllib3.PoolManager(**options)
        )

    # bytes, as the SDK's own RequestsClient returns (its base class says str).
    def request(  # type: ignore[override]
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        post_data: Any = None,
        **_: Any,
    ) -> tuple[bytes, int, Mapping[str, str]]:
        response = self._send(method, url, headers, post_data, preload_content=True)
        return response.data, response.status, response.headers

    def request_stream(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        post_data: Any = None,
        **_: Any,
    ) -> tuple[Any, int, Mapping[str, str]]:
        response = self._send(method, url, headers, post_data, preload_content=False)
        return response, response.status, response.headers

    def _send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        body: Any,
        *,
        preload_content: bool,
    ) -> urllib3.BaseHTTPResponse:
        try:
            return self._pool.request(
                method.upper(),
                url,
                body=body,
                headers=dict(headers or {}),
                redirect=False,
                preload_content=preload_content,
            )
        except Exception as exc:
            retry = isinstance(exc, urllib3.exceptions.HTTPError) and not isinstance(
                exc, urllib3.exceptions.SSLError
            )
            raise stripe.APIConnectionError(  # type: ignore[no-untyped-call]
                f"Unexpected error communicating with Stripe. ({type(exc).__name__}: {exc})",
                should_retry=retry,
            ) from exc

    def close(self) -> None:
        self._pool.clear()


def _proxy_auth(proxy: str) -> dict[str, str] | None:
    """``Proxy-Authorization`` for a proxy URL with credentials (urllib3 does not read them)."""
    user, password = requests.utils.get_auth_from_url(proxy)
    return urllib3.make_headers(proxy_basic_auth=f"{user}:{password}") if user else None
