"""Databases for the benchmark: one fresh `aol_bench_*` database per system per scenario."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import psutil  # type: ignore[import-untyped]

PREFIX = "aol_bench_"
_SAFE = re.compile(r"^[a-z0-9_]+$")


def with_database(url: str, name: str) -> str:
    """`url` pointing at database `name` (query string and credentials kept)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


def plain_url(url: str) -> str:
    """asyncpg and psycopg want postgresql://, not SQLAlchemy's postgresql+asyncpg://."""
    for scheme in ("postgresql+asyncpg://", "postgres+asyncpg://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql://" + url[len(scheme) :]
    return url


def database_name(system: str, scenario: str) -> str:
    name = f"{PREFIX}{system}_{scenario}_{os.getpid()}".replace("-", "_").lower()
    if not _SAFE.match(name):
        raise ValueError(f"unexpected database name {name!r}")
    return name


CONNECT_ATTEMPTS = 20


async def connect(url: str) -> asyncpg.Connection[Any]:
    """A connection for the benchmark itself; on a shared server that is momentarily out
    of connection slots it waits (up to about 10 s) rather than failing the run."""
    for attempt in range(CONNECT_ATTEMPTS):
        try:
            conn: asyncpg.Connection[Any] = await asyncpg.connect(
                plain_url(url), server_settings={"application_name": "aol-bench"}
            )
            return conn
        except asyncpg.TooManyConnectionsError:
            if attempt == CONNECT_ATTEMPTS - 1:
                raise
            await asyncio.sleep(0.5)
    raise AssertionError("unreachable")


@asynccontextmanager
async def fresh_database(admin_url: str, system: str, scenario: str) -> AsyncIterator[str]:
    """Create an empty database, yield its URL, drop it afterwards."""
    name = database_name(system, scenario)
    admin = await connect(admin_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield with_database(plain_url(admin_url), name)
    finally:
        admin = await connect(admin_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def drop_leftovers(admin_url: str) -> list[str]:
    """Drop every `aol_bench_*` database (left by an interrupted run); returns their names."""
    admin = await connect(admin_url)
    try:
        names = [
            str(r["datname"])
            for r in await admin.fetch(
                "SELECT datname FROM pg_database WHERE datname LIKE 'aol\\_bench\\_%'"
            )
        ]
        for name in names:
            if _SAFE.match(name):
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        return names
    finally:
        await admin.close()


async def server_facts(conn: asyncpg.Connection[Any]) -> dict[str, str]:
    facts: dict[str, str] = {"version": str(await conn.fetchval("SELECT version()"))}
    for name in (
        "server_version",
        "fsync",
        "synchronous_commit",
        "shared_buffers",
        "max_connections",
        "autovacuum",
        "commit_delay",
        "shared_preload_libraries",
    ):
        facts[name] = str(await conn.fetchval(f"SHOW {name}"))
    return facts


async def backend_cpu_seconds(conn: asyncpg.Connection[Any]) -> float:
    """CPU seconds (user + system) used so far by the other backends of this database.

    Read from /proc through psutil (the server runs on this machine). Backends that have
    already exited are not counted; the workers' connections live until they stop.
    """
    pids = [
        int(r["pid"])
        for r in await conn.fetch(
            "SELECT pid FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    ]
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        total += t.user + t.system
    return total
