"""The operator surface over real PostgreSQL, Redis, dramatiq and the simulator: listing the
DLQ at scale, replay (same key, next generation, adoption), discard, audit, the CLI, and
dramatiq's own dead letters."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest

from orchestrator import JobState
from orchestrator.api import Orchestrator
from orchestrator.breaker import Permit
from orchestrator.db.pool import q
from orchestrator.executor import Executor
from orchestrator.maintenance.clock import Clock
from orchestrator.ops.filters import JobFilter
from orchestrator.ops.replay import ReplayAction
from orchestrator.ops.service import Operations
from tests.conftest import (
    ON_RABBITMQ,
    cli_main,
    count_jobs,
    orchestrator_like,
    stop_worker,
    truncate,
    wait_until,
)


@pytest.fixture(autouse=True)
def _clean_ops_tables(orch: Any) -> None:
    truncate(orch, "operator_actions", "broker_dead_letters")


@pytest.fixture
def one_shot(orch: Any, simulator: Any) -> Iterator[Orchestrator]:
    """An Orchestrator sharing the session's store and broker whose jobs get one attempt."""
    yield orchestrator_like(
        orch,
        simulator.url,
        max_attempts=1,
        # Faults below are the point of these tests: the breaker must not hide them.
        breaker_failure_threshold=1000,
        breaker_window_calls=1000,
        breaker_min_calls=1000,
        rate_limits="stripe=100000",
    )


def _charge(o: Any, key: str, amount: int = 1000) -> Any:
    return o.charge(amount, "usd", "cus_ops", "pm_card_visa", key)


