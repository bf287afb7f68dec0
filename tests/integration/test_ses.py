"""Amazon SES sends: real boto3 over real HTTP to moto's server, through a fault-injecting proxy.

What SES "delivered" is read from moto's backend in this process (tests/aws.py), never from
the code under test; the proxy (tests/aws_proxy.py) decides per request whether the request
reaches moto and whether its answer reaches the client.
"""

from __future__ import annotations

import json
import ssl
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import botocore.exceptions as bce
import botocore.session
import pytest
import urllib3.exceptions
from botocore.parsers import ResponseParserError

from orchestrator import JobState
from orchestrator.breaker import Signal, signal_of
from orchestrator.models import AttemptOutcome, JobKind
from orchestrator.providers import registry
from orchestrator.providers.ses import build, classify_error, safe_message
from tests import aws
from tests.aws_proxy import FaultProxy
from tests.conftest import count_jobs, orchestrator_like, wait_until

SENDER = "billing@example.com"
# A SendGrid-shaped id (what send_email validates), which is also a valid SES template name.
TEMPLATE = "d-" + "a" * 32
ENDPOINT = "https://email.us-east-1.amazonaws.com/v2/email/outbound-emails"
AWS_VARIABLES_RESET = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_SESV2",
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_MAX_ATTEMPTS",
    "AWS_RETRY_MODE",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
)

# -- classification, with botocore's own exception objects ------------------------------------

_MODELED = botocore.session.get_session().create_client(
    "sesv2", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y"
)


def _client_error(code: str, status: int, message: str = "x", **headers: str) -> Exception:
    """What botocore raises for an SES error answer: the modeled class when SESv2 models it."""
    response = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {
            "HTTPStatusCode": status,
            "RequestId": "req-1",
            "HTTPHeaders": headers,
        },
    }
    cls = getattr(_MODELED.exceptions, code, bce.ClientError)
    return cls(response, "SendEmail")


def _ssl_error(reason: Exception) -> Exception:
    return bce.SSLError(endpoint_url=ENDPOINT, error=urllib3.exceptions.SSLError(reason))


