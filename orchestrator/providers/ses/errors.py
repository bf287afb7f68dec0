"""SES's failures as outcomes: the one place where botocore's exceptions are classified.

* ``ClientError``: SES answered. Throttling (``TooManyRequestsException``, ``Throttling``,
  ``ThrottlingException`` or HTTP 429) is not executed: SES drops a throttled message and does
  not deliver it. Any other 4xx is permanent (when a call fails, SES does not send the email),
  except a 408 (the request did not reach SES whole). Any 5xx is ambiguous: SES documents no
  5xx as "not accepted"; its API reference advises slow retries of 5xx precisely to limit
  duplicates, so a 503 is no proof either.
* botocore's ``ConnectionError`` family (``EndpointConnectionError``, ``ConnectTimeoutError``,
  ``ProxyConnectionError``): botocore raises them only while connecting, before a byte of the
  request went out. ``SSLError`` belongs to that family, but urllib3 also raises it while
  reading an answer, so only a failed certificate check (part of the handshake) is unsent.
* ``HTTPClientError`` (``ReadTimeoutError``, ``ConnectionClosedError``, ...): the request was
  sent, or partly sent, and nothing usable came back.
* Missing credentials, an unresolvable endpoint and invalid parameters are raised before
  anything is sent.
* Anything else (a bug, an answer that could not be parsed) may follow a send: ambiguous.

Messages are stored on the job: they are cleared of anything that could be a credential.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from orchestrator.models import AttemptOutcome
from orchestrator.providers.base import NO_RESPONSE, SERVER_ERROR, Outcome
from orchestrator.providers.http import clip, retry_after_s

# What SES answers when the account's sending rate or daily quota is exceeded: SESv2's own
# exception (HTTP 429), the generic AWS code, and SES v1's (HTTP 400).
THROTTLING_CODES = frozenset({"TooManyRequestsException", "ThrottlingException", "Throttling"})
RATE_LIMITED_STATUS = 429
# The daily quota shares the throttling codes; its message tells it apart for operators.
DAILY_QUOTA_RE = re.compile(r"daily message quota", re.IGNORECASE)
# SES did not receive the whole request in time, so it did not act on it.
REQUEST_TIMEOUT_STATUS = 408
# Raised while looking for credentials, before a request is signed (let alone sent). On EC2
# or ECS a metadata endpoint that did not answer in time surfaces as one of these, so they are
# retried rather than failed.
CREDENTIAL_ERRORS = (
    "NoCredentialsError",
    "PartialCredentialsError",
    "CredentialRetrievalError",
    "NoAuthTokenError",
    "TokenRetrievalError",
)
# Raised while resolving a request's endpoint, before it is sent.
ENDPOINT_ERRORS = ("BaseEndpointResolverError", "EndpointProviderError")
# SigV4 signature errors quote the canonical request, whose signed headers include a session
# token: nothing from these markers on is kept. Access key ids are masked wherever they appear.
_SIGNATURE_DETAIL_RE = re.compile(r"The Canonical String|The String-to-Sign", re.IGNORECASE)
_ACCESS_KEY_RE = re.compile(r"\b(AKIA|ASIA|AROA|AIDA)[A-Z0-9]{12,}\b")
_URL_USERINFO_RE = re.compile(r"(?<=://)[^/@\s]+@")


def classify_error(exc: BaseException) -> Outcome:
    """Map one exception raised by a boto3 call to what the executor must do."""
    errors = _botocore_exceptions()
    if isinstance(exc, errors.ClientError):
        return _classify_client_error(exc)
    if isinstance(exc, errors.SSLError) and not _certificate_rejected(exc):
        return _ambiguous(exc, "no_response")  # TLS broke, maybe after the request went out
    if isinstance(exc, errors.ConnectionError):
        return _not_executed(exc, "connect_failed")
    if isinstance(exc, errors.ReadTimeoutError):
        return _ambiguous(exc, "read_timeout")
    if isinstance(exc, errors.HTTPClientError):
        return _ambiguous(exc, "no_response")
    if isinstance(exc, _classes(errors, CREDENTIAL_ERRORS)):
        return _not_executed(exc, "credentials_unavailable")
    if isinstance(exc, _classes(errors, ENDPOINT_ERRORS)):
        return _not_executed(exc, "endpoint_unresolved")
    if isinstance(exc, errors.ParamValidationError | errors.ValidationError):
        return Outcome(
            AttemptOutcome.PERMANENT,
            error_class=type(exc).__name__,
            error_code="invalid_request",
            message=safe_message(str(exc)),
        )
    return _ambiguous(exc, "unexpected_error")


def _classify_client_error(exc: Any) -> Outcome:
    response: Mapping[str, Any] = getattr(exc, "response", None) or {}
    error = response.get("Error") or {}
    meta = response.get("ResponseMetadata") or {}
    code = str(error.get("Code") or "")
    status = int(meta.get("HTTPStatusCode") or 0)
    message = str(error.get("Message") or "")
    fields: dict[str, Any] = {
        "error_class": type(exc).__name__,
        "error_code": code or f"http_{status}",
        "message": safe_message(message) or None,
        "http_status": status if 100 <= status <= 599 else None,
        "request_id": meta.get("RequestId"),
    }
    if code in THROTTLING_CODES or status == RATE_LIMITED_STATUS:
        quota = bool(DAILY_QUOTA_RE.search(message))
        return Outcome(
            AttemptOutcome.NOT_EXECUTED,
            retry_after_s=retry_after_s(meta.get("HTTPHeaders")),
            **{**fields, "error_code": "daily_quota_exceeded" if quota else "rate_limited"},
        )
    if status == REQUEST_TIMEOUT_STATUS:
        return Outcome(AttemptOutcome.NOT_EXECUTED, **fields)
    if 400 <= status < 500:
        return Outcome(AttemptOutcome.PERMANENT, **fields)
    return Outcome(AttemptOutcome.AMBIGUOUS, unknown_cause=SERVER_ERROR, **fields)


def _not_executed(exc: BaseException, code: str) -> Outcome:
    return Outcome(
        AttemptOutcome.NOT_EXECUTED,
        error_class=type(exc).__name__,
        error_code=code,
        message=safe_message(str(exc)),
    )


def _ambiguous(exc: BaseException, code: str) -> Outcome:
    return Outcome(
        AttemptOutcome.AMBIGUOUS,
        error_class=type(exc).__name__,
        error_code=code,
        message=safe_message(str(exc)),
        unknown_cause=NO_RESPONSE,
    )


def _certificate_rejected(exc: BaseException) -> bool:
    """Whether a botocore ``SSLError`` is a failed certificate check (in the handshake,
    before the request was sent), found in its wrapped error or their causes."""
    seen: set[int] = set()
    pending: list[Any] = [getattr(exc, "kwargs", {}).get("error"), exc.__cause__, exc.__context__]
    while pending:
        item = pending.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, ssl.SSLCertVerificationError):
            return True
        if isinstance(item, BaseException):
            pending.extend([*item.args, item.__cause__, item.__context__])
    return False


def safe_message(message: str) -> str:
    """An SDK message fit for a job row: no signature details, access keys or URL
    credentials, cut to what the row keeps."""
    message = _SIGNATURE_DETAIL_RE.split(message, maxsplit=1)[0].strip()
    message = _ACCESS_KEY_RE.sub("[access key]", message)
    return clip(_URL_USERINFO_RE.sub("", message))


def _classes(module: ModuleType, names: tuple[str, ...]) -> tuple[type[BaseException], ...]:
    """The exception classes of ``module`` named (an older botocore may lack one)."""
    return tuple(getattr(module, name) for name in names if hasattr(module, name))


def _botocore_exceptions() -> ModuleType:
    """botocore's exceptions, imported when first needed (boto3 is an optional extra)."""
    import botocore.exceptions  # type: ignore[import-untyped,unused-ignore]

    module: ModuleType = botocore.exceptions
    return module
