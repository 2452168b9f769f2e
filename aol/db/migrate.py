"""Runs the Alembic migrations (the revision chain itself is read by `aol.db.revisions`,
without Alembic, and re-exported here)."""

from __future__ import annotations

from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from aol.db.connect import asyncpg_dsn, sqlalchemy_url
from aol.db.revisions import (
    check_revision,
    head_revision,
    is_downgrade,
    known_revisions,
    migrations_dir,
)
from aol.errors import MigrationFailed

__all__ = [
    "alembic_config",
    "check_revision",
    "downgrade",
    "head_revision",
    "is_downgrade",
    "known_revisions",
    "migrations_dir",
    "upgrade",
]


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", sqlalchemy_url(url).replace("%", "%%"))
    return cfg


async def _run(url: str, fn: Any, revision: str) -> None:
    asyncpg_dsn(url)  # refuse a non-PostgreSQL URL with aol's own message
    engine = create_async_engine(sqlalchemy_url(url), poolclass=NullPool)
    cfg = alembic_config(url)

    def run(connection: Connection) -> None:
        cfg.attributes["connection"] = connection
        fn(cfg, revision)

    try:
        async with engine.begin() as conn:
            await conn.run_sync(run)
    except DBAPIError as exc:
        # Every step runs in the one transaction (migrations/env.py), so nothing changed.
        cause = exc.orig.__cause__ if exc.orig is not None else None
        raise MigrationFailed(
            f"migrating schema aol to {revision} failed and was rolled back, "
            f"so the schema is as it was: {cause or exc.orig}"
        ) from exc
    finally:
        await engine.dispose()


async def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at `url` up to `revision`."""
    await _run(url, command.upgrade, revision)


async def downgrade(url: str, revision: str = "base") -> None:
    """Migrate the database at `url` down to `revision` (base drops schema aol)."""
    await _run(url, command.downgrade, revision)
