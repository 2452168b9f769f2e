"""Every named SQL block PREPAREs against the migrated schema, and every block is used."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from aol.db import store

STORE = Path(store.__file__).read_text(encoding="utf-8")


@pytest.mark.parametrize("name", sorted(store.queries()))
async def test_block_prepares(pool: asyncpg.Pool[Any], name: str) -> None:
    async with pool.acquire() as conn:
        await conn.prepare(store.q(name))


def test_every_block_has_a_store_function() -> None:
    used = set(re.findall(r'q\("(\w+)"\)', STORE))
    unused = set(store.queries()) - used
    assert not unused, f"named SQL blocks nobody calls: {sorted(unused)}"


def test_no_sql_outside_the_store() -> None:
    sql = re.compile(r"\b(SELECT|INSERT INTO|UPDATE aol|DELETE FROM)\b")
    root = Path(store.__file__).resolve().parents[1]
    offenders = [
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if p.name != "store.py" and sql.search(p.read_text(encoding="utf-8"))
    ]
    assert not offenders, f"SQL outside aol/db/store.py: {offenders}"


async def test_claim_uses_the_partial_index(pool: asyncpg.Pool[Any]) -> None:
    await pool.execute(
        "INSERT INTO aol.actions (idempotency_key, action_type, status) "
        "SELECT 'k' || g, 'T', CASE WHEN g % 100 = 0 THEN 'pending' ELSE 'succeeded' END "
        "FROM generate_series(1, 20000) g"
    )
    await pool.execute("ANALYZE aol.actions")
    await pool.execute("UPDATE aol.lease SET owner = 'o', epoch = 1")
    async with pool.acquire() as conn, conn.transaction():
        plan = await conn.fetchval(
            "EXPLAIN (FORMAT TEXT) " + store.q("claim_actions"), "o", 1, 3, 30.0
        )
        rows = await conn.fetch("EXPLAIN " + store.q("claim_actions"), "o", 1, 3, 30.0)
    text = "\n".join(r[0] for r in rows) or str(plan)
    assert "actions_runnable_idx" in text, text
    assert "Seq Scan on actions" not in text, text
