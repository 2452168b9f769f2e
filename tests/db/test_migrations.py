"""Migrations: up, down, up gives the same catalogue; the worker refuses unknown revisions."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from aol.db import store
from aol.db.migrate import check_revision, downgrade, head_revision, is_downgrade, upgrade
from aol.errors import ConfigError, SchemaMismatch

CATALOGUE = """
SELECT 'column' AS kind, table_name || '.' || column_name || ' ' || data_type || ' '
       || is_nullable || ' ' || coalesce(column_default, '') AS item
  FROM information_schema.columns WHERE table_schema = 'aol'
UNION ALL
SELECT 'constraint', conrelid::regclass::text || ' ' || conname || ' '
       || pg_get_constraintdef(oid)
  FROM pg_constraint WHERE connamespace = 'aol'::regnamespace
UNION ALL
SELECT 'index', indexdef FROM pg_indexes WHERE schemaname = 'aol'
UNION ALL
SELECT 'function', p.oid::regprocedure::text || ' ' || md5(p.prosrc)
  FROM pg_proc p WHERE p.pronamespace = 'aol'::regnamespace
UNION ALL
SELECT 'trigger', tgrelid::regclass::text || ' ' || tgname || ' ' || pg_get_triggerdef(oid)
  FROM pg_trigger WHERE NOT tgisinternal AND tgrelid::regclass::text LIKE 'aol.%'