NX, AMBIGUOUS, PERMANENT = (
    AttemptOutcome.NOT_EXECUTED,
    AttemptOutcome.AMBIGUOUS,
    AttemptOutcome.PERMANENT,
)
RATE, FAIL, HEALTHY, NEUTRAL = Signal.RATE_LIMITED, Signal.FAILURE, Signal.SUCCESS, Signal.NEUTRAL
RATE_MESSAGE, QUOTA_MESSAGE = "Maximum sending rate exceeded.", "Daily message quota exceeded."
# SES answered: (error code, HTTP status, message, outcome, error_code, breaker signal).
ANSWERS: list[tuple[str, int, str, AttemptOutcome, str, Signal]] = [
    ("TooManyRequestsException", 429, RATE_MESSAGE, NX, "rate_limited", RATE),
    ("Throttling", 400, RATE_MESSAGE, NX, "rate_limited", RATE),
    ("ThrottlingException", 400, QUOTA_MESSAGE, NX, "daily_quota_exceeded", NEUTRAL),
    ("SlowDown", 429, "x", NX, "rate_limited", RATE),
    ("RequestTimeout", 408, "x", NX, "RequestTimeout", NEUTRAL),
    ("MessageRejected", 400, "x", PERMANENT, "MessageRejected", HEALTHY),
    ("MailFromDomainNotVerifiedException", 400, "x", PERMANENT, "", HEALTHY),
    ("MailFromDomainNotVerified", 400, "x", PERMANENT, "", HEALTHY),
    ("AccountSuspendedException", 400, "x", PERMANENT, "", HEALTHY),
    ("SendingPausedException", 400, "x", PERMANENT, "", HEALTHY),
    ("NotFoundException", 404, "x", PERMANENT, "", HEALTHY),
    ("BadRequestException", 400, "x", PERMANENT, "", HEALTHY),
    ("LimitExceededException", 400, "x", PERMANENT, "", HEALTHY),
    ("UnrecognizedClientException", 403, "x", PERMANENT, "", HEALTHY),
    ("InternalFailure", 500, "x", AMBIGUOUS, "", FAIL),
    ("BadGateway", 502, "x", AMBIGUOUS, "", FAIL),
    ("ServiceUnavailable", 503, "x", AMBIGUOUS, "", FAIL),
]
# Raised by botocore without an answer, or by anything else: (id, exception, outcome, ...).
RAISED: list[tuple[str, Exception, AttemptOutcome, str, Signal]] = [
    ("refused", bce.EndpointConnectionError(endpoint_url=ENDPOINT), NX, "connect_failed", FAIL),
    (
        "connect-timeout",
        bce.ConnectTimeoutError(endpoint_url=ENDPOINT, error="timed out"),
        NX,
        "connect_failed",
        FAIL,
    ),
    (
        "proxy-refused",
        bce.ProxyConnectionError(proxy_url="http://proxy:3128", error="refused"),
        NX,
        "connect_failed",
        FAIL,
    ),
    (
        "certificate",
        _ssl_error(ssl.SSLCertVerificationError(1, "certificate verify failed")),
        NX,
        "connect_failed",
        FAIL,
    ),
    ("tls-broken", _ssl_error(ssl.SSLError(1, "bad record mac")), AMBIGUOUS, "no_response", FAIL),
    ("read-timeout", bce.ReadTimeoutError(endpoint_url=ENDPOINT), AMBIGUOUS, "read_timeout", FAIL),
    ("closed", bce.ConnectionClosedError(endpoint_url=ENDPOINT), AMBIGUOUS, "no_response", FAIL),
    ("streaming", bce.ResponseStreamingError(error="reset"), AMBIGUOUS, "no_response", FAIL),
    ("http-client", bce.HTTPClientError(error="boom"), AMBIGUOUS, "no_response", FAIL),
    ("no-credentials", bce.NoCredentialsError(), NX, "credentials_unavailable", NEUTRAL),
    (
        "partial-credentials",
        bce.PartialCredentialsError(provider="env", cred_var="AWS_SECRET_ACCESS_KEY"),
        NX,
        "credentials_unavailable",
        NEUTRAL,
    ),
    (
        "credential-retrieval",
        bce.CredentialRetrievalError(provider="container-role", error_msg="timed out"),
        NX,
        "credentials_unavailable",
        NEUTRAL,
    ),
    ("endpoint-rules", bce.EndpointResolutionError(msg="none"), NX, "endpoint_unresolved", NEUTRAL),
    ("params", bce.ParamValidationError(report="no From"), PERMANENT, "invalid_request", HEALTHY),
    ("unparsable", ResponseParserError("bad"), AMBIGUOUS, "unexpected_error", FAIL),
    ("bug", RuntimeError("bug"), AMBIGUOUS, "unexpected_error", FAIL),
]
CASES = [
    (f"{code}-{status}", _client_error(code, status, message), kind, out or code, signal)
    for code, status, message, kind, out, signal in ANSWERS
] + RAISED


