"""Dashboard sessions over real HTTP (live uvicorn, real Redis and PostgreSQL): the Secure
flag behind a TLS-terminating proxy, server-side revocation on sign-out, failing closed
without Redis, and the per-client sign-in throttle.

uvicorn itself believes X-Forwarded-* from loopback by default; these tests point its
FORWARDED_ALLOW_IPS at an address nobody connects from, so the only rule applied is the
orchestrator's ORCHESTRATOR_TRUSTED_PROXIES (the test client is the direct peer 127.0.0.1).
"""

from __future__ import annotations

import contextlib
import logging
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import requests

from orchestrator.models import JobState
from orchestrator.ops.auth import LOGIN_MAX_FAILURES, LOGIN_WINDOW_S, SESSION_TTL_S
from tests.conftest import TEST_REDIS_URL, orchestrator_like, seed_dead_job, serve

TOKEN = "ops-session-token-" + uuid.uuid4().hex
COOKIE = "orchestrator_ops_session"


@pytest.fixture(autouse=True)
def _uvicorn_trusts_nobody(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "192.0.2.1")  # TEST-NET-1: never our peer


@contextlib.contextmanager
def _web(orch: Any, simulator: Any, **settings: Any) -> Iterator[str]:
    """create_app() with the ops token and ``settings``, live on an ephemeral port."""
    from orchestrator.web import create_app

    settings.setdefault("ops_token", TOKEN)
    with serve(create_app(orchestrator_like(orch, simulator.url, **settings))) as url:
        yield url


def _login(url: str, token: str = TOKEN, **headers: str) -> requests.Response:
    return requests.post(
        f"{url}/ops/login",
        data={"token": token},
        headers=headers,
        allow_redirects=False,
        timeout=10,
    )


def _set_cookie(answer: requests.Response) -> str:
    header = answer.headers.get("set-cookie", "")
    assert header.startswith(f"{COOKIE}="), (answer.status_code, header)
    return header


def _secure(answer: requests.Response) -> bool:
    attributes = [a.strip().lower() for a in _set_cookie(answer).split(";")]
    return "secure" in attributes


