"""/metrics: each family once, live jobs as a gauge and settles as a counter, a scrape whose
cost does not grow with history (buffers touched, from EXPLAIN), the optional bearer token
(ORCHESTRATOR_METRICS_TOKEN) and the separate listener (ORCHESTRATOR_METRICS_BIND), over real
HTTP, PostgreSQL and Redis."""

from __future__ import annotations

import socket
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.db.pool import q
from orchestrator.models import LIVE_STATES, JobState
from orchestrator.ops.metrics import serve_metrics
from tests.conftest import orchestrator_like, serve, truncate
from tests.processes import free_port, settings_env, spawn

TOKEN = "metrics-test-token-" + uuid.uuid4().hex
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# Every family a scrape carries (counters under their name without `_total`).
FAMILIES = {
    "orchestrator_jobs",
    "orchestrator_jobs_settled",
    "orchestrator_dlq_size",
    "orchestrator_attempts_recent",
    "orchestrator_provider_latency_seconds",
    "orchestrator_reconcile_actions",
    "orchestrator_ledger_drift",
    "orchestrator_queue_depth",
    "orchestrator_broker_dead_letters",
    "orchestrator_breaker_state",
}
HISTORY_JOBS = 200_000


@pytest.fixture(scope="module")
def server(orch: Any, simulator: Any) -> Iterator[str]:
    """create_app() without a metrics token or bind, live on an ephemeral port."""
    from orchestrator.web import create_app

    with serve(create_app(orch)) as url:
        yield url


def _families(text: str) -> list[Any]:
    return list(text_string_to_metric_families(text))


def _samples(text: str, family: str) -> dict[tuple[tuple[str, str], ...], float]:
    """{sorted labels: value} of ``family``'s samples (the counter's ``_total`` ones)."""
    found: dict[tuple[tuple[str, str], ...], float] = {}
    for fam in _families(text):
        if fam.name == family:
            for s in fam.samples:
                if not s.name.endswith("_created"):
                    found[tuple(sorted(s.labels.items()))] = s.value
    return found


def _sql(orch: Any, statement: str, *params: Any) -> None:
    with psycopg.connect(orch.settings.database_url, autocommit=True) as conn:
        conn.execute(statement, params or None)


def _seed(orch: Any, state: str, key: str) -> None:
    """One charge job inserted straight into ``state`` (no settle recorded: an insert)."""
    _sql(
        orch,
        """
        INSERT INTO jobs (kind, provider, state, idempotency_key, fingerprint, amount, currency,
                          payment_method, max_attempts, deadline_at, dead_reason, lease_owner,
                          lease_expires_at, unknown_cause, provider_ref, changed_by,
                          change_reason)
        VALUES ('charge', 'stripe', %s, %s, repeat('c', 64), 500, 'usd', 'pm_card_visa', 3,
                now() + interval '1 hour', 'attempts_exhausted', 'w1', now(), 'no_response',
                'pi_seeded', 'test', 'seeded')
        """,
        state,
        key,
    )


# -- the exposition ----------------------------------------------------------------------------


def test_each_family_appears_exactly_once(server: str, orch: Any) -> None:
    """The whole exposition parses; no family is named twice; every expected family is there."""
    _seed(orch, "dead", "once-dead")
    job = orch.charge(700, "usd", None, "pm_card_visa", "once-charge")
    assert orch.executor().run(job.id) is JobState.SUCCEEDED
    names = [f.name for f in _families(requests.get(server + "/metrics", timeout=5).text)]
    assert len(names) == len(set(names)), sorted({n for n in names if names.count(n) > 1})
    assert set(names) >= FAMILIES, FAMILIES - set(names)


