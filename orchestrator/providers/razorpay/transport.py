"""The Razorpay SDK's HTTP transport: a ``requests.Session`` that the SDK sends through.

``razorpay.Client`` sends every call through ``client.session`` and then reads the answer
itself, keeping only the ``description`` and raising ``BadRequestError``, ``GatewayError`` or
``ServerError`` by the ``code`` in the JSON body: the HTTP status (429, 409, 5xx), the headers
(``Retry-After``) and any body that is not JSON (an HTML 502 from a proxy) would be lost, and
a network error is printed to stdout before it is re-raised. :class:`RazorpaySession` answers
the SDK only with a successful JSON response; anything else becomes, before the SDK sees it,

* :class:`RazorpayHTTPError`: the status, the headers and the parsed ``error`` object (or the
  raw text) of any non-2xx answer, or of a 2xx answer that is not JSON;
* :class:`RazorpayTransportError`: the ``requests`` exception (connect, read timeout, cut
  connection) as its ``__cause__``.

Neither derives from ``requests.RequestException``, so the SDK's own handlers (its retries,
its prints) never touch them. Every request carries explicit connect and read timeouts (the
SDK has none), the Basic auth read from the settings on every call (a rotated key secret is
used at once), and no retry below the SDK (urllib3 retries nothing; the SDK's own retries
stay off).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from orchestrator.providers.http import clip

# Pooled keep-alive connections: more than a worker's threads, so no call opens its own.
HTTP_POOL_SIZE = 64


class RazorpayHTTPError(Exception):
    """Razorpay (or a proxy in front of it) answered, but not with a successful JSON body."""

    def __init__(
        self,
        http_status: int,
        headers: Mapping[str, str],
        error: Mapping[str, Any] | None,
        text: str,
        *,
        path: str,
    ) -> None:
        description = (error or {}).get("description") or clip(text.strip()) or "no body"
        super().__init__(f"HTTP {http_status} from {path}: {description}")
        self.http_status = http_status
        self.headers = dict(headers)
        # Razorpay's {"error": {"code", "description", "source", "step", "reason",
        # "metadata", "field"}}; None when the body was not shaped like it.
        self.error: Mapping[str, Any] = error or {}
        self.text = clip(text)
        self.path = path

    @property
    def code(self) -> str | None:
        value = self.error.get("code")
        return str(value) if value else None

    @property
    def description(self) -> str:
        value = self.error.get("description")
        return str(value) if value else self.text.strip()

    @property
    def reason(self) -> str | None:
        """Razorpay's ``error.reason`` (``input_validation_failed``, ``payment_cancelled``),
        None when absent or ``NA``."""
        value = self.error.get("reason")
        return str(value) if value and str(value).upper() != "NA" else None

    @property
    def metadata(self) -> Mapping[str, Any]:
        value = self.error.get("metadata")
        return value if isinstance(value, Mapping) else {}


class RazorpayTransportError(Exception):
    """The request failed below HTTP; ``__cause__`` is the ``requests`` exception."""

    def __init__(self, cause: requests.exceptions.RequestException, *, path: str) -> None:
        super().__init__(f"{type(cause).__name__} calling {path}")
        self.path = path


class RazorpaySession(requests.Session):
    """The session the SDK sends through (see the module docstring). Thread-safe as far as
    ``requests`` sessions are: the pool is urllib3's, and nothing here is mutated per call."""

    def __init__(
        self,
        api_base: str,
        auth: Callable[[], tuple[str, str]],
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
    ) -> None:
        super().__init__()
        self._auth_for_call = auth
        self._timeout = (connect_timeout_s, read_timeout_s)
        # The proxy for the API (HTTPS_PROXY / NO_PROXY as set at start) is resolved once;
        # nothing reads the environment or ~/.netrc per call.
        self.trust_env = False
        found = requests.utils.get_environ_proxies(api_base)
        proxy = found.get(urlsplit(api_base).scheme) or found.get("all")
        if proxy:
            self.proxies = {"http": proxy, "https": proxy}
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=HTTP_POOL_SIZE, max_retries=0)
        self.mount("https://", adapter)
        self.mount("http://", adapter)

    def request(
        self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any
    ) -> requests.Response:
        kwargs["timeout"] = self._timeout
        kwargs["allow_redirects"] = False
        if not kwargs.get("auth"):
            kwargs["auth"] = self._auth_for_call()
        path = urlsplit(url if isinstance(url, str) else url.decode()).path
        try:
            response = super().request(method, url, *args, **kwargs)
        except requests.exceptions.RequestException as exc:
            raise RazorpayTransportError(exc, path=path) from exc
        return checked(response, path)


def checked(response: requests.Response, path: str) -> requests.Response:
    """``response`` when it is a 2xx with a JSON body (or a 204); RazorpayHTTPError otherwise.

    The body is read here whole; a connection cut while reading it is a transport error."""
    try:
        text = response.text
    except requests.exceptions.RequestException as exc:
        raise RazorpayTransportError(exc, path=path) from exc
    status = response.status_code
    parsed = _json(text)
    if 200 <= status < 300 and (status == 204 or isinstance(parsed, dict)):
        return response
    error = parsed.get("error") if isinstance(parsed, dict) else None
    raise RazorpayHTTPError(
        status,
        response.headers,
        error if isinstance(error, dict) else None,
        text,
        path=path,
    )


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None
