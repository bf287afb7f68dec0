"""The ops HTTP API, its OpenAPI document, /metrics and the dashboard, served by a live
uvicorn on an ephemeral port over real PostgreSQL and Redis."""

from __future__ import annotations

import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import requests

from orchestrator.models import JobState
from orchestrator.ops.openapi import OPENAPI
from tests.conftest import orchestrator_like, seed_dead_job, serve, truncate

TOKEN = "ops-test-token-" + uuid.uuid4().hex
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def server(orch: Any, simulator: Any) -> Iterator[str]:
    """create_app() with ORCHESTRATOR_OPS_TOKEN set, live on an ephemeral port."""
    from orchestrator.web import create_app

    with serve(create_app(orchestrator_like(orch, simulator.url, ops_token=TOKEN))) as url:
        yield url


@pytest.fixture(autouse=True)
def _clean_ops_tables(orch: Any) -> None:
    truncate(orch, "operator_actions", "broker_dead_letters")


def _concrete(path: str) -> str:
    return path.replace("{job_id}", str(uuid.uuid4()))


def _operations() -> list[tuple[str, str]]:
    return [(m.upper(), p) for p, item in OPENAPI["paths"].items() for m in item]


DASHBOARD = [
    ("GET", "/ops/"),
    ("POST", "/ops/dlq/{job_id}/replay"),
    ("POST", "/ops/dlq/{job_id}/discard"),
]


@pytest.mark.parametrize("bad", [None, "Bearer wrong", "Bearer ", "Basic " + TOKEN, TOKEN])
def test_every_ops_route_refuses_a_missing_or_wrong_token(server: str, bad: str | None) -> None:
    """Every documented API route and every dashboard route answers 401 without the token, with
    a wrong one, or with the right one in the wrong scheme; nothing is changed."""
    headers = {"Authorization": bad} if bad is not None else {}
    for method, path in [*_operations(), *DASHBOARD]:
        resp = requests.request(
            method, server + _concrete(path), headers=headers, json={}, timeout=5
        )
        assert resp.status_code == 401, (method, path, resp.status_code)


def test_no_configured_token_refuses_everything(orch: Any, simulator: Any) -> None:
    """With ORCHESTRATOR_OPS_TOKEN unset, even an empty bearer gets 401 (never 'no auth')."""
    from orchestrator.web import create_app

    with serve(create_app(orch)) as url:
        for method, path in _operations():
            headers = {"Authorization": "Bearer "}
            resp = requests.request(method, url + _concrete(path), headers=headers, timeout=5)
            assert resp.status_code == 401
        assert requests.post(url + "/ops/login", data={"token": ""}, timeout=5).status_code == 401


def test_openapi_document_matches_the_routes(server: str) -> None:
    """/ops/openapi.json is the document in the code, and lists exactly the API routes."""
    from starlette.routing import Route

    from orchestrator.ops.http import ops_routes

    served = requests.get(server + "/ops/openapi.json", headers=AUTH, timeout=5).json()
    assert served == OPENAPI
    routed = set()
    unused: Any = None  # building the routes uses none of these
    for route in ops_routes(unused, token=None, breaker=unused, dead_letters=unused):
        assert isinstance(route, Route)
        if route.path.startswith(("/ops/api", "/ops/openapi")):
            routed |= {(m, route.path) for m in (route.methods or set()) - {"HEAD"}}
    assert routed == set(_operations())