def test_live_gauge_and_settled_counter(server: str, orch: Any) -> None:
    """orchestrator_jobs has the live states only (0 when none); settles are the counter
    orchestrator_jobs_settled_total{kind,provider,state}: drained totals plus the outbox, and a
    drain moving rows from one to the other changes nothing."""
    for i, state in enumerate(["pending", "pending", "retrying", "dead"]):
        _seed(orch, state, f"live-{i}")
    job = orch.charge(700, "usd", None, "pm_card_visa", "live-charge")
    assert orch.executor().run(job.id) is JobState.SUCCEEDED
    declined = orch.charge(700, "usd", None, "pm_card_chargeDeclined", "live-declined")
    assert orch.executor().run(declined.id) is JobState.FAILED
    # Settles drained earlier, by the clock (41 more successes than the outbox holds).
    _sql(orch, "INSERT INTO job_settled_totals VALUES ('charge', 'stripe', 'succeeded', 41)")

    text = requests.get(server + "/metrics", timeout=5).text
    gauge = {dict(k)["state"]: v for k, v in _samples(text, "orchestrator_jobs").items()}
    assert gauge == {
        "pending": 2.0,
        "running": 0.0,
        "retrying": 1.0,
        "unknown": 0.0,
        "processing": 0.0,
        "dead": 1.0,
    }
    assert "# TYPE orchestrator_jobs_settled_total counter" in text
    settled = {
        (dict(k)["kind"], dict(k)["provider"], dict(k)["state"]): v
        for k, v in _samples(text, "orchestrator_jobs_settled").items()
    }
    expected = {("charge", "stripe", "succeeded"): 42.0, ("charge", "stripe", "failed"): 1.0}
    assert settled == expected
    assert (
        'orchestrator_jobs_settled_total{kind="charge",provider="stripe",state="succeeded"} 42.0'
        in text
    )
    assert "orchestrator_dlq_size 1.0" in text

    # The clock's drain, in one transaction: the outbox rows become totals.
    with psycopg.connect(orch.settings.database_url) as conn:
        conn.execute(
            """
            WITH drained AS (DELETE FROM job_settlements RETURNING kind, provider, state)
            INSERT INTO job_settled_totals AS t (kind, provider, state, n)
            SELECT kind, provider, state, count(*) FROM drained GROUP BY 1, 2, 3
            ON CONFLICT (kind, provider, state) DO UPDATE SET n = t.n + excluded.n
            """
        )
    again = requests.get(server + "/metrics", timeout=5).text
    assert {
        (dict(k)["kind"], dict(k)["provider"], dict(k)["state"]): v
        for k, v in _samples(again, "orchestrator_jobs_settled").items()
    } == expected


def test_attempts_are_counted_at_the_provider_they_called(server: str, orch: Any) -> None:
    """A charge that failed over has attempts at two providers: each attempt is labelled with
    the provider it called, not the job's current one. An attempt recorded before migration
    0006 (no provider of its own) takes its job's."""
    job = orch.charge(700, "usd", None, "pm_card_visa", "attempts-by-provider")
    assert orch.executor().run(job.id) is JobState.SUCCEEDED
    _seed(orch, "dead", "attempts-old-row")
    _sql(
        orch,
        """
        INSERT INTO job_attempts (job_id, attempt, key_generation, worker, outcome,
                                  duration_ms, started_at, provider)
        SELECT id, 2, 0, 'w1', 'not_executed'::attempt_outcome, 30, now(), 'razorpay' FROM jobs
        WHERE idempotency_key = 'attempts-by-provider'
        UNION ALL
        SELECT id, 1, 0, 'w1', 'ambiguous'::attempt_outcome, 70, now(), NULL FROM jobs
        WHERE idempotency_key = 'attempts-old-row'
        """,
    )
    text = requests.get(server + "/metrics", timeout=5).text
    outcomes = {
        (dict(k)["provider"], dict(k)["outcome"]): v
        for k, v in _samples(text, "orchestrator_attempts_recent").items()
    }
    assert outcomes == {
        ("stripe", "succeeded"): 1.0,
        ("razorpay", "not_executed"): 1.0,
        ("stripe", "ambiguous"): 1.0,
    }
    assert 'orchestrator_provider_latency_seconds_count{provider="razorpay"} 1.0' in text
    assert 'orchestrator_provider_latency_seconds_count{provider="stripe"} 2.0' in text


