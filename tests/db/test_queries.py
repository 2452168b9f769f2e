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


@pytest.mark.parametrize("name", ["count_live", "read_metrics"])
async def test_live_counts_read_the_partial_indexes_not_the_history(
    pool: asyncpg.Pool[Any], name: str
) -> None:
    await pool.execute(
        "INSERT INTO aol.actions (idempotency_key, action_type, status, finished_at) "
        "SELECT 'k' || g, 'T', 'succeeded', now() FROM generate_series(1, 20000) g"
    )
    for status in ("pending", "dead"):
        await pool.execute(
            "INSERT INTO aol.actions (idempotency_key, action_type, status, finished_at) "
            "SELECT $1 || g, 'T', $1, CASE WHEN $1 = 'dead' THEN now() END "
            "FROM generate_series(1, 30) g",
            status,
        )
    await pool.execute("ANALYZE aol.actions")
    plan = "\n".join(r[0] for r in await pool.fetch("EXPLAIN " + store.q(name)))
    assert "Seq Scan on actions" not in plan, plan
    assert await store.count_live(pool) == {"pending": 30, "retry": 0, "running": 0, "dead": 30}
    assert await store.count_finished(pool) == {"succeeded": 20000, "cancelled": 0}


async def test_the_action_list_has_every_row_once_newest_change_first_without_a_scan(
    pool: asyncpg.Pool[Any],
) -> None:
    """Rows in every part of the list (also rows only SQL outside aol writes: a finished
    status without finished_at, a pending row with one), more than the limit in each."""
    await pool.execute(
        "INSERT INTO aol.actions (idempotency_key, action_type, status, attempts, claim_epoch,"
        " claim_expires_at, updated_at, finished_at)"
        " SELECT 'k' || s.n || '-' || g, CASE WHEN g % 2 = 0 THEN 'A' ELSE 'B' END, s.status, 1,"
        "        CASE WHEN s.status = 'running' THEN 1 END, now(),"
        "        now() - make_interval(secs => (g * 7 + s.n) % 5000),"
        "        CASE WHEN s.stamped THEN now() - make_interval(secs => (g * 13 + s.n) % 5000) END"
        "   FROM generate_series(1, 40) g,"
        "        (VALUES (1, 'pending', false), (2, 'retry', false), (3, 'running', false),"
        "                (4, 'succeeded', true), (5, 'cancelled', true), (6, 'dead', true),"
        "                (7, 'dead', false), (8, 'succeeded', false), (9, 'pending', true))"
        "        AS s(n, status, stamped)"
    )
    await pool.execute(
        "INSERT INTO aol.actions (idempotency_key, action_type, status, finished_at)"
        " SELECT 'h' || g, 'A', 'succeeded', now() - interval '1 day'"
        "   FROM generate_series(1, 20000) g"
    )
    await pool.execute("ANALYZE aol.actions")
    expected = (
        "SELECT id FROM aol.actions WHERE ($1::text IS NULL OR status = $1)"
        " AND ($2::text IS NULL OR action_type = $2)"
        " ORDER BY coalesce(finished_at, updated_at) DESC, id DESC LIMIT $3"
    )
    for status in (None, "pending", "retry", "running", "succeeded", "cancelled", "dead"):
        for action_type in (None, "A"):
            for limit in (25, 500):
                listed = await store.list_actions(
                    pool, status=status, action_type=action_type, limit=limit
                )
                want = await pool.fetch(expected, status, action_type, limit)
                assert [r["id"] for r in listed] == [r["id"] for r in want], (status, limit)
    async with pool.acquire() as conn:
        await conn.execute("SET plan_cache_mode = force_custom_plan")
        for status in (None, "succeeded", "cancelled", "dead"):
            rows = await conn.fetch("EXPLAIN " + store.q("list_actions"), status, None, 50)
            plan = "\n".join(r[0] for r in rows)
            assert "Seq Scan on actions" not in plan, (status, plan)
