"""The SES provider: one boto3 ``sesv2`` client per process, its request and its answer.

botocore's own retries are off (one attempt per call): a retry inside the SDK would resend a
message the executor believes was sent once, while the executor already retries what is safe.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Mapping
from typing import Any

from orchestrator.config import Settings
from orchestrator.errors import ValidationError
from orchestrator.models import AttemptOutcome, Job, JobKind
from orchestrator.providers.base import Outcome
from orchestrator.providers.registry import ProviderSpec
from orchestrator.providers.ses.errors import classify_error, safe_message
from orchestrator.validation import JOB_ID_METADATA_KEY

SERVICE = "sesv2"
CHARSET = "UTF-8"
# Connections kept per process: above any worker's thread count, so no call waits for one.
HTTP_POOL_SIZE = 64
# One attempt per call. "total_max_attempts" counts the first request (botocore's standard
# retry checker allows another attempt only while attempt_number < total_max_attempts), and a
# retries dict in the client's Config overrides AWS_MAX_ATTEMPTS, AWS_RETRY_MODE and profiles.
RETRIES = {"total_max_attempts": 1, "mode": "standard"}


class SesProvider:
    """Emails through one boto3 ``sesv2`` client, made on first use and shared by threads.

    boto3 clients are thread-safe; sessions are not, so the session is used once, under a
    lock, to make the client (which resolves the credentials chain then).
    """

    name = "ses"
    honours_idempotency_keys = False

    def __init__(
        self,
        session: Any,
        region: str,
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
        pool_size: int = HTTP_POOL_SIZE,
    ) -> None:
        self.region = region
        self._session = session
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._pool_size = pool_size
        self._client: Any = None
        self._lock = threading.Lock()

    def client(self) -> Any:
        """The process's ``sesv2`` client."""
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._session.client(
                        SERVICE, region_name=self.region, config=self._config()
                    )
                client = self._client
        return client

    def _config(self) -> Any:
        from botocore.config import Config  # type: ignore[import-untyped,unused-ignore]

        return Config(
            retries=dict(RETRIES),
            connect_timeout=self._connect_timeout_s,
            read_timeout=self._read_timeout_s,
            max_pool_connections=self._pool_size,
        )

    def execute(self, job: Job, idempotency_key: str) -> Outcome:
        """Send the job's message once. ``idempotency_key`` is unused: SES has none."""
        try:
            client = self.client()
        except Exception as exc:  # e.g. a malformed endpoint URL: nothing was sent
            return Outcome(
                AttemptOutcome.NOT_EXECUTED,
                error_class=type(exc).__name__,
                error_code="client_unavailable",
                message=safe_message(str(exc)),
            )
        try:
            request = send_email_request(job)
        except (KeyError, TypeError, ValueError) as exc:  # params no request can be made of
            return Outcome(
                AttemptOutcome.PERMANENT,
                error_class=type(exc).__name__,
                error_code="invalid_request",
                message=safe_message(str(exc)),
            )
        try:
            response = client.send_email(**request)
        except Exception as exc:
            return classify_error(exc)
        return outcome_of_response(job, response)

    def lookup(self, job: Job) -> Outcome | None:
        """SES has no lookup of a send by our reference (only event publishing, after the
        fact, through a configuration set), so nothing can ever be proven: always None."""
        return None

    def lookup_is_consistent(self, job: Job) -> bool:
        return False


def send_email_request(job: Job) -> dict[str, Any]:
    """The ``SendEmail`` parameters of an email job: identical on every attempt.

    A template send uses the template's own subject (an SES template carries one); the job's
    subject is used with a plain body only.
    """
    params = job.params
    request: dict[str, Any] = {
        "FromEmailAddress": params["from"],
        "Destination": {"ToAddresses": list(params["to"])},
        "EmailTags": [{"Name": JOB_ID_METADATA_KEY, "Value": job.id}],
    }
    if params.get("template"):
        data = json.dumps(params.get("template_data") or {}, sort_keys=True)
        request["Content"] = {
            "Template": {"TemplateName": params["template"], "TemplateData": data}
        }
    else:
        request["Content"] = {
            "Simple": {
                "Subject": {"Data": params["subject"], "Charset": CHARSET},
                "Body": {"Text": {"Data": params["body"], "Charset": CHARSET}},
            }
        }
    return request


def outcome_of_response(job: Job, response: Mapping[str, Any]) -> Outcome:
    """SES accepted the message: its MessageId becomes the job's provider_ref."""
    meta = response.get("ResponseMetadata") or {}
    message_id = response.get("MessageId")
    return Outcome(
        AttemptOutcome.SUCCEEDED,
        # A success must name a provider object; without a message id the job id stands in.
        provider_ref=message_id or f"{JOB_ID_METADATA_KEY}:{job.id}",
        provider_status="accepted",
        http_status=meta.get("HTTPStatusCode"),
        request_id=meta.get("RequestId"),
    )


def configured_region(session: Any) -> str | None:
    """``AWS_REGION`` first (botocore reads only ``AWS_DEFAULT_REGION`` and the profile's)."""
    region = os.environ.get("AWS_REGION", "").strip() or session.region_name
    return str(region) if region else None


def build(settings: Settings) -> SesProvider | None:
    """The SES provider, or None when boto3 is not installed or no region is configured."""
    try:
        import boto3.session  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        return None
    session = boto3.session.Session()
    region = configured_region(session)
    if region is None:
        return None
    return SesProvider(
        session,
        region,
        connect_timeout_s=settings.provider_connect_timeout_s,
        read_timeout_s=settings.provider_read_timeout_s,
    )


def email_checks(request: Mapping[str, Any]) -> None:
    """SES's own limits: at most 50 recipients per message, and template names of letters,
    digits, ``_`` and ``-`` up to 64 characters."""
    if len(request["to"]) > MAX_RECIPIENTS:
        raise ValidationError(f"ses takes at most {MAX_RECIPIENTS} recipients per message")
    template = request.get("template")
    if template and not _TEMPLATE_NAME_RE.fullmatch(template):
        raise ValidationError("an SES template name is 1-64 letters, digits, '_' or '-'")


# SES v2 SendEmail: "The recipients ... can't exceed 50"; CreateEmailTemplate's TemplateName.
MAX_RECIPIENTS = 50
_TEMPLATE_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


SPEC = ProviderSpec(
    name="ses",
    kinds=frozenset({JobKind.EMAIL}),
    build=build,
    email_checks=email_checks,
    # botocore logs whole requests (bodies, signed headers, session tokens) at DEBUG; boto3
    # and urllib3 (botocore's transport) log endpoints and request lines.
    sdk_loggers=("boto3", "botocore", "urllib3"),
)