def test_api_lists_shows_replays_and_discards(server: str, orch: Any) -> None:
    """The JSON API: counts, dlq list, show, replay (audited with X-Ops-Actor), discard with a
    required reason, 404 for an unknown job, 400 for a malformed id or filter."""
    first = seed_dead_job(orch, "api-1")
    second = seed_dead_job(orch, "api-2")

    def get(path: str, **kw: Any) -> requests.Response:
        return requests.get(server + path, headers=AUTH, timeout=5, **kw)

    assert get("/ops/api/counts").json()["jobs_by_state"]["dead"] == 2
    listed = get("/ops/api/dlq", params={"limit": 1}).json()
    assert len(listed["jobs"]) == 1 and listed["next_cursor"]
    assert get("/ops/api/dlq", params={"cursor": listed["next_cursor"]}).json()["jobs"][0][
        "id"
    ] in {
        first,
        second,
    }
    assert get(f"/ops/api/dlq/{first}").json()["state"] == "dead"
    assert get(f"/ops/api/jobs/{uuid.uuid4()}").status_code == 404
    assert get("/ops/api/jobs/not-a-uuid").status_code == 400
    assert get("/ops/api/jobs", params={"state": "bogus"}).status_code == 400

    headers = {**AUTH, "X-Ops-Actor": "pat"}
    replayed = requests.post(f"{server}/ops/api/dlq/{first}/replay", headers=headers, timeout=5)
    assert replayed.status_code == 200 and replayed.json()["action"] == "replay"
    assert orch.job(first).state is JobState.PENDING
    shown = get(f"/ops/api/jobs/{first}").json()
    assert shown["operator_actions"][0]["actor"] == "http:pat"

    url = f"{server}/ops/api/dlq/{second}/discard"
    assert requests.post(url, headers=AUTH, json={}, timeout=5).status_code == 400
    assert requests.post(url, headers=AUTH, json={"reason": "fraud"}, timeout=5).status_code == 200
    assert requests.post(url, headers=AUTH, json={"reason": "again"}, timeout=5).status_code == 409
    assert orch.job(second).state is JobState.CANCELLED


def test_metrics_expose_the_operator_series(server: str, orch: Any, simulator: Any) -> None:
    """/metrics carries jobs by state, DLQ size, queue depth, broker dead letters, reconcile
    actions, and attempts and latency by provider once a charge has run."""
    seed_dead_job(orch, "m-1")
    job = orch.charge(700, "usd", None, "pm_card_visa", "m-charge")
    assert orch.executor().run(job.id) is JobState.SUCCEEDED
    text = requests.get(server + "/metrics", timeout=5).text
    assert 'orchestrator_jobs{state="dead"} 1.0' in text
    assert "orchestrator_dlq_size 1.0" in text
    assert 'orchestrator_attempts_recent{outcome="succeeded",provider="stripe"} 1.0' in text
    assert 'orchestrator_provider_latency_seconds_count{provider="stripe"} 1.0' in text
    assert 'orchestrator_provider_latency_seconds_bucket{le="+Inf",provider="stripe"} 1.0' in text
    assert re.search(r'orchestrator_queue_depth\{queue="orchestrator"\} \d', text)
    assert "orchestrator_broker_dead_letters 0.0" in text
    assert 'orchestrator_reconcile_actions_total{action="redispatched"} 0.0' in text
    assert 'orchestrator_breaker_state{provider="stripe"} 0.0' in text
    breakers = requests.get(server + "/ops/api/breaker", headers=AUTH, timeout=5).json()
    assert {b["provider"]: b["state"] for b in breakers["providers"]}["stripe"] == "closed"


def test_metrics_name_each_family_once(server: str, orch: Any) -> None:
    """Every metric family on /metrics has exactly one ``# TYPE`` line (no collector emits a
    family another one already does, e.g. orchestrator_breaker_state)."""
    text = requests.get(server + "/metrics", timeout=5).text
    families = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert "orchestrator_breaker_state" in families
    assert len(families) == len(set(families)), sorted(
        f for f in set(families) if families.count(f) > 1
    )


def test_schemathesis_finds_no_server_error(server: str, orch: Any) -> None:
    """Property-based requests generated from the OpenAPI document (valid and invalid, with the
    token) never get a 5xx; every operation is exercised."""
    import hypothesis
    import schemathesis
    from hypothesis import HealthCheck

    seed_dead_job(orch, "fuzz-1")
    schema = schemathesis.openapi.from_dict(OPENAPI)
    schema.config.update(base_url=server, headers=AUTH)
    exercised = []
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]
        failures: list[str] = []

        @hypothesis.settings(
            max_examples=15,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
        )
        @hypothesis.given(case=operation.as_strategy())
        def check(case: Any) -> None:
            response = case.call(headers=AUTH, timeout=10)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} -> {response.status_code}")

        check()
        assert not failures, failures
        exercised.append(operation.label)
    assert len(exercised) == len(_operations())


