"""Stripe, through the official SDK: charges as confirmed PaymentIntents, and Refunds.

Every call carries the orchestrator's own deterministic idempotency key and explicit
timeouts; the SDK's own retries stay off (they would invent a random key per call).
:func:`classify_error` is the one place where stripe exceptions become outcomes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import requests
import stripe
import urllib3

from orchestrator.errors import ProviderUnavailable
from orchestrator.models import AttemptOutcome, Job, JobKind
from orchestrator.providers.base import NO_RESPONSE, SERVER_ERROR, Outcome
from orchestrator.validation import JOB_ID_METADATA_KEY

MAX_ERROR_MESSAGE_CHARS = 500

# PaymentIntent statuses, by what they mean for the job.
_PI_SUCCEEDED = {"succeeded", "requires_capture"}
_PI_PENDING = {"processing"}
_PI_FAILED = {"requires_payment_method", "requires_action", "canceled", "requires_confirmation"}
# Refund statuses, by what they mean for the job (failed and canceled refunds moved no money).
_REFUND_SUCCEEDED = {"succeeded"}
_REFUND_PENDING = {"pending", "requires_action"}
_REFUND_RANK = {"succeeded": 0, "pending": 1, "requires_action": 1}
# Refunds listed per page when looking one up (Stripe's maximum page size).
REFUND_LIST_PAGE = 100


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


class StripeProvider:
    """Charges (and refunds) through ``stripe.StripeClient``; safe to share between threads."""

    name = "stripe"
    honours_idempotency_keys = True

    def __init__(
        self,
        api_key: str,
        *,
        api_base: str,
        connect_timeout_s: float,
        read_timeout_s: float,
    ) -> None:
        http_client = http_client_for(api_base, connect_timeout_s, read_timeout_s)
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base},
            http_client=http_client,
            max_network_retries=0,
        )

    # -- execute ---------------------------------------------------------------------------

    def execute(self, job: Job, idempotency_key: str) -> Outcome:
        if job.kind not in (JobKind.CHARGE, JobKind.REFUND):
            raise NotImplementedError(f"stripe does not execute {job.kind} jobs")
        try:
            return self._create(job, idempotency_key)
        except stripe.StripeError as exc:
            return classify_error(exc)
        except Exception as exc:  # a bug or an unexpected library failure mid-call
            return Outcome(
                AttemptOutcome.AMBIGUOUS,
                error_class=type(exc).__name__,
                message=_clip(str(exc)),
                unknown_cause=NO_RESPONSE,
            )

    def _create(self, job: Job, idempotency_key: str) -> Outcome:
        """POST the PaymentIntent (or Refund) through the SDK's ``raw_request``: the same
        request path as ``v1.payment_intents.create`` (parameter encoding, headers, the
        idempotency key, typed errors from the response), without turning the answer into a
        tree of ``StripeObject``s, which took about a sixth of a worker's CPU per charge. The
        outcome needs a few fields of the JSON."""
        if job.kind is JobKind.REFUND:
            response = self._client.raw_request(
                "post", "/v1/refunds", **refund_params(job), idempotency_key=idempotency_key
            )
            return outcome_of_refund(_json_object(response), response.request_id)
        response = self._client.raw_request(
            "post", "/v1/payment_intents", **charge_params(job), idempotency_key=idempotency_key
        )
        return outcome_of_intent(_json_object(response), response.request_id)

    # -- lookup ----------------------------------------------------------------------------

    def lookup(self, job: Job) -> Outcome | None:
        if job.kind is JobKind.REFUND:
            return self._lookup_refund(job)
        try:
            if job.provider_ref:
                intent = self._client.v1.payment_intents.retrieve(job.provider_ref)
                return outcome_of_intent(intent.to_dict(), _request_id(intent))
            query = f"metadata['{JOB_ID_METADATA_KEY}']:'{job.id}'"
            found = self._client.v1.payment_intents.search({"query": query, "limit": 10})
        except stripe.StripeError as exc:
            raise ProviderUnavailable(f"stripe lookup failed: {type(exc).__name__}") from exc
        intents = list(found.data)
        if not intents:
            return None
        # A job makes at most one successful PaymentIntent; prefer it over failed generations.
        intents.sort(key=lambda pi: (pi.status not in _PI_SUCCEEDED, pi.created))
        return outcome_of_intent(intents[0].to_dict(), None)

    def _lookup_refund(self, job: Job) -> Outcome | None:
        """Retrieve the refund we hold a reference to, or find it among the payment intent's
        refunds by ``metadata.orchestrator_job_id`` (a list, unlike search, is consistent)."""
        try:
            if job.provider_ref:
                refund = self._client.v1.refunds.retrieve(job.provider_ref)
                return outcome_of_refund(refund.to_dict(), _request_id(refund))
            listed = self._client.v1.refunds.list(
                {"payment_intent": job.params["payment_intent"], "limit": REFUND_LIST_PAGE}
            )
            mine = [r for r in listed.auto_paging_iter() if _job_id_of(r) == job.id]
        except stripe.StripeError as exc:
            raise ProviderUnavailable(f"stripe lookup failed: {type(exc).__name__}") from exc
        if not mine:
            return None
        # One job makes at most one live refund; prefer it over failed key generations.
        mine.sort(key=lambda r: (_REFUND_RANK.get(str(r.status), 2), r.created))
        return outcome_of_refund(mine[0].to_dict(), None)


def charge_params(job: Job) -> dict[str, Any]:
    """The PaymentIntent parameters for a charge job: identical on every attempt."""
    params: dict[str, Any] = {
        "amount": job.amount,
        "currency": job.currency,
        "payment_method": job.payment_method,
        "confirm": True,
        "metadata": {**job.metadata, JOB_ID_METADATA_KEY: job.id},
    }
    if job.customer:
        params["customer"] = job.customer
    description = job.params.get("description")
    if description:
        params["description"] = description
    return params


def refund_params(job: Job) -> dict[str, Any]:
    """The Refund parameters for a refund job: identical on every attempt."""
    return {
        "payment_intent": job.params["payment_intent"],
        "amount": job.amount,
        "metadata": {**job.metadata, JOB_ID_METADATA_KEY: job.id},
    }


def _kind_of(status: str, succeeded: set[str], pending: set[str]) -> AttemptOutcome:
    """A provider object's status word, as what it means for the job."""
    if status in succeeded:
        return AttemptOutcome.SUCCEEDED
    if status in pending:
        return AttemptOutcome.PENDING
    return AttemptOutcome.PERMANENT


