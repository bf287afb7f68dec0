"""aws-sm:// references against Secrets Manager as moto serves it (tests/aws.py): resolution,
one-line start-up errors, and rotations reaching a running worker and the webhook endpoint
without a restart."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import stripe

from orchestrator.config import load_settings
from orchestrator.errors import ConfigError
from orchestrator.logs import make_handler
from orchestrator.models import JobState
from orchestrator.providers.stripe.webhooks import webhook_secrets
from tests.aws import AWS_ENV, client
from tests.conftest import STRIPE_TEST_KEY, orchestrator_like, serve, settings_like, wait_until

ROOT = Path(__file__).resolve().parents[2]
WRONG_KEY = "sk_test_wrongKeyBeforeRotation00"
PLAIN = "plain-secret-value-0123456789abcdefghij"
SETTLED = {JobState.SUCCEEDED, JobState.FAILED, JobState.DEAD}


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, moto_url: str) -> pytest.MonkeyPatch:
    """The standard AWS configuration pointing at moto, as a deployment would set it."""
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    for name in ("AWS_ENDPOINT_URL_SECRETS_MANAGER", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def sm(moto_url: str) -> Any:
    return client("secretsmanager", moto_url)


def _secret(sm: Any, value: str | dict[str, str]) -> tuple[str, str]:
    """A new secret (a name of this test alone); returns its name and ARN."""
    name = f"orchestrator/{uuid.uuid4().hex[:12]}"
    text = value if isinstance(value, str) else json.dumps(value)
    created = sm.create_secret(Name=name, SecretString=text)
    return name, created["ARN"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _base(orch: Any) -> dict[str, Any]:
    return {"database_url": orch.settings.database_url, "redis_url": orch.settings.redis_url}


# -- resolution ------------------------------------------------------------------------------


def test_whole_secrets_json_keys_and_arns_resolve(orch: Any, aws: Any, sm: Any) -> None:
    whole, _ = _secret(sm, STRIPE_TEST_KEY)
    doc, doc_arn = _secret(sm, {"api_key": "SG.fromJson.key", "webhook": "whsec_a,whsec_b"})
    settings = load_settings(
        **_base(orch),
        stripe_api_key=f"aws-sm://{whole}",
        sendgrid_api_key=f"aws-sm://{doc}#api_key",
        stripe_webhook_secret=f"aws-sm://{doc_arn}#webhook",
    )
    assert settings.require_secret("stripe_api_key") == STRIPE_TEST_KEY
    assert settings.require_secret("sendgrid_api_key") == "SG.fromJson.key"
    assert webhook_secrets(settings) == ("whsec_a", "whsec_b")
    assert STRIPE_TEST_KEY not in repr(settings)


def test_the_service_endpoint_variable_wins(orch: Any, aws: Any, sm: Any) -> None:
    """botocore reads AWS_ENDPOINT_URL_SECRETS_MANAGER itself, ahead of AWS_ENDPOINT_URL."""
    name, _ = _secret(sm, PLAIN)
    aws.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", os.environ["AWS_ENDPOINT_URL"])
    aws.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")
    settings = load_settings(**_base(orch), ops_token=f"aws-sm://{name}")
    assert settings.require_secret("ops_token") == PLAIN


def test_unresolvable_references_name_the_variable_never_a_value(
    orch: Any, aws: Any, sm: Any
) -> None:
    name, _ = _secret(sm, {"api_key": PLAIN})
    plain, _ = _secret(sm, PLAIN)
    cases = {
        f"aws-sm://{name}-missing": "secret not found",
        f"aws-sm://{name}#nokey": "the secret has no key 'nokey'",
        f"aws-sm://{plain}#api_key": "the secret is not JSON, so it has no keys",
    }
    for reference, reason in cases.items():
        with pytest.raises(ConfigError) as info:
            load_settings(**_base(orch), stripe_api_key=reference)
        assert str(info.value) == f"STRIPE_API_KEY: {reference}: {reason}"
        assert PLAIN not in str(info.value)


def test_an_unreachable_endpoint_fails_fast(orch: Any, aws: Any, sm: Any) -> None:
    name, _ = _secret(sm, PLAIN)
    aws.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        load_settings(**_base(orch), sendgrid_api_key=f"aws-sm://{name}")
    assert str(info.value) == (
        f"SENDGRID_API_KEY: aws-sm://{name}: "
        "Secrets Manager is unreachable (EndpointConnectionError)"
    )
    assert time.monotonic() - started < 10  # bounded: one retry, short timeouts


def test_missing_credentials_are_named(orch: Any, aws: Any, sm: Any, tmp_path: Path) -> None:
    name, _ = _secret(sm, PLAIN)
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        aws.delenv(variable)
    aws.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    aws.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    aws.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(ConfigError) as info:
        load_settings(**_base(orch), stripe_api_key=f"aws-sm://{name}")
    assert str(info.value) == f"STRIPE_API_KEY: aws-sm://{name}: no AWS credentials found"


def test_a_bad_reference_stops_the_worker_command_with_exit_2(
    orch: Any, aws: Any, moto_url: str
) -> None:
    """`orchestrator worker` (a real process) refuses to start: one line on stderr."""
    reference = f"aws-sm://orchestrator/absent-{uuid.uuid4().hex[:8]}#api_key"
    s = orch.settings
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("ORCHESTRATOR_", "STRIPE_"))},
        "DATABASE_URL": s.database_url,
        "REDIS_URL": s.redis_url,
        "ORCHESTRATOR_REDIS_NAMESPACE": s.redis_namespace,
        "STRIPE_API_KEY": reference,
        "PYTHONPATH": str(ROOT),
    }
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", "worker", "--processes", "1"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"orchestrator: STRIPE_API_KEY: {reference}: secret not found"
    ]


# -- rotation --------------------------------------------------------------------------------


def test_a_running_worker_picks_up_a_rotated_stripe_key(
    orch: Any, simulator: Any, worker: Any, aws: Any, sm: Any
) -> None:
    """The worker starts with a wrong key in Secrets Manager (charges fail 401); the secret is
    rotated to the right key, and once the refresh interval has passed the same worker's
    charges succeed."""
    from orchestrator import runtime

    name, _ = _secret(sm, {"api_key": WRONG_KEY})
    rotating = orchestrator_like(
        orch, simulator.url, stripe_api_key=f"aws-sm://{name}#api_key", secrets_refresh_s=0.5
    )
    runtime.install(rotating)
    try:
        refused = _charge_through_worker(rotating, "rotation-before")
        assert refused.state is JobState.FAILED
        assert "AuthenticationError" in (refused.last_error or "")

        sm.put_secret_value(SecretId=name, SecretString=json.dumps({"api_key": STRIPE_TEST_KEY}))
        time.sleep(0.6)  # past the refresh interval: the next read starts the refresh
        outcomes = []
        for attempt in range(20):
            job = _charge_through_worker(rotating, f"rotation-after-{attempt}")
            outcomes.append(job.state)
            if job.state is JobState.SUCCEEDED:
                break
        assert outcomes[-1] is JobState.SUCCEEDED, outcomes
        assert len(outcomes) <= 2  # the read that found the key stale may still use the old one
        assert rotating.settings.require_secret("stripe_api_key") == STRIPE_TEST_KEY
    finally:
        runtime.install(orch)


def _charge_through_worker(orch: Any, key: str) -> Any:
    job = orch.charge(1000, "usd", None, "pm_card_visa", key)
    wait_until(lambda: orch.job(job.id).state in SETTLED, timeout_s=30)
    return orch.job(job.id)


def test_a_rotated_webhook_secret_verifies_old_and_new_during_the_overlap(
    orch: Any, simulator: Any, aws: Any, sm: Any
) -> None:
    """The endpoint reads the signing secrets per delivery: after a rotation in Secrets
    Manager both the new and the replaced secret verify, for the overlap window only."""
    from orchestrator.web import create_app

    old, new = "whsec_rotationOld0001", "whsec_rotationNew0002"
    name, _ = _secret(sm, old)
    web_orch = orchestrator_like(
        orch,
        simulator.url,
        stripe_webhook_secret=f"aws-sm://{name}",
        secrets_refresh_s=0.3,
        secrets_overlap_s=2.0,
    )
    with serve(create_app(web_orch)) as url:
        assert _deliver(url, old) == 200
        assert _deliver(url, new) == 400
        sm.put_secret_value(SecretId=name, SecretString=new)
        wait_until(lambda: webhook_secrets(web_orch.settings)[0] == new, timeout_s=10)
        assert _deliver(url, new) == 200
        assert _deliver(url, old) == 200  # inside the overlap
        wait_until(lambda: webhook_secrets(web_orch.settings) == (new,), timeout_s=10)
        assert _deliver(url, old) == 400


def _deliver(url: str, secret: str) -> int:
    event = {
        "id": f"evt_{uuid.uuid4().hex[:24]}",
        "object": "event",
        "type": "customer.created",
        "created": int(time.time()),
        "data": {"object": {"id": f"cus_{uuid.uuid4().hex[:12]}", "object": "customer"}},
    }
    body = json.dumps(event)
    header = stripe.WebhookSignature.generate_signature_header(body, secret)
    response = requests.post(
        f"{url}/webhooks/stripe",
        data=body.encode(),
        headers={"Stripe-Signature": header, "Content-Type": "application/json"},
        timeout=10,
    )
    return response.status_code


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    """Everything logged (JSON lines, through the app's own pipeline) while the test runs."""
    stream = io.StringIO()
    handler = make_handler(stream, "json")
    logging.getLogger().addHandler(handler)
    yield stream
    logging.getLogger().removeHandler(handler)


def test_secrets_stay_out_of_ops_output_and_logs(
    orch: Any, simulator: Any, aws: Any, sm: Any, logs: io.StringIO
) -> None:
    """An ops token and a Stripe key from Secrets Manager: the token works, and neither shows
    in any ops API answer, the settings' repr, or the logs of a rotation and a failed
    refresh."""
    from orchestrator.web import create_app

    token = "ops-token-from-secrets-manager-0123456789"
    name, _ = _secret(sm, {"ops": token, "stripe": STRIPE_TEST_KEY})
    ops_orch = orchestrator_like(
        orch,
        simulator.url,
        ops_token=f"aws-sm://{name}#ops",
        stripe_api_key=f"aws-sm://{name}#stripe",
    )
    with serve(create_app(ops_orch)) as url:
        auth = {"Authorization": f"Bearer {token}"}
        bodies = []
        for path in ("/ops/openapi.json", "/ops/api/status", "/ops/api/counts", "/ops/api/jobs"):
            response = requests.get(url + path, headers=auth, timeout=10)
            assert response.status_code == 200, path
            bodies.append(response.text)
    settings = ops_orch.settings
    sm.put_secret_value(SecretId=name, SecretString=json.dumps({"ops": token + "-rotated"}))
    assert settings.refresh_secrets() == ["ORCHESTRATOR_OPS_TOKEN"]  # the stripe key: no key
    sm.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)
    assert settings.refresh_secrets() == []
    logged = [json.loads(line) for line in logs.getvalue().splitlines()]
    failures = {e["variable"] for e in logged if e["event"] == "secrets.refresh_failed"}
    assert failures == {"STRIPE_API_KEY", "ORCHESTRATOR_OPS_TOKEN"}
    everything = "".join(bodies) + repr(settings) + logs.getvalue()
    assert token not in everything and STRIPE_TEST_KEY not in everything
    assert settings.require_secret("stripe_api_key") == STRIPE_TEST_KEY  # the last good value


def test_settings_like_accepts_references(orch: Any, simulator: Any, aws: Any, sm: Any) -> None:
    """The suite's own helpers pass references through (overrides are resolved too)."""
    name, _ = _secret(sm, STRIPE_TEST_KEY)
    settings = settings_like(orch, simulator.url, stripe_api_key=f"aws-sm://{name}")
    assert settings.secret_source("stripe_api_key") is not None
    assert settings.secret_source("sendgrid_api_key") is None  # a literal value