@pytest.mark.skipif(
    shutil.which("chromium") is None or shutil.which("chromedriver") is None,
    reason="Debian's chromium and chromium-driver are not installed",
)
def test_dashboard_login_and_replay_in_a_real_browser(server: str, orch: Any) -> None:
    """Headless chromium: the dashboard refuses a wrong token, logs in with the right one (an
    HttpOnly cookie that is not the token), shows the dead job, and after Replay is clicked
    the job has left the DLQ table and is pending."""
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    job_id = seed_dead_job(orch, "browser-1")
    profile = tempfile.mkdtemp(prefix="ops-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(arg)
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.set_page_load_timeout(15)
        wait = WebDriverWait(driver, 15)
        driver.get(server + "/ops/")
        driver.find_element(By.ID, "token").send_keys("wrong")
        driver.find_element(By.ID, "login").click()
        wait.until(lambda d: "wrong token" in d.page_source)
        driver.find_element(By.ID, "token").send_keys(TOKEN)
        driver.find_element(By.ID, "login").click()
        wait.until(lambda d: d.find_elements(By.ID, f"dead-{job_id}"))
        assert driver.find_elements(By.ID, "attempts-chart")
        cookie = driver.get_cookie("orchestrator_ops_session")
        assert cookie is not None and cookie["httpOnly"] and TOKEN not in cookie["value"]
        assert cookie["sameSite"] == "Strict"
        driver.find_element(By.ID, f"replay-{job_id}").click()
        wait.until(lambda d: d.find_elements(By.ID, "notice"))  # the page after the POST
        assert "replay" in driver.find_element(By.ID, "notice").text
        assert not driver.find_elements(By.ID, f"dead-{job_id}")
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    assert orch.job(job_id).state is JobState.PENDING
    with psycopg.connect(orch.settings.database_url) as conn:
        actor = conn.execute(
            "SELECT actor FROM operator_actions WHERE target = %s", (job_id,)
        ).fetchone()
    assert actor == ("http:dashboard",)


# -- hardening -----------------------------------------------------------------------------


def _endless(chunk: bytes, count: int) -> Iterator[bytes]:
    for _ in range(count):
        yield chunk


def test_an_oversized_login_is_refused_while_streaming(server: str) -> None:
    """/ops/login (no authentication needed) reads its body as a stream and answers 413 past
    64 KiB, without holding the whole body: a chunked 8 MiB POST never gets read whole."""
    answer = requests.post(
        f"{server}/ops/login",
        data=_endless(b"token=" + b"x" * 65536, 128),  # chunked: no Content-Length to trust
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=30,
    )
    assert answer.status_code == 413
    declared = requests.post(
        f"{server}/ops/login",
        data=b"x" * (65 * 1024),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=30,
    )
    assert declared.status_code == 413


def test_an_oversized_json_body_is_413(server: str) -> None:
    """The JSON API caps its bodies the same way (after the bearer check)."""
    answer = requests.post(
        f"{server}/ops/api/dlq/replay",
        data=_endless(b" " * 65536, 4),
        headers={**AUTH, "Content-Type": "application/json"},
        timeout=30,
    )
    assert answer.status_code == 413


def test_counts_show_live_jobs_and_settles_without_counting_every_job(
    server: str, orch: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/ops/api/counts and the dashboard read the live jobs by state (dead included) and the
    settles ever by state, never Store.count_by_state (a scan of every job ever): a pending
    charge and a dead job show up live, and cancelling the charge moves it to the settles."""
    from orchestrator.db import Store

    def refuse(self: Any) -> dict[str, int]:
        raise AssertionError("counts called count_by_state")

    monkeypatch.setattr(Store, "count_by_state", refuse)

    def counts() -> dict[str, dict[str, int]]:
        answer = requests.get(f"{server}/ops/api/counts", headers=AUTH, timeout=10)
        assert answer.status_code == 200
        return dict(answer.json())

    before = counts()
    assert set(before["jobs_by_state"]) == {
        "pending",
        "running",
        "retrying",
        "unknown",
        "processing",
        "dead",
    }
    assert set(before["settled_total"]) == {"succeeded", "failed", "dead", "cancelled"}
    seed_dead_job(orch, f"counts-dead-{uuid.uuid4().hex[:8]}")
    job = orch.charge(700, "usd", None, "pm_card_visa", f"counts-{uuid.uuid4().hex[:8]}")
    live = counts()["jobs_by_state"]
    assert live["pending"] == before["jobs_by_state"]["pending"] + 1
    assert live["dead"] == before["jobs_by_state"]["dead"] + 1
    orch.cancel(job.id, reason="counted")
    after = counts()
    assert after["jobs_by_state"]["pending"] == before["jobs_by_state"]["pending"]
    assert after["settled_total"]["cancelled"] == before["settled_total"]["cancelled"] + 1

    browser = requests.Session()
    assert browser.post(f"{server}/ops/login", data={"token": TOKEN}, timeout=10).ok
    page = browser.get(f"{server}/ops/", timeout=10).text
    dead = after["jobs_by_state"]["dead"]
    cancelled = after["settled_total"]["cancelled"]
    assert f'<td id="count-dead">{dead}</td>' in page
    assert f'<td id="settled-cancelled">{cancelled}</td>' in page
    assert 'id="count-succeeded"' not in page


def test_non_ascii_cookies_and_csrf_values_are_refused_not_500(server: str) -> None:
    """A session cookie or CSRF value with non-ASCII characters is a failed check (401/403),
    never a server error."""
    cookie = {"orchestrator_ops_session": "1700000000.\u00e9t\u00e9"}
    page = requests.get(f"{server}/ops/", cookies=cookie, timeout=10)
    assert page.status_code == 401
    session = requests.Session()
    login = session.post(f"{server}/ops/login", data={"token": TOKEN}, timeout=10)
    assert login.status_code == 200
    forged = session.post(
        f"{server}/ops/dlq/{uuid.uuid4()}/discard",
        data={"csrf": "\u00e9" * 32, "reason": "x"},
        timeout=10,
    )
    assert forged.status_code == 403


def test_an_iso_week_cursor_is_normalized_not_a_500(server: str) -> None:
    """A cursor holding a date PostgreSQL cannot read (an ISO week, 2024-W01-1) is read as
    the same instant, not passed through to the database."""
    import base64
    import json

    raw = json.dumps(["2024-W01-1", str(uuid.uuid4())]).encode()
    cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    answer = requests.get(
        f"{server}/ops/api/jobs", params={"cursor": cursor}, headers=AUTH, timeout=10
    )
    assert answer.status_code == 200


@pytest.mark.parametrize("where", ["since", "until", "cursor"])
def test_a_utc_offset_postgresql_refuses_is_normalized_not_a_500(server: str, where: str) -> None:
    """Python reads UTC offsets up to +-23:59, PostgreSQL only to +-15:59 (found by
    schemathesis: since=2343-02-03T23:46:23.46-17:50 gave a 500): the instant is sent in UTC;
    one that leaves the calendar in UTC is a 400."""
    import base64
    import json

    def ask(moment: str) -> int:
        params = {where: moment}
        if where == "cursor":
            raw = json.dumps([moment, str(uuid.uuid4())]).encode()
            params = {"cursor": base64.urlsafe_b64encode(raw).decode().rstrip("=")}
        answer = requests.get(f"{server}/ops/api/jobs", params=params, headers=AUTH, timeout=10)
        return answer.status_code

    assert ask("2343-02-03T23:46:23.46-17:50") == 200
    assert ask("9999-12-31T23:00:00-20:00") == 400


def _dead_ambiguous_send(orch: Any, key: str) -> str:
    """One dead email whose last call may have been delivered (SendGrid keeps no keys)."""
    with psycopg.connect(orch.settings.database_url, autocommit=True) as conn:
        row = conn.execute(
            """
            INSERT INTO jobs (kind, provider, state, idempotency_key, fingerprint, params,
                              attempts, max_attempts, deadline_at, dead_reason, last_error_code,
                              changed_by, change_reason)
            VALUES ('email', 'sendgrid', 'dead', %s, repeat('e', 64),
                    '{"to": ["ana@example.com"], "subject": "receipt"}', 1, 3,
                    now() + interval '1 hour', 'ambiguous', 'read_timeout', 'test', 'seeded')
            RETURNING id
            """,
            (key,),
        ).fetchone()
    assert row is not None
    return str(row[0])


def _actions(orch: Any, job_id: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(orch.settings.database_url) as conn:
        return conn.execute(
            "SELECT actor, action, details FROM operator_actions WHERE target = %s", (job_id,)
        ).fetchall()


def test_dashboard_replay_of_an_ambiguous_send_asks_for_confirmation(
    server: str, orch: Any
) -> None:
    """Replay of a dead ``ambiguous`` send from the dashboard first answers a confirmation
    page stating the duplicate risk (nothing replayed, nothing audited); its confirm form
    (CSRF-protected) POSTs accept_duplicate_risk=yes and only that replays it, audited as
    accepting the risk. An ordinary dead charge still replays in one click."""
    send = _dead_ambiguous_send(orch, "dash-ambiguous-1")
    charge = seed_dead_job(orch, "dash-plain-1")
    browser = requests.Session()
    assert browser.post(f"{server}/ops/login", data={"token": TOKEN}, timeout=10).ok
    page = browser.get(f"{server}/ops/", timeout=10)
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf is not None and f'id="replay-{send}"' in page.text

    first = browser.post(
        f"{server}/ops/dlq/{send}/replay", data={"csrf": csrf.group(1)}, timeout=10
    )
    assert first.status_code == 200 and first.url.endswith(f"/ops/dlq/{send}/replay")
    assert 'id="duplicate-risk"' in first.text and "second time" in first.text
    assert "ana@example.com" in first.text
    assert 'name="accept_duplicate_risk" value="yes"' in first.text
    confirm_csrf = re.search(r'name="csrf" value="([^"]+)"', first.text)
    assert confirm_csrf is not None and confirm_csrf.group(1) == csrf.group(1)
    assert orch.job(send).state is JobState.DEAD
    assert _actions(orch, send) == []

    # The confirm form without its CSRF token does nothing.
    forged = browser.post(
        f"{server}/ops/dlq/{send}/replay", data={"accept_duplicate_risk": "yes"}, timeout=10
    )
    assert forged.status_code == 403 and orch.job(send).state is JobState.DEAD

    confirmed = browser.post(
        f"{server}/ops/dlq/{send}/replay",
        data={"csrf": confirm_csrf.group(1), "accept_duplicate_risk": "yes", "reason": "ok'd"},
        timeout=10,
    )
    assert confirmed.status_code == 200 and 'id="notice"' in confirmed.text
    assert orch.job(send).state is JobState.PENDING
    [(actor, action, details)] = _actions(orch, send)
    assert actor == "http:dashboard" and action == "dlq.replay"
    assert details["accept_duplicate_risk"] is True

    plain = browser.post(
        f"{server}/ops/dlq/{charge}/replay", data={"csrf": csrf.group(1)}, timeout=10
    )
    assert plain.status_code == 200 and 'id="notice"' in plain.text
    assert orch.job(charge).state is JobState.PENDING
    assert "accept_duplicate_risk" not in _actions(orch, charge)[0][2]