def test_a_scrape_never_counts_every_job(
    server: str, orch: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Store.count_by_state (a scan of every job ever) is not called by a scrape."""
    from orchestrator.db import Store

    def refuse(self: Any) -> dict[str, int]:
        raise AssertionError("a scrape called count_by_state")

    monkeypatch.setattr(Store, "count_by_state", refuse)
    resp = requests.get(server + "/metrics", timeout=5)
    assert resp.status_code == 200 and "orchestrator_jobs{" in resp.text


# -- cost: buffers touched, with and without a long history -----------------------------------

SCRAPE_QUERIES: dict[str, dict[str, Any]] = {
    "metrics_live_jobs": {"states": [str(s) for s in LIVE_STATES]},
    "metrics_dlq_size": {},
    "metrics_settled_totals": {},
    "metrics_attempt_outcomes": {"window_s": 300},
    "metrics_attempt_latency": {"window_s": 300, "bounds_ms": [26, 51, 101]},
}


def _buffers(orch: Any, name: str, args: dict[str, Any]) -> int:
    """Shared buffers (hit + read) the execution of the named query touched."""
    with psycopg.connect(orch.settings.database_url, autocommit=True) as conn:
        row = conn.execute(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + q(name),
            args,
        ).fetchone()
    assert row is not None
    plan = row[0][0]["Plan"]
    return int(plan["Shared Hit Blocks"]) + int(plan["Shared Read Blocks"])


def _costs(orch: Any) -> dict[str, int]:
    costs = {name: _buffers(orch, name, args) for name, args in SCRAPE_QUERIES.items()}
    costs["count_by_state"] = _buffers(orch, "count_by_state", {})
    return costs


def _add_history(orch: Any, first: int, last: int) -> None:
    """Settled jobs ``first``..``last``, fast: no triggers (no transitions, no outbox rows, no
    FK checks), then ANALYZE (what autovacuum does after such a load)."""
    with psycopg.connect(orch.settings.database_url, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute(
            """
            INSERT INTO jobs (kind, provider, state, idempotency_key, fingerprint, amount,
                              currency, payment_method, max_attempts, deadline_at,
                              provider_ref, changed_by, change_reason, created_at)
            SELECT 'charge', 'stripe', 'succeeded', 'history-' || g, repeat('a', 64), 500,
                   'usd', 'pm_card_visa', 3, now(), 'pi_history_' || g, 'test', 'history',
                   now() - g * interval '1 second'
            FROM generate_series(%s::int, %s::int) AS g
            """,
            (first, last),
        )
        conn.execute("ANALYZE jobs")


def test_scrape_cost_does_not_grow_with_history(orch: Any, server: str) -> None:
    """Buffers touched by each query of a scrape, with the same live jobs (30, a few dead) and
    0, 20,000 then 200,000 settled jobs: ten times the history costs the scrape nothing more
    (a btree level at most), and it stays a few dozen buffers, while count_by_state (a scan of
    every job ever) grows with the history."""
    live = ["pending"] * 20 + ["retrying"] * 5 + ["dead"] * 5
    for i, state in enumerate(live):
        _seed(orch, state, f"cost-{i}")
    job = orch.charge(700, "usd", None, "pm_card_visa", "cost-charge")
    assert orch.executor().run(job.id) is JobState.SUCCEEDED
    _sql(orch, "ANALYZE jobs")
    try:
        empty = _costs(orch)
        started = time.monotonic()
        _add_history(orch, 1, HISTORY_JOBS // 10)
        tenth = _costs(orch)
        _add_history(orch, HISTORY_JOBS // 10 + 1, HISTORY_JOBS)
        full = _costs(orch)
        print(
            f"\nbuffers, live jobs {len(live) + 1}, settled history:"
            f"\n  0        {empty}\n  {HISTORY_JOBS // 10:<8} {tenth}\n  {HISTORY_JOBS:<8} {full}"
            f"\n(history inserted in {time.monotonic() - started:.1f}s)"
        )
        for name in SCRAPE_QUERIES:
            assert full[name] <= 2 * tenth[name] + 8, (name, tenth[name], full[name])
            assert full[name] <= 2 * empty[name] + 2 * len(live) + 8, (name, empty, full)
        assert full["count_by_state"] > 5 * tenth["count_by_state"] > 50 * empty["count_by_state"]
        # And the scrape still reads right: the history is in neither family.
        text = requests.get(server + "/metrics", timeout=10).text
        gauge = {dict(k)["state"]: v for k, v in _samples(text, "orchestrator_jobs").items()}
        assert gauge["pending"] == 20.0 and gauge["dead"] == 5.0 and "succeeded" not in gauge
        assert _samples(text, "orchestrator_jobs_settled") == {
            (("kind", "charge"), ("provider", "stripe"), ("state", "succeeded")): 1.0
        }
    finally:
        truncate(orch, "job_transitions", "job_attempts", "job_settlements", "jobs CASCADE")


# -- the token ----------------------------------------------------------------------------------


def test_metrics_token_is_required_when_set(orch: Any, simulator: Any) -> None:
    """With ORCHESTRATOR_METRICS_TOKEN, /metrics answers 401 (with WWW-Authenticate) to a
    missing, wrong or non-bearer credential and 200 to the token; /healthz stays open."""
    from orchestrator.web import create_app

    app = create_app(orchestrator_like(orch, simulator.url, metrics_token=TOKEN))
    with serve(app) as url:
        for bad in [None, "Bearer wrong", "Bearer ", "Basic " + TOKEN, TOKEN, "Bearer é" + TOKEN]:
            headers = {"Authorization": bad.encode()} if bad is not None else {}
            resp = requests.get(url + "/metrics", headers=headers, timeout=5)
            assert resp.status_code == 401, bad
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            assert "orchestrator_" not in resp.text
        ok = requests.get(url + "/metrics", headers=AUTH, timeout=5)
        assert ok.status_code == 200
        assert {f.name for f in _families(ok.text)} >= FAMILIES
        assert requests.get(url + "/healthz", timeout=5).status_code == 200


# -- the separate listener ------------------------------------------------------------------------


def test_metrics_bind_moves_metrics_off_the_app(orch: Any, simulator: Any) -> None:
    """With ORCHESTRATOR_METRICS_BIND the app's /metrics is 404; the registry it built is served
    on its own listener (here on an ephemeral port)."""
    from orchestrator.web import create_app

    bind = f"127.0.0.1:{free_port()}"
    app = create_app(orchestrator_like(orch, simulator.url, metrics_bind=bind))
    with serve(app) as url:
        assert requests.get(url + "/metrics", timeout=5).status_code == 404
        assert requests.get(url + "/healthz", timeout=5).status_code == 200
    metrics = serve_metrics(app.state.metrics_registry, "127.0.0.1", 0, None)
    try:
        resp = requests.get(f"http://127.0.0.1:{metrics.port}/metrics", timeout=5)
        assert resp.status_code == 200
        assert {f.name for f in _families(resp.text)} >= FAMILIES
        assert (
            requests.get(f"http://127.0.0.1:{metrics.port}/healthz", timeout=5).status_code == 404
        )
    finally:
        metrics.stop()


def test_a_taken_metrics_address_is_an_error(orch: Any) -> None:
    """A listener that cannot bind raises instead of serving nothing in silence."""
    from orchestrator.errors import OrchestratorError
    from orchestrator.ops.metrics import metrics_registry

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OrchestratorError, match=f"127.0.0.1:{port}"):
            serve_metrics(metrics_registry(orch), "127.0.0.1", port, None)


def _wait_http(url: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=1)
            return
        except requests.ConnectionError:
            time.sleep(0.1)
    raise AssertionError(f"{url} never answered")


def test_orchestrator_web_serves_metrics_on_the_bind_only(
    orch: Any, simulator: Any, tmp_path: Path
) -> None:
    """`orchestrator web` with ORCHESTRATOR_METRICS_BIND and ORCHESTRATOR_METRICS_TOKEN: the
    main port's /metrics is 404; the metrics port wants the token, then serves every family."""
    port, metrics_port = free_port(), free_port()
    env = settings_env(
        orch.settings,
        ORCHESTRATOR_METRICS_BIND=f"127.0.0.1:{metrics_port}",
        ORCHESTRATOR_METRICS_TOKEN=TOKEN,
    )
    args = [sys.executable, "-m", "orchestrator", "web", "--port", str(port)]
    with spawn(args, env, tmp_path / "web.log") as proc:
        main, side = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}"
        _wait_http(main + "/healthz")
        assert requests.get(main + "/healthz", timeout=5).status_code == 200, proc.log()
        assert requests.get(main + "/metrics", headers=AUTH, timeout=5).status_code == 404
        assert requests.get(side + "/metrics", timeout=5).status_code == 401
        resp = requests.get(side + "/metrics", headers=AUTH, timeout=5)
        assert resp.status_code == 200, proc.log()
        names = [f.name for f in _families(resp.text)]
        assert len(names) == len(set(names)) and set(names) >= FAMILIES


