"""Amazon SES (API v2), through boto3: emails as ``SendEmail`` calls.

SES keeps no idempotency keys: a request sent twice is delivered twice, and SES offers no
read-your-write lookup of a send. So, as for SendGrid, every outcome that may have delivered
(a cut connection, a read timeout, any 5xx) is reported as ambiguous and the executor never
retries it blindly (``honours_idempotency_keys`` is False): the job goes ``dead`` with reason
``ambiguous`` unless it opted into at-least-once delivery. Each message carries the email tag
``orchestrator_job_id`` (a UUID: only letters, digits and dashes, as tag values must be), which
SES passes on to event publishing (configuration sets), so a send can be traced there.

Configuration is AWS's own, read by boto3: the default credentials chain, the region from
``AWS_REGION`` (which botocore itself ignores; it is the variable other AWS SDKs, Lambda and
ECS set, so it wins here) or ``AWS_DEFAULT_REGION`` or the profile, and the endpoint from
``AWS_ENDPOINT_URL_SESV2`` / ``AWS_ENDPOINT_URL`` (botocore's configured endpoint URLs). boto3
is the optional extra ``aws``, imported on first use; without it, or without a region, the
provider is not configured.

The provider and its request are in ``provider.py``; botocore's exceptions become outcomes in
``errors.py``.
"""

from orchestrator.providers.ses.errors import classify_error, safe_message
from orchestrator.providers.ses.provider import (
    SPEC,
    SesProvider,
    build,
    configured_region,
    outcome_of_response,
    send_email_request,
)

__all__ = [
    "SPEC",
    "SesProvider",
    "build",
    "classify_error",
    "configured_region",
    "outcome_of_response",
    "safe_message",
    "send_email_request",
]