def outcome_of_refund(refund: Mapping[str, Any], request_id: str | None) -> Outcome:
    """What a Refund (its JSON fields) means for the job."""
    status = str(refund["status"])
    kind = _kind_of(status, _REFUND_SUCCEEDED, _REFUND_PENDING)
    failed = kind is AttemptOutcome.PERMANENT
    reason = refund.get("failure_reason") if failed else None
    return Outcome(
        kind,
        provider_ref=str(refund["id"]),
        provider_status=status,
        error_class="RefundStatus" if failed else None,
        error_code=(reason or f"refund_{status}") if failed else None,
        request_id=request_id,
    )


def outcome_of_intent(intent: Mapping[str, Any], request_id: str | None) -> Outcome:
    """What a PaymentIntent (its JSON fields) means for the job."""
    status = str(intent["status"])
    kind = _kind_of(status, _PI_SUCCEEDED, _PI_PENDING)
    error_code = None if kind is not AttemptOutcome.PERMANENT else f"payment_intent_{status}"
    last_error = intent.get("last_payment_error")
    if kind is AttemptOutcome.PERMANENT and isinstance(last_error, Mapping):
        error_code = last_error.get("decline_code") or last_error.get("code") or error_code
    return Outcome(
        kind,
        provider_ref=str(intent["id"]),
        provider_status=status,
        error_class="PaymentIntentStatus" if kind is AttemptOutcome.PERMANENT else None,
        error_code=error_code,
        request_id=request_id,
    )


def classify_error(exc: stripe.StripeError) -> Outcome:
    """Map one stripe exception to what the executor must do with the job."""
    status = exc.http_status
    code = exc.code
    fields: dict[str, Any] = {
        "error_class": type(exc).__name__,
        "error_code": code,
        "message": _clip(exc.user_message or str(exc)),
        "http_status": status,
        "request_id": exc.request_id,
    }
    should_retry = _header(exc.headers, "Stripe-Should-Retry")

    if isinstance(exc, stripe.APIConnectionError):
        return _classify_connection_error(exc, fields)
    if isinstance(exc, stripe.CardError):
        ref = _intent_id_of(exc)
        return Outcome(
            AttemptOutcome.PERMANENT,
            provider_ref=ref,
            **{**fields, "error_code": _decline_code(exc) or code},
        )
    if isinstance(exc, stripe.RateLimitError):
        return Outcome(
            AttemptOutcome.NOT_EXECUTED,
            retry_after_s=_retry_after(exc.headers),
            **{**fields, "error_code": code or "rate_limited"},
        )
    if isinstance(exc, stripe.IdempotencyError):
        # Our parameters for this key changed: a bug. The first request may have executed.
        return Outcome(AttemptOutcome.AMBIGUOUS, unknown_cause=SERVER_ERROR, **fields)
    if status == 409:
        # idempotency_key_in_use: the same key is executing elsewhere; its saved result
        # will answer a later retry with the same key.
        return Outcome(
            AttemptOutcome.NOT_EXECUTED, retry_after_s=_retry_after(exc.headers), **fields
        )
    if status is not None and status >= 500:
        if should_retry == "true":
            return Outcome(AttemptOutcome.NOT_EXECUTED, **fields)
        # Stripe saved this 5xx against the key: resending replays it. Look the object up.
        return Outcome(AttemptOutcome.AMBIGUOUS, unknown_cause=SERVER_ERROR, **fields)
    if should_retry == "true":
        return Outcome(AttemptOutcome.NOT_EXECUTED, **fields)
    if isinstance(
        exc,
        (stripe.InvalidRequestError, stripe.AuthenticationError, stripe.PermissionError),
    ) or (status is not None and 400 <= status < 500):
        return Outcome(AttemptOutcome.PERMANENT, **fields)
    return Outcome(AttemptOutcome.AMBIGUOUS, unknown_cause=SERVER_ERROR, **fields)


