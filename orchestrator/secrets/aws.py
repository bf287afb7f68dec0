"""AWS Secrets Manager through boto3, which stays optional (the ``aws`` extra): it is
imported only when a setting holds an ``aws-sm://`` reference.

The client follows the standard AWS configuration: credentials from the usual chain
(environment, profile, container or instance role), the endpoint from
``AWS_ENDPOINT_URL_SECRETS_MANAGER`` or ``AWS_ENDPOINT_URL`` (botocore reads both itself), the
region from ``AWS_REGION``, else botocore's own ``AWS_DEFAULT_REGION`` / profile (botocore
ignores ``AWS_REGION``; other AWS SDKs honour it, so it is passed on here), or from the ARN
when a reference names one, since a secret must be read in its own region.

Every call is bounded: short connect and read timeouts and a single retry. A start-up that
cannot resolve a reference fails at once; a refresh that cannot is tried again later while
the last good value stays in use, so waiting longer buys nothing.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

from orchestrator.secrets.references import ResolveError

CONNECT_TIMEOUT_S = 2.0
READ_TIMEOUT_S = 5.0
# botocore's "standard" retry mode: max_attempts counts the retries after the first call.
MAX_RETRIES = 1
SERVICE = "secretsmanager"
INSTALL_HINT = "pip install 'durable-payment-orchestrator[aws]'"

_NOT_FOUND = "ResourceNotFoundException"
_DENIED = frozenset(
    {
        "AccessDeniedException",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "ExpiredTokenException",
        "InvalidClientTokenId",
    }
)


class SecretsManager:
    """Reads SecretStrings; one client per region, created on first use and shared by every
    thread (boto3 clients are thread-safe, their sessions are not: each gets its own)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ: Mapping[str, str] = os.environ if environ is None else environ
        self._clients: dict[str | None, Any] = {}
        self._lock = threading.Lock()

    def secret_string(self, secret_id: str) -> str:
        client = self._client(_region_of(secret_id) or self._environ.get("AWS_REGION") or None)
        from botocore.exceptions import (  # type: ignore[import-untyped,unused-ignore]
            BotoCoreError,
            ClientError,
            ConnectionClosedError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            PartialCredentialsError,
            ReadTimeoutError,
        )

        try:
            answer = client.get_secret_value(SecretId=secret_id)
        except ClientError as exc:
            raise ResolveError(
                _refusal(str(exc.response.get("Error", {}).get("Code", "")))
            ) from None
        except (NoCredentialsError, PartialCredentialsError):
            raise ResolveError("no AWS credentials found") from None
        except (
            EndpointConnectionError,
            ConnectTimeoutError,
            ReadTimeoutError,
            ConnectionClosedError,
        ) as exc:
            raise ResolveError(f"Secrets Manager is unreachable ({type(exc).__name__})") from None
        except BotoCoreError as exc:
            raise ResolveError(f"the Secrets Manager call failed ({type(exc).__name__})") from None
        value = answer.get("SecretString")
        if not isinstance(value, str):
            raise ResolveError("the secret holds binary data, not a SecretString")
        return value

    def _client(self, region: str | None) -> Any:
        with self._lock:
            client = self._clients.get(region)
            if client is None:
                client = self._clients[region] = _new_client(region)
            return client


def _new_client(region: str | None) -> Any:
    try:
        import boto3  # type: ignore[import-untyped,unused-ignore]
        from botocore.config import Config  # type: ignore[import-untyped,unused-ignore]
        from botocore.exceptions import (  # type: ignore[import-untyped,unused-ignore]
            NoRegionError,
        )
    except ImportError:
        raise ResolveError(f"aws-sm:// references need boto3 ({INSTALL_HINT})") from None
    config = Config(
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        retries={"mode": "standard", "max_attempts": MAX_RETRIES},
    )
    try:
        return boto3.session.Session().client(SERVICE, region_name=region, config=config)
    except NoRegionError:
        raise ResolveError("no AWS region is configured (set AWS_REGION)") from None
    except Exception as exc:  # e.g. a malformed AWS_ENDPOINT_URL
        raise ResolveError(
            f"cannot create a Secrets Manager client ({type(exc).__name__})"
        ) from None


def _region_of(secret_id: str) -> str | None:
    """``arn:aws:secretsmanager:eu-west-1:123456789012:secret:name-AbCdEf`` -> eu-west-1."""
    parts = secret_id.split(":")
    if len(parts) >= 7 and parts[0] == "arn" and parts[2] == SERVICE and parts[3]:
        return parts[3]
    return None


def _refusal(code: str) -> str:
    if code == _NOT_FOUND:
        return "secret not found"
    if code in _DENIED:
        return f"access denied ({code})"
    if code == "DecryptionFailure":
        return "the secret cannot be decrypted (DecryptionFailure)"
    return f"Secrets Manager refused the request ({code or 'no error code'})"
