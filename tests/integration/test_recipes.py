"""The README's recipes, run as written against real PostgreSQL, Redis and a worker: Django
and SQLAlchemy enqueue through their own connection (commit: one job; rollback: none), FastAPI
charges and waits through an AsyncOrchestrator."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from starlette.requests import Request  # FastAPI's Request (resolved from this module)

from orchestrator import JobState
from tests.conftest import count_jobs, serve

ORDERS_TABLE = "CREATE TABLE IF NOT EXISTS recipe_orders (id serial PRIMARY KEY, total int)"


@pytest.fixture
def clock(orch: Any) -> Iterator[None]:
    """The real clock loop: it hears the NOTIFY a committed conn= enqueue sends."""
    from orchestrator.maintenance.clock import Clock

    stop = threading.Event()
    thread = threading.Thread(target=Clock(orch).run, args=(stop,), daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(timeout=30)


@pytest.fixture
def django_connection(orch: Any) -> Iterator[Any]:
    django = pytest.importorskip("django")
    from django.conf import settings

    if not settings.configured:
        url = urlsplit(orch.settings.database_url)
        settings.configure(
            DATABASES={
                "default": {
                    "ENGINE": "django.db.backends.postgresql",
                    "NAME": url.path.lstrip("/"),
                    "USER": url.username or "",
                    "HOST": url.hostname or "",
                    "PORT": str(url.port or 5432),
                }
            },
            USE_TZ=True,
        )
        django.setup()
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(ORDERS_TABLE)
    yield connection
    connection.close()


def test_django_enqueues_in_transaction_atomic(
    orch: Any, worker: Any, clock: None, django_connection: Any
) -> None:
    from django.db import connection, transaction

    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("INSERT INTO recipe_orders (total) VALUES (2000) RETURNING id")
            order_id = cursor.fetchone()[0]
        job = orch.charge(
            2000,
            "usd",
            "cus_django",
            "pm_card_visa",
            f"django-order-{order_id}",
            conn=connection.connection,
        )
    assert orch.wait(job.id, timeout=30).state is JobState.SUCCEEDED

    with pytest.raises(RuntimeError), transaction.atomic():
        orch.charge(
            2000,
            "usd",
            "cus_django",
            "pm_card_visa",
            "django-rolled-back",
            conn=connection.connection,
        )
        raise RuntimeError("the order failed: roll back")
    assert count_jobs(orch) == 1


def test_sqlalchemy_enqueues_through_the_session_connection(
    orch: Any, worker: Any, clock: None
) -> None:
    sqlalchemy = pytest.importorskip("sqlalchemy")
    from sqlalchemy.orm import Session

    engine = sqlalchemy.create_engine(
        orch.settings.database_url.replace("postgresql://", "postgresql+psycopg://", 1)
    )
    try:
        with Session(engine) as session, session.begin():
            session.execute(sqlalchemy.text(ORDERS_TABLE))
            order_id = session.execute(
                sqlalchemy.text("INSERT INTO recipe_orders (total) VALUES (900) RETURNING id")
            ).scalar_one()
            dbapi_conn = session.connection().connection.driver_connection
            job = orch.charge(
                900, "usd", "cus_sqla", "pm_card_visa", f"sqla-order-{order_id}", conn=dbapi_conn
            )
        assert orch.wait(job.id, timeout=30).state is JobState.SUCCEEDED

        with pytest.raises(RuntimeError), Session(engine) as session, session.begin():
            dbapi_conn = session.connection().connection.driver_connection
            orch.charge(900, "usd", "cus_sqla", "pm_card_visa", "sqla-rolled-back", conn=dbapi_conn)
            raise RuntimeError("roll back")
        assert count_jobs(orch) == 1
    finally:
        engine.dispose()


def test_fastapi_charges_and_waits(orch: Any, worker: Any) -> None:
    fastapi = pytest.importorskip("fastapi")
    import httpx

    from orchestrator import AsyncOrchestrator

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        async with AsyncOrchestrator(orch.settings) as aorch:
            app.state.orch = aorch
            yield

    app = fastapi.FastAPI(lifespan=lifespan)

    @app.post("/orders/{order_id}/pay")
    async def pay(order_id: str, request: Request) -> dict[str, str]:
        aorch = request.app.state.orch
        job = await aorch.charge(2000, "usd", "cus_fastapi", "pm_card_visa", f"order-{order_id}")
        job = await aorch.wait(job.id, timeout=10)
        return {"job": job.id, "state": str(job.state)}

    with serve(app) as url:
        responses = [httpx.post(f"{url}/orders/{i}/pay", timeout=30) for i in range(3)]
    assert [r.status_code for r in responses] == [200] * 3, responses[0].text
    answers = [r.json() for r in responses]
    assert [a["state"] for a in answers] == ["succeeded"] * 3
    assert asyncio.run(_states(orch, [a["job"] for a in answers])) == ["succeeded"] * 3


async def _states(orch: Any, ids: list[str]) -> list[str]:
    return [str(orch.job(job_id).state) for job_id in ids]