# The network errors behind an APIConnectionError: urllib3's (Urllib3Client), and requests'
# (the SDK's default client). urllib3's NewConnectionError is a ConnectTimeoutError too.
_CONNECT_TIMEOUTS = (requests.exceptions.ConnectTimeout, urllib3.exceptions.ConnectTimeoutError)
_READ_TIMEOUTS = (requests.exceptions.ReadTimeout, urllib3.exceptions.ReadTimeoutError)


def _proxy_auth(proxy: str) -> dict[str, str] | None:
    """``Proxy-Authorization`` for a proxy URL with credentials (urllib3 does not read them)."""
    user, password = requests.utils.get_auth_from_url(proxy)
    return urllib3.make_headers(proxy_basic_auth=f"{user}:{password}") if user else None


def _classify_connection_error(exc: stripe.APIConnectionError, fields: dict[str, Any]) -> Outcome:
    cause = exc.__cause__
    if isinstance(cause, _CONNECT_TIMEOUTS) or _refused(cause):
        # The connection never opened: nothing was sent.
        return Outcome(AttemptOutcome.NOT_EXECUTED, **{**fields, "error_code": "connect_failed"})
    code = "read_timeout" if isinstance(cause, _READ_TIMEOUTS) else "no_response"
    return Outcome(
        AttemptOutcome.AMBIGUOUS, unknown_cause=NO_RESPONSE, **{**fields, "error_code": code}
    )


def _refused(cause: BaseException | None) -> bool:
    """A ConnectionError raised while opening the connection (refused, DNS, unreachable)."""
    seen = 0
    while cause is not None and seen < 8:
        if isinstance(cause, ConnectionRefusedError):
            return True
        name = type(cause).__name__
        if name in {"NewConnectionError", "NameResolutionError"}:
            return True
        for arg in getattr(cause, "args", ()):
            if isinstance(arg, ConnectionRefusedError):
                return True
            if type(arg).__name__ in {"NewConnectionError", "NameResolutionError"}:
                return True
            reason = getattr(arg, "reason", None)
            if type(reason).__name__ in {"NewConnectionError", "NameResolutionError"}:
                return True
        cause = cause.__cause__ or cause.__context__
        seen += 1
    return False


def _error_body(exc: stripe.StripeError) -> Mapping[str, Any]:
    body: Any = exc.json_body or {}
    error = body.get("error") if isinstance(body, Mapping) else None
    return error if isinstance(error, Mapping) else {}


def _intent_id_of(exc: stripe.CardError) -> str | None:
    intent = _error_body(exc).get("payment_intent")
    ref = intent.get("id") if isinstance(intent, Mapping) else None
    return str(ref) if ref else None


def _decline_code(exc: stripe.CardError) -> str | None:
    code = _error_body(exc).get("decline_code")
    return str(code) if code else None


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    if not headers:
        return None
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


def _retry_after(headers: Mapping[str, str] | None) -> float | None:
    value = _header(headers, "Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _job_id_of(obj: Any) -> str | None:
    metadata: Any = getattr(obj, "metadata", None)  # a StripeObject: no .get()
    if metadata is None or JOB_ID_METADATA_KEY not in metadata:
        return None
    return str(metadata[JOB_ID_METADATA_KEY])


def _json_object(response: stripe.StripeResponse) -> Mapping[str, Any]:
    data = response.data
    if not isinstance(data, Mapping) or "id" not in data or "status" not in data:
        raise stripe.APIError("unexpected response body", http_status=response.code)
    return data


def _request_id(obj: Any) -> str | None:
    response = getattr(obj, "last_response", None)
    return getattr(response, "request_id", None) if response is not None else None


def _clip(message: str) -> str:
    return message if len(message) <= MAX_ERROR_MESSAGE_CHARS else message[:MAX_ERROR_MESSAGE_CHARS]