@pytest.mark.parametrize(
    ("exc", "kind", "code", "signal"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_classification(exc: Exception, kind: AttemptOutcome, code: str, signal: Signal) -> None:
    """Throttling and anything raised before a byte went out is not executed (retried); other
    4xx are permanent; 5xx and anything after the request went out are ambiguous, so a send
    is never repeated blindly. The breaker counts 5xx, timeouts and refused connections."""
    outcome = classify_error(exc)
    assert (outcome.kind, outcome.error_code) == (kind, code)
    assert signal_of(outcome) is signal
    if kind is AMBIGUOUS and outcome.http_status is None:
        assert outcome.unknown_cause == "no_response"
    if kind is AMBIGUOUS and outcome.http_status is not None:
        assert outcome.unknown_cause == "server_error"


def test_client_error_details_and_retry_after() -> None:
    outcome = classify_error(
        _client_error(
            "TooManyRequestsException",
            429,
            "Maximum sending rate exceeded.",
            **{"retry-after": "3"},
        )
    )
    assert outcome.retry_after_s == 3.0
    assert outcome.request_id == "req-1"
    assert outcome.error_summary == (
        "TooManyRequestsException HTTP 429 rate_limited: Maximum sending rate exceeded."
    )


def test_messages_keep_no_credentials() -> None:
    """A signature error quotes the canonical request (signed headers, the session token):
    none of it, and no access key id, reaches the job row; messages are clipped."""
    message = (
        "The request signature we calculated does not match the signature you provided. "
        "Check your AWS Secret Access Key. Key AKIAIOSFODNN7EXAMPLE. The Canonical String for "
        "this request should have been 'POST\n/v2/email/outbound-emails\n\nhost:email\n"
        "x-amz-security-token:FQoGZXIvYXdzEXAMPLETOKEN\n'"
    )
    outcome = classify_error(_client_error("SignatureDoesNotMatch", 403, message))
    assert outcome.kind is PERMANENT
    assert "AKIAIOSFODNN7EXAMPLE" not in (outcome.message or "")
    assert "EXAMPLETOKEN" not in (outcome.message or "")
    assert outcome.message is not None and outcome.message.startswith("The request signature")
    assert safe_message("x" * 2000) == "x" * 500
    assert "secret" not in safe_message('Could not connect to "https://user:secret@host/"')


# -- configuration --------------------------------------------------------------------------


def _settings(**extra: float) -> Any:
    return SimpleNamespace(
        provider_connect_timeout_s=extra.get("connect", 1.5),
        provider_read_timeout_s=extra.get("read", 4.0),
    )


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """moto's credentials and region; no profile, config file or endpoint of this machine."""
    for name in AWS_VARIABLES_RESET:
        monkeypatch.delenv(name, raising=False)
    for name, value in aws.AWS_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    return monkeypatch


def test_registered_for_emails_only() -> None:
    spec = registry.spec("ses")
    assert spec.kinds == frozenset({JobKind.EMAIL})
    assert {"botocore", "boto3"} <= set(spec.sdk_loggers)
    with pytest.raises(ValueError, match="'ses' does not execute charge jobs"):
        registry.provider_for("ses", JobKind.CHARGE)


def test_not_configured_without_a_region_or_without_boto3(aws_env: pytest.MonkeyPatch) -> None:
    aws_env.delenv("AWS_REGION")
    aws_env.delenv("AWS_DEFAULT_REGION")
    assert build(_settings()) is None
    aws_env.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    provider = build(_settings())
    assert provider is not None and provider.region == "eu-west-1"
    # AWS_REGION, which botocore ignores, wins (as in the other AWS SDKs).
    aws_env.setenv("AWS_REGION", "eu-central-1")
    provider = build(_settings())
    assert provider is not None and provider.region == "eu-central-1"
    aws_env.setitem(sys.modules, "boto3", None)
    aws_env.setitem(sys.modules, "boto3.session", None)
    assert build(_settings()) is None


def test_one_attempt_explicit_timeouts_and_one_shared_client(aws_env: pytest.MonkeyPatch) -> None:
    """botocore's retries stay off even when the environment asks for them; the client is
    made once however many threads ask for it at the same time."""
    aws_env.setenv("AWS_MAX_ATTEMPTS", "5")
    aws_env.setenv("AWS_RETRY_MODE", "adaptive")
    provider = build(_settings(connect=1.5, read=4.0))
    assert provider is not None
    made: list[Any] = []
    real_client = provider._session.client

    def counting_client(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.05)  # widen the window in which threads race for the first client
        made.append(real_client(*args, **kwargs))
        return made[-1]

    provider._session.client = counting_client
    seen: list[Any] = []
    threads = [threading.Thread(target=lambda: seen.append(provider.client())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 1 and all(c is made[0] for c in seen)
    config = made[0].meta.config
    assert config.retries == {"total_max_attempts": 1, "mode": "standard"}
    assert (config.connect_timeout, config.read_timeout) == (1.5, 4.0)
    assert config.max_pool_connections >= 8


# -- through the proxy, to moto ---------------------------------------------------------------


@pytest.fixture(scope="module")
def ses_moto(moto_url: str) -> str:
    """moto with the sender verified and the template made (through moto's own API)."""
    aws.install_sesv2_send_extensions()
    aws.verify_ses_sender(moto_url, SENDER)
    aws.create_ses_template(moto_url, TEMPLATE, "Receipt {{order}}", "Order {{order}} is paid.")
    # moto builds its SESv2 app and backends on the first request, which then takes seconds
    # when several arrive at once: warmed up here, directly, so no test's read timeout fires.
    aws.client("sesv2", moto_url).send_email(
        FromEmailAddress=SENDER,
        Destination={"ToAddresses": ["warm-up@example.com"]},
        Content={"Simple": {"Subject": {"Data": "warm-up"}, "Body": {"Text": {"Data": "-"}}}},
    )
    return moto_url


@pytest.fixture
def proxy(ses_moto: str, aws_env: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    """The fault proxy in front of moto, named by AWS_ENDPOINT_URL_SESV2; moto's sent
    messages emptied."""
    fault_proxy = FaultProxy(ses_moto, seed=2024).start()
    aws_env.setenv("AWS_ENDPOINT_URL_SESV2", fault_proxy.url)
    aws.ses_backend().sent_messages.clear()
    yield fault_proxy
    fault_proxy.stop()


@pytest.fixture
def ses_orch(orch: Any, simulator: Any, proxy: FaultProxy) -> Iterator[Any]:
    """An Orchestrator on the session's store and broker whose providers were built with the
    AWS environment (so SES is configured), installed for the worker's actors meanwhile."""
    from orchestrator import runtime

    # A read timeout is a fault of its own (dead/ambiguous): the margin keeps a loaded test
    # machine from injecting it where a test does not.
    orchestrator = orchestrator_like(orch, simulator.url, provider_read_timeout_s=5.0)
    runtime.install(orchestrator)
    try:
        yield orchestrator
    finally:
        runtime.install(orch)


def _send(orch: Any, key: str, **kw: Any) -> Any:
    kw.setdefault("from_email", SENDER)
    kw.setdefault("provider", "ses")
    to = kw.pop("to", "ana@example.com")
    subject = kw.pop("subject", "Your receipt")
    body = kw.pop("body", None if "template" in kw else "Thanks for your order.")
    return orch.send_email(to, subject, body, idempotency_key=key, **kw)


def _delivered() -> Counter[str]:
    """How many messages moto accepted per job id tag."""
    return Counter(
        aws.ses_message_tags(m).get("orchestrator_job_id") for m in aws.ses_sent_messages()
    )


def test_send_is_delivered_once_with_the_job_id(
    ses_orch: Any, worker: Any, proxy: FaultProxy
) -> None:
    """A send becomes one succeeded job and one SES message tagged with the job id, named by
    SES's MessageId."""
    job = _send(ses_orch, "ses-1", to=["ana@example.com", "bo@example.com"])
    assert (job.kind, job.provider, job.state) == ("email", "ses", JobState.PENDING)
    wait_until(lambda: ses_orch.job(job.id).state is JobState.SUCCEEDED)
    (message,) = aws.ses_sent_messages()
    assert aws.ses_message_tags(message) == {"orchestrator_job_id": job.id}
    assert message.source == SENDER
    assert message.destinations["ToAddresses"] == ["ana@example.com", "bo@example.com"]
    assert (message.subject, message.body) == ("Your receipt", "Thanks for your order.")
    done = ses_orch.job(job.id)
    assert done.provider_ref == message.id
    assert len(proxy.log()) == 1


def test_template_send(ses_orch: Any, proxy: FaultProxy) -> None:
    """A template send names the SES template and carries its data as JSON."""
    job = _send(ses_orch, "ses-tpl", template=TEMPLATE, template_data={"order": "42"}, subject=None)
    assert ses_orch.executor().run(job.id) is JobState.SUCCEEDED
    (message,) = aws.ses_sent_messages()
    assert message.template == TEMPLATE
    assert json.loads(message.template_data) == {"order": "42"}
    assert aws.ses_message_tags(message) == {"orchestrator_job_id": job.id}
    assert ses_orch.job(job.id).provider_ref == message.id


def test_default_email_provider_can_be_ses(ses_orch: Any, simulator: Any) -> None:
    """With ORCHESTRATOR_EMAIL_PROVIDER=ses a send that names no provider goes to SES."""
    with_default = orchestrator_like(ses_orch, simulator.url, email_provider="ses")
    job = with_default.send_email(
        "ana@example.com", "Hi", "Body", from_email=SENDER, idempotency_key="ses-default"
    )
    assert job.provider == "ses"
    assert with_default.executor().run(job.id) is JobState.SUCCEEDED
    assert _delivered() == Counter({job.id: 1})


def test_rejected_send_fails_after_one_call(ses_orch: Any, proxy: FaultProxy) -> None:
    """An unverified sender (MessageRejected) ends `failed` after one call; nothing is sent."""
    job = _send(ses_orch, "ses-rejected", from_email="nobody@unverified.example")
    assert ses_orch.executor().run(job.id) is JobState.FAILED
    done = ses_orch.job(job.id)
    assert done.last_error_code == "MessageRejected"
    assert "not verified" in (done.last_error or "")
    assert len(proxy.log()) == 1
    assert aws.ses_sent_messages() == []


@pytest.mark.parametrize(
    "throttle",
    [
        {"throttle_status": 429, "throttle_code": "TooManyRequestsException"},
        {"throttle_status": 400, "throttle_code": "Throttling"},
        {"throttle_status": 429, "throttle_code": "Throttling", "throttle_format": "xml"},
    ],
    ids=["v2-429", "v1-code-400", "xml-429"],
)
def test_throttled_send_is_retried_then_succeeds(
    ses_orch: Any, proxy: FaultProxy, throttle: dict[str, Any]
) -> None:
    """A throttled send (never delivered) is retried and then delivered once; each attempt is
    one HTTP request (botocore would retry throttling three times on its own)."""
    job = _send(
        ses_orch, f"ses-throttled-{throttle['throttle_status']}-{throttle.get('throttle_format')}"
    )
    executor = ses_orch.executor()
    proxy.set_faults(throttle=1.0, **throttle)
    assert executor.run(job.id) is JobState.RETRYING
    assert len(proxy.log()) == 1
    assert ses_orch.job(job.id).last_error_code == "rate_limited"
    proxy.set_faults()
    wait_until(lambda: executor.run(job.id) is JobState.SUCCEEDED, timeout_s=5)
    assert [a.outcome for a in ses_orch.attempts(job.id)] == ["not_executed", "succeeded"]
    assert _delivered() == Counter({job.id: 1})
    assert len(proxy.log()) == 2


def test_refused_connection_is_retried(ses_orch: Any, proxy: FaultProxy) -> None:
    """Nothing listening: not executed (connect_failed), retried, then delivered once."""
    job = _send(ses_orch, "ses-refused")
    executor = ses_orch.executor()
    with proxy.refusing():
        assert executor.run(job.id) is JobState.RETRYING
    assert ses_orch.job(job.id).last_error_code == "connect_failed"
    wait_until(lambda: executor.run(job.id) is JobState.SUCCEEDED, timeout_s=5)
    assert _delivered() == Counter({job.id: 1})


@pytest.mark.parametrize("status", [500, 503])
def test_server_error_is_ambiguous_after_one_request(
    ses_orch: Any, proxy: FaultProxy, status: int
) -> None:
    """A 5xx may follow a delivery (SES documents none as "not accepted"): dead, ambiguous,
    after one HTTP request (botocore's own retry of a 5xx is off)."""
    proxy.set_faults(server_error=1.0, server_error_status=status)
    job = _send(ses_orch, f"ses-{status}")
    assert ses_orch.executor().run(job.id) is JobState.DEAD
    done = ses_orch.job(job.id)
    assert (done.dead_reason, done.attempts) == ("ambiguous", 1)
    assert len(proxy.log()) == 1


def test_dropped_request_is_ambiguous(ses_orch: Any, proxy: FaultProxy) -> None:
    """The connection closed before the request reached SES: the client cannot tell that from
    a cut after delivery, so the job is dead/ambiguous, though nothing was delivered."""
    proxy.set_faults(drop=1.0)
    job = _send(ses_orch, "ses-dropped")
    assert ses_orch.executor().run(job.id) is JobState.DEAD
    assert ses_orch.job(job.id).dead_reason == "ambiguous"
    assert aws.ses_sent_messages() == []
    assert len(proxy.log()) == 1  # botocore's own retry of a closed connection is off


def test_global_endpoint_url_is_honoured(proxy: FaultProxy, aws_env: pytest.MonkeyPatch) -> None:
    """Without AWS_ENDPOINT_URL_SESV2, botocore's AWS_ENDPOINT_URL names the endpoint."""
    aws_env.delenv("AWS_ENDPOINT_URL_SESV2")
    aws_env.setenv("AWS_ENDPOINT_URL", proxy.url)
    provider = build(_settings())
    assert provider is not None
    job = SimpleNamespace(
        id=str(uuid.uuid4()),
        params={"from": SENDER, "to": ["ana@example.com"], "subject": "Hi", "body": "Body"},
    )
    outcome = provider.execute(job, "unused")  # type: ignore[arg-type]
    assert outcome.kind is AttemptOutcome.SUCCEEDED
    assert [r.message_id for r in proxy.log()] == [outcome.provider_ref]
    assert _delivered() == Counter({job.id: 1})
    broken = SimpleNamespace(id=job.id, params={"to": ["ana@example.com"]})
    assert provider.execute(broken, "unused").kind is PERMANENT  # type: ignore[arg-type]
    assert len(proxy.log()) == 1


def test_read_timeout_after_delivery_is_ambiguous(
    ses_orch: Any, simulator: Any, proxy: FaultProxy
) -> None:
    """The answer comes later than ORCHESTRATOR_PROVIDER_READ_TIMEOUT_S: the client gives up,
    the message is delivered, the job is dead/ambiguous and never resent."""
    impatient = orchestrator_like(ses_orch, simulator.url, provider_read_timeout_s=0.3)
    proxy.set_faults(latency_s=0.6)
    job = _send(impatient, "ses-slow")
    assert impatient.executor().run(job.id) is JobState.DEAD
    done = impatient.job(job.id)
    assert (done.dead_reason, done.last_error_code) == ("ambiguous", "read_timeout")
    wait_until(lambda: _delivered() == Counter({job.id: 1}), timeout_s=5)


def test_at_least_once_send_is_retried_after_a_cut(ses_orch: Any, proxy: FaultProxy) -> None:
    """A send that opted into at-least-once delivery is retried after a cut, and is then
    delivered twice (the documented price of opting in)."""
    job = _send(ses_orch, "ses-alo", at_least_once=True)
    executor = ses_orch.executor()
    proxy.set_faults(cut_after=1.0)
    assert executor.run(job.id) is JobState.RETRYING
    assert len(proxy.log()) == 1
    proxy.set_faults()
    wait_until(lambda: executor.run(job.id) is JobState.SUCCEEDED, timeout_s=5)
    assert _delivered() == Counter({job.id: 2})


def test_200_sends_with_cuts_after_delivery(ses_orch: Any, worker: Any, proxy: FaultProxy) -> None:
    """15 % of connections cut after SES accepted the message: no message is delivered twice
    (no send is ever resent), every send not cut is `succeeded` with SES's MessageId, every
    cut one is `dead` with reason `ambiguous` after its single attempt."""
    started = time.monotonic()
    proxy.set_faults(cut_after=0.15)
    jobs = [_send(ses_orch, f"ses-bulk-{i}", subject=f"Notice {i}") for i in range(200)]
    wait_until(lambda: count_jobs(ses_orch, "succeeded") + count_jobs(ses_orch, "dead") == 200, 50)
    elapsed = time.monotonic() - started
    log = proxy.log()
    cut = {r.job_id for r in log if r.fault == "cut_after"}
    assert len(log) == 200 and all(r.forwarded and r.status == 200 for r in log)
    assert 15 <= len(cut) <= 50
    delivered = _delivered()
    assert delivered == Counter({job.id: 1 for job in jobs})  # cut ones too: once each
    message_ids = {
        aws.ses_message_tags(m)["orchestrator_job_id"]: m.id for m in aws.ses_sent_messages()
    }
    done = [ses_orch.job(job.id) for job in jobs]
    succeeded = [j for j in done if j.state is JobState.SUCCEEDED]
    dead = [j for j in done if j.state is JobState.DEAD]
    unexpected = {j.id: j.last_error for j in dead if j.id not in cut}
    slow = sorted((round(r.upstream_s or 0, 2), round(r.at - started, 2)) for r in log)[-5:]
    assert not unexpected, (unexpected, slow)
    assert {j.id for j in dead} == cut
    assert len(succeeded) == 200 - len(cut)
    assert all(j.provider_ref == message_ids[j.id] for j in succeeded)
    assert all(j.dead_reason == "ambiguous" and j.attempts == 1 for j in dead)
    print(
        f"\nSES acceptance: sends=200 requests={len(log)} cuts={len(cut)} "
        f"delivered_twice={sum(1 for n in delivered.values() if n > 1)} "
        f"succeeded={len(succeeded)} dead_ambiguous={len(dead)} elapsed={elapsed:.1f}s"
    )
