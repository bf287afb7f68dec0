"""Where embedded PostgreSQL keeps its files when run as root: the requested directory when the
unprivileged server user can reach it, else a stable private one under a shared root."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.dev.embedded import (
    DevStackError,
    reachable_binaries,
    server_home,
    unreachable_dir,
)

# A user that owns nothing here, like `nobody` for a checkout root owns.
GHOST = pwd.struct_passwd(("ghost", "x", 65533, 65533, "", "/nonexistent", "/bin/false"))


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A fresh directory every user can enter (mode 0755, its parents too, or skip)."""
    path = Path(tempfile.mkdtemp(prefix="orch-embedded-"))
    path.chmod(0o755)
    if unreachable_dir(path, GHOST) is not None:
        shutil.rmtree(path)
        pytest.skip(f"{tempfile.gettempdir()} is not reachable by other users")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_unreachable_dir_names_the_deepest_closed_directory(open_dir: Path) -> None:
    """A 0700 directory owned by someone else blocks every path below it; one with o+x, or
    one the user owns, does not; parts not created yet are skipped."""
    checkout = open_dir / "checkout"
    inner = checkout / "inner"
    inner.mkdir(parents=True)
    checkout.chmod(0o700)
    assert unreachable_dir(inner / ".orchestrator" / "postgres", GHOST) == checkout
    owner = pwd.struct_passwd(("me", "x", os.stat(checkout).st_uid, 0, "", "/", "/bin/sh"))
    assert unreachable_dir(inner, owner) is None
    checkout.chmod(0o711)
    assert unreachable_dir(inner / "not-yet" / "postgres", GHOST) is None


def test_reachable_request_is_kept(open_dir: Path) -> None:
    """Not root (no server user) or a reachable request: the files go where asked."""
    requested = open_dir / "checkout" / ".orchestrator" / "postgres"
    assert server_home(requested, None, open_dir / "shared") == requested
    assert server_home(requested, GHOST, open_dir / "shared") == requested


def test_unreachable_request_moves_to_a_stable_private_home(open_dir: Path) -> None:
    """A checkout the server user cannot enter (a `mktemp -d`, /root) sends the files under
    the shared root, at a path that is the same on every run and differs per checkout."""
    shared = open_dir / "shared"
    shared.mkdir(mode=0o755)
    checkout = open_dir / "checkout"
    checkout.mkdir(mode=0o700)
    requested = checkout / ".orchestrator" / "postgres"
    home = server_home(requested, GHOST, shared)
    assert home.parent == shared
    assert home.name.startswith("orchestrator-ghost-")
    assert server_home(requested, GHOST, shared) == home
    assert server_home(checkout / "other" / "postgres", GHOST, shared) != home
    # And it is refused, with a hint, when the shared root is out of reach too.
    shared.chmod(0o700)
    with pytest.raises(DevStackError, match="cannot enter"):
        server_home(requested, GHOST, shared)


def test_binaries_are_copied_only_when_out_of_reach(open_dir: Path) -> None:
    """Reachable binaries are used in place; unreachable ones are copied once into the
    server's home, in their site-packages layout (the whole install, so lib/ and share/ stay
    beside bin/, and the wheel's bundled ``<package>.libs`` at ``$ORIGIN/../../..``), then
    reused."""
    site = open_dir / "venv" / "site-packages"
    install = site / "pgserver" / "pginstall"
    (install / "bin").mkdir(parents=True)
    (install / "share").mkdir()
    (site / "pgserver.libs").mkdir()
    (install / "bin" / "postgres").write_text("#!/bin/sh\n")
    (install / "share" / "postgres.bki").write_text("data\n")
    (site / "pgserver.libs" / "libpq.so").write_text("lib\n")
    home = open_dir / "home"
    home.mkdir()
    assert reachable_binaries(install / "bin", home, GHOST) == install / "bin"
    (open_dir / "venv").chmod(0o700)
    copied = reachable_binaries(install / "bin", home, GHOST)
    assert copied == home / "binaries" / "pgserver" / "pginstall" / "bin"
    assert unreachable_dir(copied, GHOST) is None
    assert (copied.parent / "share" / "postgres.bki").read_text() == "data\n"
    assert (copied / "../../../pgserver.libs/libpq.so").read_text() == "lib\n"
    marker = copied / "marker"
    marker.write_text("kept")
    assert reachable_binaries(install / "bin", home, GHOST) == copied
    assert marker.exists()  # reused, not copied again
