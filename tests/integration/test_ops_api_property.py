"""Property: whatever body a caller POSTs to the ops JSON API's write endpoints (objects with
the real field names and wrong types, non-objects, garbage bytes, huge numbers, deep
nesting), the answer is 2xx, 400, 404, 409 or 413, never a 5xx; and a 400 writes nothing (no
operator_actions row, no job state change, no transition). Live uvicorn, real PostgreSQL and
Redis."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import requests
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.conftest import orchestrator_like, seed_dead_job, serve, truncate

TOKEN = "ops-property-token-" + uuid.uuid4().hex
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
ALLOWED = {400, 404, 409, 413}
FIELDS = [
    "reason",
    "accept_duplicate_risk",
    "force",
    "kind",
    "provider",
    "error_code",
    "since",
    "until",
    "limit",
    "dry_run",
    "rate_per_s",
]

PROPERTY = settings(
    max_examples=120,
    derandomize=True,  # the same examples in every run: CI is repeatable; raise to explore
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

texts = st.text(alphabet=st.characters(), max_size=60)  # surrogates and NUL included
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**200), max_value=2**200),
    st.floats(allow_nan=True, allow_infinity=True),
    texts,
    st.sampled_from(["charge", "email", "stripe", "2024-01-01", "2024-W01-1", "yes", "", " "]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=4)),
    max_leaves=12,
)
# Objects with the real field names and values of any type, sometimes plausible ones.
plausible = st.fixed_dictionaries(
    {},
    optional={
        "reason": st.one_of(texts, json_values),
        "accept_duplicate_risk": st.one_of(st.booleans(), json_values),
        "force": st.one_of(st.booleans(), json_values),
        "kind": st.one_of(st.sampled_from(["charge", "refund", "email"]), json_values),
        "provider": st.one_of(st.sampled_from(["stripe", "sendgrid"]), json_values),
        "error_code": json_values,
        "since": st.one_of(st.sampled_from(["2020-01-01T00:00:00Z", "yesterday"]), json_values),
        "until": json_values,
        "limit": st.one_of(st.integers(min_value=-5, max_value=300), json_values),
        "dry_run": st.one_of(st.booleans(), json_values),
        "rate_per_s": st.one_of(st.floats(), json_values),
    },
)
objects = st.one_of(
    plausible,
    st.dictionaries(st.one_of(st.sampled_from(FIELDS), texts), json_values, max_size=6),
)


def _dumps(value: Any) -> bytes:
    """JSON as a lax client writes it (NaN, Infinity) and, for lone surrogates, escaped."""
    return json.dumps(value, allow_nan=True).encode()


raw_bodies = st.one_of(
    objects.map(_dumps),
    json_values.map(_dumps),  # non-objects (and objects) of any shape
    st.binary(max_size=200),  # garbage bytes
    st.integers(min_value=1, max_value=20_000).map(lambda n: b"9" * n),  # huge numbers
    st.integers(min_value=1, max_value=20_000).map(lambda n: b'{"limit": ' + b"9" * n + b"}"),
    st.sampled_from([b"1e999", b"-1e999", b"NaN", b'{"rate_per_s": Infinity}', b"\xef\xbb\xbf{}"]),
    # Deep nesting, inside the 64 KiB cap and past it.
    st.integers(min_value=1, max_value=40_000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(min_value=1, max_value=30_000).map(lambda n: b'{"reason":' * n + b"1" + b"}" * n),
)
targets = st.sampled_from(["bulk", "replay", "discard"])
job_refs = st.sampled_from(["dead", "dead", "missing", "garbage"])


@pytest.fixture(scope="module")
def server(orch: Any, simulator: Any) -> Iterator[str]:
    from orchestrator.web import create_app

    with serve(create_app(orchestrator_like(orch, simulator.url, ops_token=TOKEN))) as url:
        yield url


@pytest.fixture(autouse=True)
def _clean_ops_tables(orch: Any) -> None:
    truncate(orch, "operator_actions", "broker_dead_letters")


def _snapshot(orch: Any) -> tuple[Any, ...]:
    """What a refused request must leave as it was."""
    with psycopg.connect(orch.settings.database_url) as conn:
        actions = conn.execute("SELECT count(*) FROM operator_actions").fetchone()
        transitions = conn.execute("SELECT count(*) FROM job_transitions").fetchone()
        jobs = conn.execute(
            "SELECT id, state, key_generation, updated_at FROM jobs ORDER BY id"
        ).fetchall()
    return actions, transitions, tuple(jobs)


def _one_dead_job(orch: Any) -> str:
    """A dead job to aim at: an earlier example may have replayed or discarded the last one."""
    with psycopg.connect(orch.settings.database_url) as conn:
        row = conn.execute("SELECT id FROM jobs WHERE state = 'dead' LIMIT 1").fetchone()
    return str(row[0]) if row else seed_dead_job(orch, f"prop-{uuid.uuid4().hex}")


def _post(
    server: str, orch: Any, target: str, ref: str, body: bytes, *, record: bool = False
) -> tuple[int, str]:
    job_id = {
        "dead": _one_dead_job(orch),
        "missing": str(uuid.uuid4()),
        "garbage": "not-a-uuid",
    }[ref]
    path = "/ops/api/dlq/replay" if target == "bulk" else f"/ops/api/dlq/{job_id}/{target}"
    before = _snapshot(orch)
    answer = requests.post(server + path, data=body, headers=AUTH, timeout=30)
    status = answer.status_code
    if record:  # see them with --hypothesis-show-statistics
        event(f"{target} -> {status}")
    assert 200 <= status < 300 or status in ALLOWED, (path, body[:200], status, answer.text[:300])
    if status == 400:
        assert _snapshot(orch) == before, (path, body[:200], answer.text[:300])
    if status >= 400:
        assert "error" in answer.json()
    return status, path


@PROPERTY
@given(target=targets, ref=job_refs, body=raw_bodies)
def test_ops_write_endpoints_never_answer_5xx(
    server: str, orch: Any, target: str, ref: str, body: bytes
) -> None:
    """Any body to bulk replay, replay or discard: 2xx/400/404/409/413, and a 400 writes
    nothing."""
    _post(server, orch, target, ref, body, record=True)


@PROPERTY
@given(target=targets, body=objects)
def test_objects_with_the_real_fields_never_answer_5xx(
    server: str, orch: Any, target: str, body: dict[str, Any]
) -> None:
    """Objects built from the real field names (any types) against a dead job."""
    _post(server, orch, target, "dead", _dumps(body), record=True)


ALL = ("bulk", "replay", "discard")


@pytest.mark.parametrize(
    ("body", "routes"),
    [
        (b"[" * 30_000 + b"]" * 30_000, ALL),  # deeper than the JSON parser's recursion
        (b'{"reason":' * 5_000 + b"1" + b"}" * 5_000, ALL),  # 50 KiB, 5000 deep
        (b'{"limit": ' + b"9" * 10_000 + b"}", ALL),  # past Python's int-from-text digit cap
        (b'{"rate_per_s": Infinity}', ("bulk",)),
        (b'{"rate_per_s": NaN, "limit": 1}', ("bulk",)),
        (b'{"limit": 1e999}', ("bulk",)),
        (b'{"reason": "\\ud800 lone surrogate"}', ALL),
        (b'{"reason": "nul \\u0000 byte"}', ALL),
        (b'{"force": "yes", "reason": "x"}', ("discard",)),
        (b'{"accept_duplicate_risk": 1}', ("replay", "bulk")),
    ],
)
def test_known_hostile_bodies_are_400_and_write_nothing(
    server: str, orch: Any, body: bytes, routes: tuple[str, ...]
) -> None:
    """Hostile bodies: each is a 400 (nothing written) on the routes that read the field."""
    for target in routes:
        status, path = _post(server, orch, target, "dead", body)
        assert status == 400, (path, body[:60], status)
