"""``Orchestrator.charge_many``: many charges accepted in one insert.

Every item is validated first (by :func:`orchestrator.app.requests.charge_row`, as ``charge()``
does: the same rows and fingerprints). The batch is then inserted with one statement
(``INSERT ... SELECT FROM jsonb_to_recordset(...) ON CONFLICT (idempotency_key) DO NOTHING``);
the jobs already holding a key of the batch are read in the same transaction and their
fingerprints compared, rolling back on a conflict: the whole batch is accepted or nothing is
written.
The new jobs' messages then go to the dispatcher's background sender (the caller never waits
for Redis), or with ``conn=`` to the clock's NOTIFY dispatch at the caller's commit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from orchestrator.app import requests as rq
from orchestrator.broker import Dispatcher
from orchestrator.config import Settings
from orchestrator.db import Conn, Store
from orchestrator.db import store as jobs_sql
from orchestrator.errors import IdempotencyConflict, ValidationError
from orchestrator.logs import get_logger
from orchestrator.models import Job

log = get_logger(__name__)

# charge()'s arguments, the keys an item may have (conn is the batch's, not an item's).
REQUIRED_ARGUMENTS = ("amount", "currency", "customer", "payment_method", "idempotency_key")
OPTIONAL_ARGUMENTS = (
    "metadata",
    "description",
    "return_url",
    "stripe_account",
    "capture_method",
    "statement_descriptor_suffix",
    "receipt_email",
    "payment_method_types",
    "transfer_data",
    "application_fee_amount",
    "on_behalf_of",
    "capture",
    "provider",
    "failover",
    "provider_options",
)
CHARGE_ARGUMENTS = frozenset(REQUIRED_ARGUMENTS + OPTIONAL_ARGUMENTS)


class BatchIdempotencyConflict(IdempotencyConflict):
    """Two items of one batch use the same key for different requests (caught before anything
    is written; ``job_id`` is empty, ``items`` are their indexes)."""

    def __init__(self, idempotency_key: str, first: int, second: int) -> None:
        super().__init__(idempotency_key, "")
        self.args = (
            f"items {first} and {second} use idempotency key {idempotency_key!r} "
            "with different parameters",
        )
        self.items = (first, second)


def charge_many(
    store: Store,
    dispatcher: Dispatcher,
    settings: Settings,
    items: Sequence[Mapping[str, Any]],
    *,
    conn: Conn | None = None,
) -> list[Job]:
    """Accept every item as a charge job (see ``Orchestrator.charge_many``); the jobs in the
    order of ``items``."""
    rows = charge_rows(items, settings.charge_provider)
    if not rows:
        return []
    unique = distinct_by_key(rows)
    # The same for every row: the attempt budget, the retry horizon, who accepted it.
    defaults = rq.with_defaults(settings, {})
    if conn is not None:
        with jobs_sql.savepoint(conn):
            by_key, created = _insert(conn, unique, defaults)
            jobs_sql.notify_dispatch_many(conn, created)
    else:
        with store.connection() as own:
            by_key, created = _insert(own, unique, defaults)
        dispatcher.send_soon_many(created)  # committed: the background sender sends them
    log.info("jobs.accepted", kind="charge", items=len(rows), created=len(created))
    return [by_key[row["idempotency_key"]] for row in rows]


def charge_rows(
    items: Sequence[Mapping[str, Any]], route: Callable[[str], str] | None = None
) -> list[dict[str, Any]]:
    """Every item's job row (without the batch-wide defaults); ``ValidationError`` naming the
    first bad item's index."""
    if isinstance(items, str | bytes | Mapping):
        raise ValidationError("items must be a sequence of mappings of charge() arguments")
    rows = []
    for index, item in enumerate(items):
        try:
            rows.append(rq.charge_row(**_arguments(item), route=route))
        except ValidationError as exc:
            raise ValidationError(f"item {index}: {exc}") from exc
    return rows


def distinct_by_key(rows: Sequence[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """(index, row) of each row whose key was not seen before in the batch; a repeated key
    must repeat its request (``BatchIdempotencyConflict`` otherwise)."""
    first_of: dict[str, int] = {}
    unique = []
    for index, row in enumerate(rows):
        key = row["idempotency_key"]
        first = first_of.setdefault(key, index)
        if first == index:
            unique.append((index, row))
        elif rows[first]["fingerprint"] != row["fingerprint"]:
            raise BatchIdempotencyConflict(key, first, index)
    return unique


def _arguments(item: object) -> dict[str, Any]:
    if not isinstance(item, Mapping):
        raise ValidationError(
            f"expected a mapping of charge() arguments, got {type(item).__name__}"
        )
    unknown = [k for k in item if k not in CHARGE_ARGUMENTS]
    if unknown:
        raise ValidationError(f"unexpected argument {unknown[0]!r}")
    missing = [k for k in REQUIRED_ARGUMENTS if k not in item]
    if missing:
        raise ValidationError(f"missing argument {missing[0]!r}")
    return dict(item)


def _insert(
    conn: Conn, indexed: Sequence[tuple[int, dict[str, Any]]], defaults: dict[str, Any]
) -> tuple[dict[str, Job], list[str]]:
    """Insert-or-get the rows (keys distinct, each with its item index) in ``conn``'s
    transaction: every key's job and the ids created, in item order. Raises (for the caller
    to roll back) when a key is held by another request."""
    rows = [row for _, row in indexed]
    created = jobs_sql.insert_jobs_bulk(
        conn, rows, {name: defaults[name] for name in ("max_attempts", "horizon_s", "changed_by")}
    )
    by_key = {job.idempotency_key: job for job in created}
    created_keys = set(by_key)
    missing = [row["idempotency_key"] for row in rows if row["idempotency_key"] not in by_key]
    if missing:  # keys already taken: their jobs, to compare fingerprints
        by_key.update((job.idempotency_key, job) for job in jobs_sql.jobs_by_keys(conn, missing))
    for index, row in indexed:
        key = row["idempotency_key"]
        job = by_key.get(key)
        if job is None:  # the concurrent insert of this key rolled back meanwhile
            raise ValidationError(f"idempotency_key {key!r} is being used concurrently; try again")
        if key not in created_keys and job.fingerprint != row["fingerprint"]:
            conflict = IdempotencyConflict(key, job.id)
            conflict.args = (f"item {index}: {conflict}",)
            raise conflict
    keys = [row["idempotency_key"] for row in rows]
    return by_key, [by_key[key].id for key in keys if key in created_keys]