def _csrf(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found is not None
    return found.group(1)


# -- Secure behind a TLS-terminating proxy -------------------------------------------------


def test_forwarded_proto_makes_the_cookie_secure_only_from_a_trusted_proxy(
    orch: Any, simulator: Any
) -> None:
    """X-Forwarded-Proto: https marks the cookie Secure when the direct peer is one of
    ORCHESTRATOR_TRUSTED_PROXIES, and never otherwise; plain http stays not Secure."""
    with _web(orch, simulator, trusted_proxies="10.9.0.0/16, 127.0.0.1") as url:
        assert _secure(_login(url, **{"X-Forwarded-Proto": "https"}))
        assert not _secure(_login(url))
        assert not _secure(_login(url, **{"X-Forwarded-Proto": "http"}))
    with _web(orch, simulator, trusted_proxies="10.9.0.0/16") as url:
        assert not _secure(_login(url, **{"X-Forwarded-Proto": "https"}))
    with _web(orch, simulator) as url:  # nobody trusted
        assert not _secure(_login(url, **{"X-Forwarded-Proto": "https"}))


def test_an_https_public_url_always_makes_the_cookie_secure(orch: Any, simulator: Any) -> None:
    """ORCHESTRATOR_PUBLIC_URL=https://...: Secure, whatever the request says."""
    with _web(orch, simulator, public_url="https://ops.example.com") as url:
        answer = _login(url)
        assert answer.status_code == 303 and _secure(answer)
        assert "httponly" in answer.headers["set-cookie"].lower()
        assert "samesite=strict" in answer.headers["set-cookie"].lower()


def test_proxy_settings_are_validated_with_one_line_errors() -> None:
    from orchestrator.config import load_settings
    from orchestrator.errors import ConfigError

    base = {"database_url": "postgresql://h/db", "redis_url": "redis://h"}
    for field, value, alias in [
        ("public_url", "ops.example.com", "ORCHESTRATOR_PUBLIC_URL"),
        ("public_url", "ftp://ops.example.com", "ORCHESTRATOR_PUBLIC_URL"),
        ("trusted_proxies", "10.0.0.0/8, proxy.internal", "ORCHESTRATOR_TRUSTED_PROXIES"),
        ("trusted_proxies", "10.0.0.0/33", "ORCHESTRATOR_TRUSTED_PROXIES"),
    ]:
        with pytest.raises(ConfigError) as caught:
            load_settings(**base, **{field: value})
        message = str(caught.value)
        assert message.startswith(alias) and "\n" not in message, message
    ok = load_settings(
        **base, public_url="https://ops.example.com/", trusted_proxies="::1, 10.0.0.1"
    )
    assert ok.public_url == "https://ops.example.com"


# -- server-side sessions -------------------------------------------------------------------


def test_sign_out_revokes_a_copied_cookie_at_once(orch: Any, simulator: Any) -> None:
    """Sign in, copy the cookie, sign out: the copy gets 401 on every dashboard route at once
    (the session is deleted in Redis, not merely dropped from the browser)."""
    job_id = seed_dead_job(orch, "revoke-1")
    with _web(orch, simulator) as url:
        browser = requests.Session()
        assert browser.post(f"{url}/ops/login", data={"token": TOKEN}, timeout=10).ok
        copied = {COOKIE: browser.cookies[COOKIE]}
        assert TOKEN not in copied[COOKIE]
        page = requests.get(f"{url}/ops/", cookies=copied, timeout=10)
        assert page.status_code == 200
        csrf = _csrf(page.text)
        # Only a hash of the cookie is stored, with the session's lifetime.
        client = redis.Redis.from_url(TEST_REDIS_URL, decode_responses=True)
        keys = list(client.scan_iter(f"{orch.settings.redis_namespace}:orchestrator:ops:session:*"))
        assert len(keys) == 1 and copied[COOKIE] not in keys[0]
        assert 0 < client.ttl(keys[0]) <= SESSION_TTL_S
        assert TOKEN not in str(client.get(keys[0]))

        out = browser.post(f"{url}/ops/logout", allow_redirects=False, timeout=10)
        assert out.status_code == 303 and COOKIE not in browser.cookies
        assert list(client.scan_iter(f"{orch.settings.redis_namespace}:orchestrator:ops:*")) == []
        client.close()
        assert requests.get(f"{url}/ops/", cookies=copied, timeout=10).status_code == 401
        replay = requests.post(
            f"{url}/ops/dlq/{job_id}/replay", data={"csrf": csrf}, cookies=copied, timeout=10
        )
        assert replay.status_code == 401
    assert orch.job(job_id).state is JobState.DEAD


def test_rotating_the_token_ends_every_session(orch: Any, simulator: Any) -> None:
    """A cookie issued under one token is refused by the web process once the token changes."""
    with _web(orch, simulator) as url:
        cookie = requests.Session()
        assert cookie.post(f"{url}/ops/login", data={"token": TOKEN}, timeout=10).ok
        copied = {COOKIE: cookie.cookies[COOKIE]}
    rotated = "ops-rotated-token-" + uuid.uuid4().hex
    with _web(orch, simulator, ops_token=rotated) as url:
        assert requests.get(f"{url}/ops/", cookies=copied, timeout=10).status_code == 401


def test_without_redis_the_dashboard_fails_closed(orch: Any, simulator: Any) -> None:
    """Redis unreachable: sign-in answers 503 with a clear page (no cookie), and a cookie
    that is valid elsewhere is refused (503), never accepted on its signature alone; the
    bearer-token JSON API keeps working."""
    job_id = seed_dead_job(orch, "closed-1")
    with _web(orch, simulator) as url:
        browser = requests.Session()
        assert browser.post(f"{url}/ops/login", data={"token": TOKEN}, timeout=10).ok
        copied = {COOKIE: browser.cookies[COOKIE]}
        csrf = _csrf(browser.get(f"{url}/ops/", timeout=10).text)
    with _web(orch, simulator, redis_url="redis://127.0.0.1:1") as url:
        login = _login(url)
        assert login.status_code == 503 and "session store" in login.text
        assert COOKIE not in login.headers.get("set-cookie", "")
        page = requests.get(f"{url}/ops/", cookies=copied, timeout=10)
        assert page.status_code == 503 and "dead-letter" not in page.text.lower()
        replay = requests.post(
            f"{url}/ops/dlq/{job_id}/replay", data={"csrf": csrf}, cookies=copied, timeout=10
        )
        assert replay.status_code == 503
        api = requests.get(
            f"{url}/ops/api/dlq", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
        )
        assert api.status_code == 200
    assert orch.job(job_id).state is JobState.DEAD


# -- sign-in throttle -------------------------------------------------------------------------


def _throttled(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "ops.login_throttled" in r.getMessage()]


def test_sign_ins_are_throttled_per_client(
    orch: Any, simulator: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Past LOGIN_MAX_FAILURES failures a client gets 429 with Retry-After, even with the
    right token (not checked); another client (X-Forwarded-For believed from the trusted
    proxy) signs in, and its success resets nobody else's counter. The log line names the
    client, never the token."""
    caplog.set_level(logging.WARNING)
    with _web(orch, simulator, trusted_proxies="127.0.0.1") as url:
        attacker = {"X-Forwarded-For": "203.0.113.7"}
        for _ in range(LOGIN_MAX_FAILURES):
            assert _login(url, token="wrong-" + uuid.uuid4().hex, **attacker).status_code == 401
        refused = _login(url, **attacker)  # the right token, too late
        assert refused.status_code == 429
        assert 0 < int(refused.headers["Retry-After"]) <= LOGIN_WINDOW_S
        assert COOKIE not in refused.headers.get("set-cookie", "")

        other = _login(url, **{"X-Forwarded-For": "198.51.100.20"})
        assert other.status_code == 303 and _set_cookie(other)
        assert _login(url, **attacker).status_code == 429
        # A spoofed hop before the trusted proxy's does not change who the client is.
        spoofed = {"X-Forwarded-For": "198.51.100.20, 203.0.113.7"}
        assert _login(url, **spoofed).status_code == 429
    lines = _throttled(caplog)
    assert lines and all(TOKEN not in line for line in lines)
    assert "203.0.113.7" in lines[0]


def test_forwarded_for_from_an_untrusted_peer_does_not_evade_the_throttle(
    orch: Any, simulator: Any
) -> None:
    """Without trusted proxies a client cannot reset its counter by inventing
    X-Forwarded-For addresses: the direct peer is counted."""
    with _web(orch, simulator) as url:
        for i in range(LOGIN_MAX_FAILURES):
            fake = {"X-Forwarded-For": f"203.0.113.{i + 1}"}
            assert _login(url, token="wrong-token", **fake).status_code == 401
        assert _login(url, **{"X-Forwarded-For": "203.0.113.99"}).status_code == 429


def test_successful_sign_ins_do_not_use_up_the_allowance(orch: Any, simulator: Any) -> None:
    """An operator who signs in often (same address) is never throttled by successes."""
    with _web(orch, simulator) as url:
        for _ in range(LOGIN_MAX_FAILURES * 2):
            assert _login(url).status_code == 303
        assert _login(url, token="wrong-token").status_code == 401
        assert _login(url).status_code == 303