ORDER BY 1, 2
"""


async def snapshot(url: str) -> list[tuple[str, str]]:
    conn: asyncpg.Connection[Any] = await asyncpg.connect(url)
    try:
        if await conn.fetchval("SELECT to_regnamespace('aol')") is None:
            return []
        return [(r["kind"], r["item"]) for r in await conn.fetch(CATALOGUE)]
    finally:
        await conn.close()


async def test_up_down_up_gives_the_same_schema(empty_db_url: str) -> None:
    assert await snapshot(empty_db_url) == []
    await upgrade(empty_db_url)
    first = await snapshot(empty_db_url)
    kinds = {kind for kind, _ in first}
    assert kinds == {"column", "constraint", "index", "function", "trigger"}
    assert any("actions_runnable_idx" in item for _, item in first)
    await downgrade(empty_db_url, "base")
    assert await snapshot(empty_db_url) == []
    await upgrade(empty_db_url)
    assert await snapshot(empty_db_url) == first


async def test_upgrade_twice_is_a_no_op(empty_db_url: str) -> None:
    await upgrade(empty_db_url)
    await upgrade(empty_db_url)
    conn = await asyncpg.connect(empty_db_url)
    try:
        assert await store.read_schema_revision(conn) == head_revision()
    finally:
        await conn.close()


async def test_a_database_without_the_schema_is_refused_with_the_fix(empty_db_url: str) -> None:
    conn = await asyncpg.connect(empty_db_url)
    try:
        current = await store.read_schema_revision(conn)
    finally:
        await conn.close()
    assert current is None
    with pytest.raises(SchemaMismatch, match="run `aol migrate`"):
        check_revision(current)


def test_an_unknown_newer_revision_is_refused_naming_both() -> None:
    with pytest.raises(SchemaMismatch) as caught:
        check_revision("9999_future")
    assert "9999_future" in str(caught.value)
    assert head_revision() in str(caught.value)


def test_downgrade_direction_is_known_for_every_revision() -> None:
    assert is_downgrade("0005", "0004")
    assert is_downgrade("0002", "base")
    assert not is_downgrade("0004", "0005")
    assert not is_downgrade("0005", "head")
    assert not is_downgrade(None, "0003")
    with pytest.raises(ConfigError, match="'nope' is not a revision"):
        is_downgrade("0005", "nope")


async def test_a_downgrade_that_would_drop_stored_actions_needs_force(
    db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    await pool.execute("SELECT aol.enqueue('T', '{}'::jsonb, 'keep-me')")
    command = [sys.executable, "-m", "aol", "--database-url", db_url, "migrate"]
    refused = await asyncio.to_thread(
        subprocess.run,
        [*command, "--revision", "base"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 1
    expected = f"refusing to downgrade schema aol from {head_revision()} to base: 1 action(s)"
    assert expected in refused.stderr
    assert await pool.fetchval("SELECT count(*) FROM aol.actions") == 1  # nothing dropped

    forced = await asyncio.to_thread(
        subprocess.run,
        [*command, "--revision", "base", "--force"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert forced.returncode == 0, forced.stderr
    assert await pool.fetchval("SELECT to_regnamespace('aol')") is None


async def test_0007_moves_the_payload_checks_to_a_domain_without_rewriting_the_table(
    empty_db_url: str,
) -> None:
    await upgrade(empty_db_url, "0006")
    conn: asyncpg.Connection[Any] = await asyncpg.connect(empty_db_url)
    try:
        await conn.execute(
            "INSERT INTO aol.actions (idempotency_key, action_type, payload) "
            "SELECT 'k' || g, 'T', jsonb_build_object('n', g) FROM generate_series(1, 100) g"
        )
        filenode = await conn.fetchval("SELECT pg_relation_filenode('aol.actions')")
        stored = await conn.fetch("SELECT id, payload::text FROM aol.actions ORDER BY id")

        async def refused_by() -> str | None:
            with pytest.raises(asyncpg.CheckViolationError) as caught:
                await conn.execute(
                    "INSERT INTO aol.actions (idempotency_key, action_type, payload) "
                    "VALUES ('bad', 'T', '[1]')"
                )
            return caught.value.constraint_name

        await upgrade(empty_db_url)
        assert await conn.fetchval("SELECT pg_relation_filenode('aol.actions')") == filenode
        assert await conn.fetch("SELECT id, payload::text FROM aol.actions ORDER BY id") == stored
        assert await refused_by() == "actions_payload_is_object"
        domain = await conn.fetchval(
            "SELECT count(*) FROM pg_constraint WHERE contypid = 'aol.action_payload'::regtype "
            "AND convalidated"
        )
        assert domain == 2

        await downgrade(empty_db_url, "0006")
        assert await conn.fetch("SELECT id, payload::text FROM aol.actions ORDER BY id") == stored
        assert await refused_by() == "actions_payload_is_object"
        assert await conn.fetchval("SELECT to_regtype('aol.action_payload')") is None
    finally:
        await conn.close()


async def test_a_failing_migration_is_rolled_back_and_named(empty_db_url: str) -> None:
    await upgrade(empty_db_url, "0006")
    conn: asyncpg.Connection[Any] = await asyncpg.connect(empty_db_url)
    try:
        await conn.execute("SELECT aol.enqueue('T', '{}'::jsonb, 'kept')")
        await conn.execute("CREATE DOMAIN aol.action_payload AS text")  # in 0007's way
        before = await snapshot(empty_db_url)
        command = [sys.executable, "-m", "aol", "--database-url", empty_db_url, "migrate"]
        failed = await asyncio.to_thread(
            subprocess.run, command, capture_output=True, text=True, timeout=60
        )
        assert failed.returncode == 1
        assert "Traceback" not in failed.stderr
        assert "migrating schema aol to head failed and was rolled back" in failed.stderr
        assert 'type "action_payload" already exists' in failed.stderr
        assert await store.read_schema_revision(conn) == "0006"
        assert await snapshot(empty_db_url) == before
        assert await conn.fetchval("SELECT count(*) FROM aol.actions") == 1
    finally:
        await conn.close()


async def test_0008_keeps_indexes_built_beforehand_and_rebuilds_invalid_ones(
    empty_db_url: str,
) -> None:
    definitions = {
        "actions_finished_idx": "(finished_at) WHERE finished_at IS NOT NULL",
        "actions_cancelled_idx": "(finished_at) WHERE status = 'cancelled'",
        "actions_unstamped_idx": "(updated_at) "
        "WHERE finished_at IS NULL AND status IN ('succeeded', 'cancelled', 'dead')",
    }
    oids = "SELECT to_regclass('aol.' || n)::oid FROM unnest($1::text[]) n"
    valid = "SELECT bool_and(indisvalid) FROM pg_index WHERE indexrelid = ANY ($1::oid[])"
    names = list(definitions)
    await upgrade(empty_db_url, "0007")
    conn: asyncpg.Connection[Any] = await asyncpg.connect(empty_db_url)
    try:
        for name, definition in definitions.items():
            await conn.execute(f"CREATE INDEX CONCURRENTLY {name} ON aol.actions {definition}")
        built = [r[0] for r in await conn.fetch(oids, names)]
        await upgrade(empty_db_url)
        assert [r[0] for r in await conn.fetch(oids, names)] == built  # kept

        await downgrade(empty_db_url, "0007")
        assert [r[0] for r in await conn.fetch(oids, names)] == [None] * 3
        for name, definition in definitions.items():
            await conn.execute(f"CREATE INDEX {name} ON aol.actions {definition}")
        # What a failed CREATE INDEX CONCURRENTLY leaves behind.
        invalid = [r[0] for r in await conn.fetch(oids, names)]
        await conn.execute(
            "UPDATE pg_index SET indisvalid = false WHERE indexrelid = ANY ($1::oid[])", invalid
        )
        await upgrade(empty_db_url)
        rebuilt = [r[0] for r in await conn.fetch(oids, names)]
        assert await conn.fetchval(valid, rebuilt) is True
        assert not set(rebuilt) & set(invalid)  # each one built anew
    finally:
        await conn.close()


def test_the_chain_read_without_alembic_is_alembics() -> None:
    from alembic.script import ScriptDirectory

    from aol.db.migrate import alembic_config
    from aol.db.revisions import chain

    walked = [r.revision for r in ScriptDirectory.from_config(alembic_config()).walk_revisions()]
    assert list(chain()) == walked[::-1]
    assert chain()[-1] == head_revision()


def write_revisions(folder: Path, pairs: list[tuple[str, str | None]]) -> Path:
    versions = folder / "versions"
    versions.mkdir()
    for i, (revision, down) in enumerate(pairs):
        (versions / f"{i:04d}_r.py").write_text(
            f'"""r"""\nrevision = {revision!r}\ndown_revision = {down!r}\n', encoding="utf-8"
        )
    return versions


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        ([("a", None), ("b", "a"), ("c", "a")], "revisions b and c both follow a"),
        ([("a", None), ("a", None)], "revision a is defined twice"),
        ([("a", None), ("c", "b")], "revisions not reachable from base: c"),
        ([], "no revisions"),
    ],
)
def test_a_broken_chain_is_refused_naming_the_revisions(
    tmp_path: Path, pairs: list[tuple[str, str | None]], message: str
) -> None:
    from aol.db.revisions import read_chain

    with pytest.raises(ConfigError, match=message):
        read_chain(write_revisions(tmp_path, pairs))


def test_a_revision_that_is_not_a_constant_is_refused_naming_the_file(tmp_path: Path) -> None:
    from aol.db.revisions import read_chain

    versions = tmp_path / "versions"
    versions.mkdir()
    (versions / "0001_x.py").write_text("revision = make()\ndown_revision = None\n")
    with pytest.raises(ConfigError, match=r"0001_x\.py: expected `revision"):
        read_chain(versions)
