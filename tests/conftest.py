"""Test fixtures: a real PostgreSQL, a migrated template database, one database per test.

Where the server comes from, in order:
1. `AOL_TEST_DATABASE_URL` (a URL whose user may CREATE DATABASE);
2. a testcontainers PostgreSQL, where a Docker engine answers;
3. an embedded PostgreSQL in a throwaway folder (the `embedded` extra).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from aol.db.connect import asyncpg_dsn, create_pool
from aol.db.migrate import upgrade
from aol.settings import Settings

_counter = itertools.count()


def with_database(url: str, dbname: str) -> str:
    parts = urlsplit(asyncpg_dsn(url))
    return urlunsplit(parts._replace(path="/" + dbname))


def _docker_answers() -> bool:
    """True when a Docker engine answers on its socket (a plain HTTP ping, closed at once)."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        return True  # a remote engine: let testcontainers try it
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(3)
            sock.connect(host[len("unix://") :])
            sock.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
            return b" 200 " in sock.recv(64)
    except OSError:
        return False


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """An admin URL on a real PostgreSQL server."""
    explicit = os.environ.get("AOL_TEST_DATABASE_URL")
    if explicit:
        yield explicit
        return
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver=None) as pg:
            yield pg.get_connection_url()
        return
    from aol.db import embedded

    if not embedded.is_available():
        pytest.exit("no PostgreSQL for tests: set AOL_TEST_DATABASE_URL or install aol[embedded]")
    # As root the server runs as an unprivileged user, which must traverse every parent of
    # the cluster folder: /var/tmp is world-traversable, a home directory may not be.
    base = "/var/tmp" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="aol-test-pg-", dir=base))
    os.chmod(root, 0o755)
    cluster = embedded.ensure_running(root / "cluster")
    try:
        yield cluster.url
    finally:
        embedded.stop(cluster.root, mode="immediate")
        shutil.rmtree(root, ignore_errors=True)


async def _admin(server_url: str) -> asyncpg.Connection[Any]:
    conn: asyncpg.Connection[Any] = await asyncpg.connect(asyncpg_dsn(server_url))
    return conn


@pytest.fixture(scope="session")
async def template_db(server_url: str) -> AsyncIterator[str]:
    """A database migrated once; every test database is a copy of it."""
    name = f"aol_tpl_{os.getpid()}"
    admin = await _admin(server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await admin.execute(f'CREATE DATABASE "{name}"')
        await upgrade(with_database(server_url, name))
        yield name
    finally:
        with contextlib.suppress(Exception):
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@contextlib.asynccontextmanager
async def scratch_database(
    server_url: str, prefix: str, template: str | None = None
) -> AsyncIterator[str]:
    """Create a database (optionally from a template), yield its URL, drop it afterwards."""
    name = f"{prefix}_{os.getpid()}_{next(_counter)}"
    admin = await _admin(server_url)
    try:
        clause = f' TEMPLATE "{template}"' if template else ""
        await admin.execute(f'CREATE DATABASE "{name}"{clause}')
        yield with_database(server_url, name)
    finally:
        with contextlib.suppress(Exception):
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def db_url(server_url: str, template_db: str) -> AsyncIterator[str]:
    """A fresh, migrated database for one test."""
    async with scratch_database(server_url, "aol_t", template_db) as url:
        yield url


@pytest.fixture
async def empty_db_url(server_url: str) -> AsyncIterator[str]:
    """A fresh database with no aol schema (for migration tests)."""
    async with scratch_database(server_url, "aol_e") as url:
        yield url


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[asyncpg.Pool[Any]]:
    p = await create_pool(db_url, min_size=1, max_size=10, application_name="aol-test")
    try:
        yield p
    finally:
        await asyncio.wait_for(p.close(), timeout=10)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def settings(db_url: str, data_dir: Path) -> Settings:
    """Short timings so failure paths finish in seconds."""
    return Settings(
        database_url=db_url,
        data_dir=data_dir,
        owner=f"test:{os.getpid()}",
        batch_size=3,
        lease_ttl=6.0,
        heartbeat_interval=1.0,
        scan_interval=30.0,
        tick_timeout=5.0,
        action_timeout=2.0,
        claim_grace=1.0,
        backoff_base=0.2,
        backoff_max=1.0,
        shutdown_grace=5.0,
    )