# -- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "needle"),
    [
        ("ORCHESTRATOR_METRICS_TOKEN", "hunter2hunter2", "32"),
        ("ORCHESTRATOR_METRICS_BIND", "9100", "HOST:PORT"),
        ("ORCHESTRATOR_METRICS_BIND", "localhost:http", "HOST:PORT"),
        ("ORCHESTRATOR_METRICS_BIND", "::1:9100", "HOST:PORT"),
        ("ORCHESTRATOR_METRICS_BIND", "0.0.0.0:70000", "65535"),
    ],
)
def test_bad_metrics_settings_stop_start_up(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    value: str,
    needle: str,
) -> None:
    """A short metrics token or a bind that is not HOST:PORT is a configuration error: exit 2,
    one line naming the variable (and never echoing a token)."""
    from orchestrator.cli import main

    monkeypatch.setenv("DATABASE_URL", "postgresql://u@127.0.0.1:1/db")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv(variable, value)
    assert main(["web"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert variable in err and needle in err
    assert "hunter2" not in err


def test_good_metrics_bind_values() -> None:
    """HOST:PORT, bracketed IPv6 included; empty means unset."""
    from orchestrator.config import load_settings

    base = {"database_url": "postgresql://u@h/db", "redis_url": "redis://h"}
    assert load_settings(**base, metrics_bind="0.0.0.0:9100").metrics_bind_address == (
        "0.0.0.0",
        9100,
    )
    assert load_settings(**base, metrics_bind="[::1]:9100").metrics_bind_address == ("::1", 9100)
    assert load_settings(**base, metrics_bind="").metrics_bind_address is None
