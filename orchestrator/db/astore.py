"""The job store on psycopg's async API, for :class:`~orchestrator.app.aio.AsyncOrchestrator`:
the same named queries as :class:`~orchestrator.db.store.Store` (``queries/jobs.sql``), so an
async enqueue inserts exactly the row a sync one would.

Parameters are always bound. ``conn`` arguments may be the application's own
``psycopg.AsyncConnection`` (``charge(conn=...)``), whatever its row factory: every statement
here reads rows through a ``dict_row`` cursor.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, LiteralString, TypeVar

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from orchestrator.db.pool import Row, q
from orchestrator.logs import get_logger
from orchestrator.models import Job

log = get_logger(__name__)
T = TypeVar("T")
AConn = psycopg.AsyncConnection[Row]
# The caller's own connection: any row factory.
AnyAConn = psycopg.AsyncConnection[Any]


async def connect(url: str, *, autocommit: bool = False) -> AConn:
    return await psycopg.AsyncConnection.connect(url, row_factory=dict_row, autocommit=autocommit)


def make_async_pool(url: str, *, max_size: int, min_size: int = 1) -> AsyncConnectionPool[AConn]:
    """An unopened pool (``await pool.open()`` inside the event loop that will use it) of
    autocommit connections: a one-statement call costs one round trip; multi-statement work
    goes through :meth:`AsyncStore.connection`, which opens a transaction."""
    return AsyncConnectionPool(
        url,
        min_size=min_size,
        max_size=max_size,
        open=False,
        kwargs={"row_factory": dict_row, "autocommit": True},
        connection_class=psycopg.AsyncConnection,
        name="orchestrator-async",
    )


async def listen(conn: AnyAConn, channel: LiteralString) -> None:
    """Subscribe an autocommit ``conn`` to NOTIFY on ``channel`` (delivered at commit only)."""
    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))


@asynccontextmanager
async def savepoint(conn: AnyAConn) -> AsyncIterator[None]:
    """Work on the caller's ``conn`` as one unit: a savepoint of its open transaction (rolled
    back alone on error, committed with the caller's transaction). A connection in autocommit
    gets a transaction of its own; one not in autocommit but idle first has its implicit
    transaction opened (queries: open_transaction), left for the caller to commit."""
    if not conn.autocommit and conn.info.transaction_status == TransactionStatus.IDLE:
        await conn.execute(q("open_transaction"))
    async with conn.transaction():
        yield


class AsyncStore:
    """The named queries an async enqueue and read need, over an async pool."""

    def __init__(self, pool: AsyncConnectionPool[AConn]) -> None:
        self.pool = pool

    async def open(self) -> None:
        await self.pool.open(wait=False)

    async def close(self) -> None:
        await self.pool.close()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AConn]:
        """A pooled connection inside one transaction: committed at exit, rolled back on error."""
        async with self.pool.connection() as conn, conn.transaction():
            yield conn

    async def retrying(self, work: Callable[[AConn], Awaitable[T]]) -> T:
        """Run ``work`` on an autocommit connection, again on another if that one turns out to
        be broken (the server closed it while idle). Only for work safe to repeat: single
        statements and insert-or-get (as ``Store.retrying``)."""
        for _ in range(self.pool.max_size):
            async with self.pool.connection() as conn:
                try:
                    return await work(conn)
                except psycopg.OperationalError:
                    if not conn.broken:
                        raise
                    log.warning("astore.connection_broken", action="retrying on another")
        async with self.pool.connection() as conn:
            return await work(conn)

    # -- enqueueing (on a given connection) ------------------------------------------------

    async def insert_job(self, conn: AnyAConn, params: dict[str, Any]) -> Job | None:
        """Insert-or-get, step 1 (queries: insert_job); None when the key is taken."""
        cursor = conn.cursor(row_factory=dict_row)
        await cursor.execute(q("insert_job"), {**params, "params": Jsonb(params["params"])})
        row = await cursor.fetchone()
        return Job.from_row(row) if row else None

    async def job_by_key(self, conn: AnyAConn, key: str) -> Job | None:
        cursor = conn.cursor(row_factory=dict_row)
        await cursor.execute(q("job_by_key"), {"idempotency_key": key})
        row = await cursor.fetchone()
        return Job.from_row(row) if row else None

    async def notify_dispatch(self, conn: AnyAConn, job_id: str) -> None:
        """Announce the job to the clock's dispatcher at commit (queries: notify_dispatch)."""
        await conn.execute(q("notify_dispatch"), {"id": job_id})

    async def lock_charge_for_refund(self, conn: AnyAConn, charge_id: str) -> Job | None:
        cursor = conn.cursor(row_factory=dict_row)
        await cursor.execute(q("lock_charge_for_refund"), {"id": charge_id})
        row = await cursor.fetchone()
        return Job.from_row(row) if row else None

    async def reserve_refund(self, conn: AnyAConn, charge_id: str, amount: int) -> Job | None:
        cursor = conn.cursor(row_factory=dict_row)
        await cursor.execute(q("reserve_refund"), {"id": charge_id, "amount": amount})
        row = await cursor.fetchone()
        return Job.from_row(row) if row else None

    # -- reading ---------------------------------------------------------------------------

    async def job(self, job_id: str) -> Job | None:
        async def read(conn: AConn) -> Row | None:
            cursor = await conn.execute(q("job_by_id"), {"id": job_id})
            return await cursor.fetchone()

        row = await self.retrying(read)
        return Job.from_row(row) if row else None

    async def add_waiter(self, job_id: str, waiter: str) -> str | None:
        """As ``Store.add_waiter``: register for the settle announcement; the job's state."""

        async def add(conn: AConn) -> Row | None:
            cursor = await conn.execute(q("add_waiter"), {"id": job_id, "waiter": waiter})
            return await cursor.fetchone()

        row = await self.retrying(add)
        return str(row["state"]) if row else None

    async def remove_waiter(self, job_id: str, waiter: str) -> None:
        async def remove(conn: AConn) -> None:
            await conn.execute(q("remove_waiter"), {"id": job_id, "waiter": waiter})

        await self.retrying(remove)
