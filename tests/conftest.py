"""Shared fixtures: ring images on emulated pmem (/dev/shm when there is one) or simulated."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pmem import layout as L

SMALL_RING = L.DATA_OFFSET + L.MIN_DATA  # 64 KiB of data: wraps after a few hundred records


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    """A private directory in /dev/shm (fast, like the default ring path), else in /tmp."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    d = tempfile.mkdtemp(prefix="provisor-test-", dir=base)
    try:
        yield Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_cluster():
    """A private PostgreSQL cluster (Debian's server) for the whole run, on a unix socket."""
    from store import pgcluster

    c = pgcluster.temporary()
    try:
        c.start()
        yield c
    finally:
        pgcluster.remove(c)


_pg_dbs = iter(range(1, 1 << 30))


@pytest.fixture
def pg_url(pg_cluster) -> str:
    """A new empty database in the private cluster: its URL, as the superuser."""
    return pg_cluster.createdb(f"t{os.getpid()}_{next(_pg_dbs)}")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_db(request, tmp_path) -> str:
    """A fresh store location on each backend (a SQLite file, a new PostgreSQL database): the
    examiner's tests run unchanged on both."""
    if request.param == "sqlite":
        return str(tmp_path / "p.db")
    return request.getfixturevalue("pg_url")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def module_store_db(request, tmp_path_factory) -> str:
    """:func:`store_db` for a module's shared (read-only) store."""
    if request.param == "sqlite":
        return str(tmp_path_factory.mktemp("store") / "p.db")
    return request.getfixturevalue("pg_cluster").createdb(f"m{os.getpid()}_{next(_pg_dbs)}")