def _db(orch: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(orch.settings.database_url, autocommit=True)


def _seed_dead(orch: Any, n: int, error_code: str = "rate_limit") -> None:
    """n dead charges in one statement, created one second apart (newest: g = 1)."""
    with _db(orch) as conn:
        conn.execute(
            """
            INSERT INTO jobs (kind, provider, state, idempotency_key, fingerprint, amount,
                              currency, payment_method, max_attempts, deadline_at, dead_reason,
                              last_error_code, changed_by, change_reason, created_at)
            SELECT 'charge', 'stripe', 'dead', 'seeded-' || g, repeat('a', 64), 100 + g %% 1000,
                   'usd', 'pm_card_visa', 8, now() + interval '1 hour', 'attempts_exhausted',
                   %s, 'test', 'seeded dead', now() - g * interval '1 second'
            FROM generate_series(1, %s) AS g
            """,
            (error_code, n),
        )
        conn.execute("ANALYZE jobs")


def _plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _plan_nodes(child)


# -- listing at scale ----------------------------------------------------------------------


def test_first_dlq_page_of_10000_is_fast_and_uses_the_index(orch: Any) -> None:
    """With 10,000 dead jobs, the first page comes back in under 200 ms, newest first, from an
    index scan on jobs_dead_created_idx with no sort; the next page continues without overlap."""
    _seed_dead(orch, 10_000)
    ops = Operations.from_orchestrator(orch)
    ops.list_dead(JobFilter(), limit=50)  # warm the pool connection and the plan cache
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        page = ops.list_dead(JobFilter(), limit=50)
        timings.append(time.perf_counter() - started)
    best_ms, worst_ms = min(timings) * 1000, max(timings) * 1000
    print(f"first DLQ page of 10,000: best {best_ms:.1f} ms, worst {worst_ms:.1f} ms")
    assert max(timings) < 0.2
    assert len(page.jobs) == 50 and page.next_cursor
    assert [j.idempotency_key for j in page.jobs[:2]] == ["seeded-1", "seeded-2"]
    second = ops.list_dead(JobFilter(), limit=50, cursor=page.next_cursor)
    assert second.jobs[0].idempotency_key == "seeded-51"
    assert not {j.id for j in page.jobs} & {j.id for j in second.jobs}

    args = {
        **JobFilter(provider="stripe", error_code="rate_limit").args(),
        "cursor_created_at": "infinity",
        "cursor_id": "ffffffff-ffff-ffff-ffff-ffffffffffff",
        "limit": 51,
    }
    with orch.store.connection() as conn:
        row = conn.execute(b"EXPLAIN (FORMAT JSON) " + q("ops_list_dead").encode(), args).fetchone()
    plan = next(iter(row.values()))[0]["Plan"]
    nodes = list(_plan_nodes(plan))
    assert any(n.get("Index Name") == "jobs_dead_created_idx" for n in nodes), plan
    assert not any(n["Node Type"] in {"Sort", "Seq Scan"} for n in nodes), plan


def test_jobs_list_filters_and_pages(orch: Any) -> None:
    """jobs list filters by state and error code and pages by cursor through every match."""
    _seed_dead(orch, 120, error_code="card_declined")
    _charge(orch, "live-1")
    ops = Operations.from_orchestrator(orch)
    pending = ops.list_jobs(JobFilter.parse(state="pending"))
    assert [j.idempotency_key for j in pending.jobs] == ["live-1"]
    seen: list[str] = []
    cursor = None
    while True:
        page = ops.list_jobs(JobFilter.parse(error_code="card_declined"), limit=50, cursor=cursor)
        seen += [j.id for j in page.jobs]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert len(seen) == len(set(seen)) == 120


# -- replay decisions against the simulator ------------------------------------------------


def _die(
    o: Orchestrator, job_id: str, sim: Any = None, timeout_s: float = 10.0, **after: Any
) -> Any:
    """Run the job with the executor until it is dead (lookups wait for the search grace)."""
    executor = o.executor()
    executor.run(job_id)  # the first attempt, under the fault
    if sim is not None:
        sim.set_faults("stripe", **after)  # the fault may stop; what it saved stays

    def dead() -> bool:
        executor.run(job_id)
        return o.job(job_id).state is JobState.DEAD

    wait_until(dead, timeout_s=timeout_s, poll_s=0.2)
    return o.job(job_id)


def _succeed(o: Orchestrator, job_id: str) -> None:
    """Run the job until it succeeds (a 429's Retry-After may hold the rate limiter a moment)."""
    executor = o.executor()
    wait_until(
        lambda: executor.run(job_id) is JobState.SUCCEEDED or _is(o, job_id, JobState.SUCCEEDED),
        timeout_s=10,
        poll_s=0.2,
    )


def _is(o: Orchestrator, job_id: str, state: JobState) -> bool:
    return bool(o.job(job_id).state is state)


def test_replay_after_unsaved_failures_keeps_the_key(
    one_shot: Any, orch: Any, simulator: Any
) -> None:
    """Dead after 429s (never saved by Stripe): replay keeps generation 0, resets the budget,
    keeps the application key, audits the operator, and one PaymentIntent results."""
    simulator.set_faults("stripe", rate_429=1.0)
    job = _charge(one_shot, "r429")
    dead = _die(one_shot, job.id)
    assert dead.dead_reason == "attempts_exhausted"
    simulator.set_faults("stripe")
    result = Operations.from_orchestrator(orch).replay(job.id, "cli:alice", reason="stripe fixed")
    assert result.action is ReplayAction.REPLAY and result.key_generation == 0
    replayed = orch.job(job.id)
    assert replayed.state is JobState.PENDING
    assert replayed.idempotency_key == "r429"
    assert replayed.attempts == 1 and replayed.max_attempts == 1 + orch.settings.max_attempts
    _succeed(one_shot, job.id)
    assert len(simulator.payment_intents()) == 1
    actions = Operations.from_orchestrator(orch).show(job.id).actions
    assert [(a["actor"], a["action"], a["reason"]) for a in actions] == [
        (
            "cli:alice",
            "dlq.replay",
            "replay: key g0 holds nothing at the provider; same key (stripe fixed)",
        )
    ]
    last = orch.transitions(job.id)[-1]
    assert (last.from_state, last.to_state) == ("running", "succeeded")
    assert any(
        t.changed_by == "cli:alice" and t.to_state == "pending" for t in orch.transitions(job.id)
    )


def test_replay_after_saved_500_uses_the_next_generation(
    one_shot: Any, orch: Any, simulator: Any
) -> None:
    """Dead after a 500 that Stripe saved against key g0 (resending g0 would replay the 500):
    the replay proves absence by search and moves to g1; the charge then succeeds once."""
    simulator.set_faults("stripe", rate_500=1.0)
    job = _charge(one_shot, "r500")
    _die(one_shot, job.id, simulator)
    ops = Operations.from_orchestrator(orch)
    result = ops.replay(job.id, "cli:bob")
    assert result.action is ReplayAction.REPLAY and result.key_generation == 1, result
    _succeed(one_shot, job.id)
    intents = simulator.payment_intents()
    assert len(intents) == 1
    keys = [r["idempotency_key"] for r in simulator.requests_log() if r["method"] == "POST"]
    assert keys == [f"orch-{job.id}-g0", f"orch-{job.id}-g1"]


def test_replay_adopts_a_success_the_provider_already_holds(
    one_shot: Any, orch: Any, simulator: Any
) -> None:
    """A customerless charge (only search can find it) that executed but answered 500, then hid
    from search longer than the grace until it went dead: the replay finds the successful
    PaymentIntent and adopts it (dead -> succeeded), calling nothing."""
    simulator.set_faults("stripe", rate_500_after_execute=1.0, search_lag_s=3600)
    job = one_shot.charge(1000, "usd", None, "pm_card_visa", "radopt")
    _die(one_shot, job.id, simulator, search_lag_s=3600)
    simulator.set_faults("stripe")
    posts_before = len([r for r in simulator.requests_log() if r["method"] == "POST"])
    result = Operations.from_orchestrator(orch).replay(job.id, "cli:carol")
    assert result.action is ReplayAction.ADOPT
    done = orch.job(job.id)
    assert done.state is JobState.SUCCEEDED
    assert done.provider_ref == simulator.payment_intents()[0]["id"]
    assert len([r for r in simulator.requests_log() if r["method"] == "POST"]) == posts_before
    assert Operations.from_orchestrator(orch).show(job.id).actions[0]["action"] == "dlq.adopt"


def test_replay_waits_while_search_cannot_prove_absence(
    one_shot: Any, orch: Any, simulator: Any
) -> None:
    """Within the search grace after the last call, a saved-500 customerless job (only search
    can find it) is not replayed."""
    simulator.set_faults("stripe", rate_500=1.0)
    job = one_shot.charge(1000, "usd", None, "pm_card_visa", "rgrace")
    _die(one_shot, job.id, simulator)
    slow = orchestrator_like(orch, simulator.url, search_grace_s=600)
    result = Operations.from_orchestrator(slow).replay(job.id, "cli:dave")
    assert result.action is ReplayAction.SKIP and "search" in result.reason
    assert orch.job(job.id).state is JobState.DEAD


def test_discard_requires_a_reason_and_is_audited(orch: Any) -> None:
    """Discard without a reason is refused; with one, dead -> cancelled and audited once;
    discarding a job that is not dead is an InvalidOperation."""
    from orchestrator.errors import InvalidOperation, ValidationError

    _seed_dead(orch, 1)
    ops = Operations.from_orchestrator(orch)
    job = ops.list_dead(JobFilter()).jobs[0]
    with pytest.raises(ValidationError):
        ops.discard(job.id, "cli:erin", "  ")
    assert ops.discard(job.id, "cli:erin", "customer cancelled").state is JobState.CANCELLED
    with pytest.raises(InvalidOperation):
        ops.discard(job.id, "cli:erin", "again")
    actions = ops.show(job.id).actions
    assert [(a["action"], a["reason"]) for a in actions] == [
        ("dlq.discard", "discarded: customer cancelled")
    ]


# -- the CLI -------------------------------------------------------------------------------


@pytest.fixture
def cli_env(orch: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    return cli_main(
        orch,
        monkeypatch,
        ORCHESTRATOR_SEARCH_GRACE_S="0.5",
        ORCHESTRATOR_OPERATOR="olivia",
    )


def test_cli_dlq_list_show_and_discard(
    cli_env: Any, orch: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """dlq list --json pages with a cursor; discard without --reason is a usage error (exit 2);
    with it the job is cancelled and dlq show lists the audited action by $ORCHESTRATOR_OPERATOR."""
    _seed_dead(orch, 3)
    assert cli_env(["dlq", "list", "--json", "--limit", "2"]) == 0
    page = json.loads(capsys.readouterr().out)
    assert len(page["jobs"]) == 2 and page["next_cursor"]
    job_id = page["jobs"][0]["id"]
    assert cli_env(["dlq", "discard", job_id]) == 2
    assert "--reason" in capsys.readouterr().err
    assert cli_env(["dlq", "discard", job_id, "--reason", "duplicate order"]) == 0
    capsys.readouterr()
    assert cli_env(["dlq", "show", job_id, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["state"] == "cancelled"
    assert shown["operator_actions"][0]["actor"] == "cli:olivia"
    assert cli_env(["dlq", "list", "--since", "yesterday"]) == 2
    assert cli_env(["jobs", "list", "--state", "nope"]) == 2


def test_cli_bulk_replay_prompts_unless_yes(
    cli_env: Any, orch: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replay by filter: --dry-run changes nothing; a 'no' at the prompt changes nothing
    (exit 1); --yes replays only the matching jobs and audits the bulk run."""
    _seed_dead(orch, 4, error_code="rate_limit")
    _seed_more = [("other-1", "card_declined")]
    with _db(orch) as conn:
        for key, code in _seed_more:
            conn.execute(
                "UPDATE jobs SET last_error_code = %s WHERE idempotency_key = 'seeded-1'", (code,)
            )
    base = ["dlq", "replay", "--error-code", "rate_limit", "--rate", "100/s"]
    assert cli_env([*base, "--dry-run", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["skip"] == 3
    assert count_jobs(orch, "dead") == 4
    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
    assert cli_env(base) == 1
    assert "Replay 3 dead job(s)" in capsys.readouterr().err
    assert count_jobs(orch, "dead") == 4
    assert cli_env([*base, "--yes", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["counts"] == {"replay": 3, "adopt": 0, "skip": 0}
    assert count_jobs(orch, "dead") == 1 and count_jobs(orch, "pending") == 3
    with _db(orch) as conn:
        bulk = conn.execute(
            "SELECT actor, target FROM operator_actions WHERE action = 'dlq.replay_bulk'"
        ).fetchall()
    assert bulk == [
        ("cli:olivia", '{"error_code": "rate_limit", "provider": "stripe"}')
    ] or bulk == [("cli:olivia", '{"error_code": "rate_limit"}')]
    assert cli_env(["dlq", "replay", "--rate", "fast"]) == 2


# -- bulk replay end to end ----------------------------------------------------------------


class _NoBreaker:
    """Lets every call through: 1,000 saved 500s in a row would (rightly) open a real one."""

    def acquire(self, provider: str) -> Permit:
        return Permit(provider, "allow", 0.0, "closed", "test", "local")

    def record(self, permit: Permit, signal: Any, retry_after_s: float | None = None) -> None:
        return None


def test_bulk_replay_of_1000_dead_charges_after_the_fault_is_fixed(
    one_shot: Any, orch: Any, simulator: Any
) -> None:
    """1,000 charges die on 500s Stripe saved against their keys (one attempt each); after the
    fault is fixed, a replay by filter, run by a real dramatiq worker, brings every one to
    succeeded with exactly one PaymentIntent each, under the next key generation."""
    import dramatiq

    import actors  # noqa: F401  (declares the actors on the installed broker)

    simulator.set_faults("stripe", rate_500=1.0)
    started = time.perf_counter()
    # 50 customers: a lookup lists its customer's intents of the window (a consistent read).
    jobs = [
        one_shot.charge(100 + i, "usd", f"cus_bulk_{i % 50}", "pm_card_visa", f"bulk-{i}")
        for i in range(1000)
    ]
    executor = Executor(
        orch.store, one_shot.providers(), orch.dispatcher, one_shot.settings, breaker=_NoBreaker()
    )
    with ThreadPoolExecutor(max_workers=8) as pool:
        assert set(pool.map(executor.run, [j.id for j in jobs])) == {JobState.UNKNOWN}
        simulator.set_faults("stripe")  # the fault is fixed; the saved 500s stay
        time.sleep(orch.settings.search_grace_s)
        list(pool.map(executor.run, [j.id for j in jobs]))
    assert count_jobs(orch, "dead") == 1000
    died_s = time.perf_counter() - started

    worker = dramatiq.Worker(orch.broker, worker_threads=8, worker_timeout=50)
    worker.start()
    try:
        started = time.perf_counter()
        report = Operations.from_orchestrator(orch).replay_matching(
            JobFilter.parse(provider="stripe", kind="charge"), "cli:bulk", rate_per_s=1000
        )
        replay_s = time.perf_counter() - started
        assert report.counts() == {"replay": 1000, "adopt": 0, "skip": 0}
        wait_until(lambda: count_jobs(orch, "succeeded") == 1000, timeout_s=90, poll_s=0.5)
        done_s = time.perf_counter() - started
    finally:
        stop_worker(worker)
    print(
        f"1000 dead in {died_s:.1f}s; replayed in {replay_s:.1f}s; "
        f"all succeeded {done_s:.1f}s after the replay began"
    )
    per_job: dict[str, int] = {}
    for pi in simulator.payment_intents():
        owner = pi["metadata"]["orchestrator_job_id"]
        per_job[owner] = per_job.get(owner, 0) + 1
    assert set(per_job) == {j.id for j in jobs} and set(per_job.values()) == {1}
    assert {orch.job(j.id).key_generation for j in jobs[:50]} == {1}


# -- dramatiq's own dead letters -----------------------------------------------------------


@pytest.mark.skipif(
    ON_RABBITMQ,
    reason="Redis as the broker: its XQ keys and fetch/nack scripts (the RabbitMQ counterpart is "
    "test_rabbitmq_broker.py::test_a_message_dead_lettered_on_rabbitmq_is_reconciled_by_the_clock)",
)
def test_a_message_dead_lettered_by_dramatiq_shows_up_and_its_job_is_resent(orch: Any) -> None:
    """A job's message that dramatiq moved to its .XQ (via its own fetch + nack script) is
    copied to broker_dead_letters by the clock pass, removed from Redis, and the still-pending
    job gets a new message."""
    import redis

    from orchestrator.maintenance.deadletters import recent_dead_letters, xq_keys

    job = _charge(orch, "xq-1")  # pending, its message queued
    orch.dispatcher.flush()  # sent from the background thread: wait for it
    broker = orch.broker
    queue = orch.settings.queue_name
    fetched = broker.do_fetch(queue, 10)
    assert len(fetched) == 1
    message_id = json.loads(fetched[0])["options"]["redis_message_id"]
    broker.do_nack(queue, message_id)
    client = redis.Redis.from_url(orch.settings.redis_url)
    zset, _ = xq_keys(orch.settings.redis_namespace, queue)
    assert client.zcard(zset) == 1
    assert client.llen(f"{orch.settings.redis_namespace}:{queue}") == 0

    report = Clock(orch).run_once()
    assert report["dead_letters_reconciled"] == 1
    assert client.zcard(zset) == 0
    letters = recent_dead_letters(orch, 10)
    assert [(x["job_id"], x["job_state"], x["action"]) for x in letters] == [
        (job.id, "pending", "redispatched")
    ]
    assert client.llen(f"{orch.settings.redis_namespace}:{queue}") == 1
    client.close()


def test_discard_refuses_while_the_provider_holds_the_money(
    cli_env: Any, orch: Any, simulator: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """A dead charge whose PaymentIntent succeeded at Stripe: discard exits 1 with one line
    saying why (the ledger would lie), and changes nothing; --force discards it, audited with
    what the provider held."""
    simulator.set_faults("stripe", rate_500_after_execute=1.0)  # executed, 500 saved
    job = _charge(orch, "discard-held")
    assert orch.executor().run(job.id) is JobState.UNKNOWN
    simulator.set_faults("stripe")
    with _db(orch) as conn:
        conn.execute(
            "UPDATE jobs SET state = 'dead', dead_reason = 'unresolved', changed_by = 'test', "
            "change_reason = 'test' WHERE id = %s",
            (job.id,),
        )
    assert cli_env(["dlq", "discard", job.id, "--reason", "looks stale"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds pi_" in err and "--force" in err
    assert orch.job(job.id).state is JobState.DEAD
    assert cli_env(["dlq", "discard", job.id, "--reason", "refunded by hand", "--force"]) == 0
    capsys.readouterr()
    assert orch.job(job.id).state is JobState.CANCELLED
    (action,) = Operations.from_orchestrator(orch).show(job.id).actions
    assert action["details"]["forced"] is True
    assert action["details"]["provider_status"] == "succeeded"
