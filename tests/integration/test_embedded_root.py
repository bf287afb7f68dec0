"""Embedded PostgreSQL started as root from a checkout its server user cannot enter: the data
directory and a copy of the binaries move to a private home it owns, and the server runs."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from orchestrator.dev.embedded import EmbeddedPostgres, unreachable_dir

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="the relocation happens only as root"),
]


def _bin(checkout: Path) -> Path:
    return checkout / ".venv" / "site-packages" / "pgserver" / "pginstall" / "bin"


@pytest.fixture
def closed_checkout() -> Iterator[tuple[Path, Path]]:
    """(a `mktemp -d`-like 0700 checkout holding a copy of the pgserver install, a shared
    root every user can enter standing in for /var/tmp)."""
    checkout = Path(tempfile.mkdtemp(prefix="orch-checkout-"))  # 0700, root's
    shared = Path(tempfile.mkdtemp(prefix="orch-shared-"))
    shared.chmod(0o1777)
    # The wheel's layout: site-packages/pgserver/pginstall and site-packages/pgserver.libs.
    install = EmbeddedPostgres(checkout / "unused").bin_dir.parent
    site = checkout / ".venv" / "site-packages"
    shutil.copytree(install, site / "pgserver" / "pginstall", symlinks=True)
    libs = install.parent.parent / "pgserver.libs"
    if libs.is_dir():
        shutil.copytree(libs, site / "pgserver.libs", symlinks=True)
    yield checkout, shared
    shutil.rmtree(checkout, ignore_errors=True)
    shutil.rmtree(shared, ignore_errors=True)


def test_root_in_a_closed_checkout_runs_postgres_from_a_private_home(
    closed_checkout: tuple[Path, Path],
) -> None:
    """The server's user cannot enter the checkout, so its files and binaries go to
    shared/orchestrator-<user>-<hash> (0700, that user's); it starts, answers, and a second
    start reuses the cluster."""
    checkout, shared = closed_checkout
    requested = checkout / ".orchestrator" / "postgres"
    pg = EmbeddedPostgres(requested, durable=False, fallback_root=shared)
    pg.bin_dir = _bin(checkout)
    assert pg.user is not None
    assert unreachable_dir(pg.bin_dir, pg.user) == checkout
    assert pg.relocated and pg.base_dir.parent == shared
    try:
        pg.start()
        with psycopg.connect(pg.url(), connect_timeout=5) as conn:
            conn.execute("CREATE TABLE kept (x int)")
        home = pg.base_dir.stat()
        assert (home.st_uid, stat.S_IMODE(home.st_mode)) == (pg.user.pw_uid, 0o700)
        assert pg.bin_dir == pg.base_dir / "binaries" / "pgserver" / "pginstall" / "bin"
        assert (requested / "LOCATION").read_text().strip() == str(pg.base_dir)
        pg.stop()
        pg = EmbeddedPostgres(requested, durable=False, fallback_root=shared)
        pg.bin_dir = _bin(checkout)
        pg.start()
        with psycopg.connect(pg.url(), connect_timeout=5) as conn:
            assert conn.execute("SELECT count(*) FROM kept").fetchone() == (0,)
    finally:
        pg.stop()
