"""Runs the Alembic migrations; finds `migrations/` in the source tree or inside the wheel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from aol.db.connect import asyncpg_dsn, sqlalchemy_url
from aol.errors import ConfigError, MigrationFailed, SchemaMismatch

_PACKAGE = Path(__file__).resolve().parent.parent


def migrations_dir() -> Path:
    """`migrations/` beside the package in a source tree, else `aol/_migrations` in a wheel."""
    for candidate in (_PACKAGE.parent / "migrations", _PACKAGE / "_migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise ConfigError(
        f"cannot find the migrations folder (looked in {_PACKAGE / '_migrations'} and "
        f"{_PACKAGE.parent / 'migrations'}); reinstall aol"
    )


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", sqlalchemy_url(url).replace("%", "%%"))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise ConfigError("the migrations folder has no revisions")
    return head


def known_revisions() -> set[str]:
    script = ScriptDirectory.from_config(alembic_config())
    return {rev.revision for rev in script.walk_revisions()}


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


def check_revision(current: str | None) -> None:
    """Refuse a database this aol cannot serve, naming both revisions."""
    head = head_revision()
    if current == head:
        return
    if current is None:
        raise SchemaMismatch(
            "the database has no aol schema; run `aol migrate` first "
            f"(this aol expects revision {head})"
        )
    if current not in known_revisions():
        raise SchemaMismatch(
            f"the database schema is at revision {current}, which this aol (head {head}) "
            "does not know: it was migrated by a newer aol; upgrade aol"
        )
    raise SchemaMismatch(
        f"the database schema is at revision {current} but this aol needs {head}; run `aol migrate`"
    )


def is_downgrade(current: str | None, target: str) -> bool:
    """Whether migrating from `current` to `target` goes down (and may drop data)."""
    known = [rev.revision for rev in ScriptDirectory.from_config(alembic_config()).walk_revisions()]
    if target == "head" or current is None:
        return False
    if target == "base":
        return True
    if target not in known:
        raise ConfigError(
            f"--revision {target!r} is not a revision of this aol; use head, base or one of "
            f"{', '.join(reversed(known))}"
        )
    if current not in known:
        check_revision(current)  # names both revisions and the fix
    return known.index(target) > known.index(current)
