"""Retention: aol prune deletes old finished actions with their log rows, in batches, and
leaves everything else alone."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Any

import asyncpg
import pytest

from aol import Client
from aol.db import store
from aol.errors import ConfigError
from aol.retention import parse_age, prune
from tests.factory import insert_action

OLD = "now() - interval '40 days'"
NEW = "now() - interval '1 day'"


async def seed(pool: asyncpg.Pool[Any]) -> dict[str, int]:
    ids = {
        "old_ok": await insert_action(pool, status="succeeded", sql_finished_at=OLD),
        "old_cancelled": await insert_action(pool, status="cancelled", sql_finished_at=OLD),
        "old_dead": await insert_action(pool, status="dead", sql_finished_at=OLD),
        "new_ok": await insert_action(pool, status="succeeded", sql_finished_at=NEW),
        "pending": await insert_action(pool, sql_created_at=OLD),
        "running": await insert_action(
            pool, status="running", attempts=1, claim_epoch=1, sql_claim_expires_at="now()"
        ),
    }
    for action_id in ids.values():
        await pool.execute(
            "INSERT INTO aol.execution_logs (action_id, event) VALUES ($1, 'seeded')", action_id
        )
    await pool.execute(
        "INSERT INTO aol.tick_ledger "
        "(owner, epoch, tick, outcome, started_at, finished_at, duration_ms) "
        "VALUES ('w', 1, 1, 'idle', now() - interval '40 days', now() - interval '40 days', 1),"
        " ('w', 1, 2, 'idle', now(), now(), 1)"
    )
    return ids


async def remaining(pool: asyncpg.Pool[Any]) -> set[int]:
    return {int(r["id"]) for r in await pool.fetch("SELECT id FROM aol.actions")}


async def test_prune_deletes_old_finished_actions_and_their_logs_and_keeps_the_rest(
    pool: asyncpg.Pool[Any],
) -> None:
    ids = await seed(pool)
    async with pool.acquire() as conn:
        report = await prune(conn, older_than_s=30 * 86400, batch=1)
    assert (report.actions, report.ticks) == (2, 1)
    assert await remaining(pool) == {ids[k] for k in ("old_dead", "new_ok", "pending", "running")}
    logged = {
        int(r["action_id"])
        for r in await pool.fetch("SELECT action_id FROM aol.execution_logs")
        if r["action_id"] is not None
    }
    assert logged == await remaining(pool)
    assert [r["tick"] for r in await pool.fetch("SELECT tick FROM aol.tick_ledger")] == [2]


async def test_dead_actions_go_only_when_asked_and_a_dry_run_deletes_nothing(
    pool: asyncpg.Pool[Any],
) -> None:
    ids = await seed(pool)
    async with pool.acquire() as conn:
        dry = await prune(conn, older_than_s=30 * 86400, include_dead=True, dry_run=True)
        assert (dry.actions, dry.dry_run) == (3, True)
        assert len(await remaining(pool)) == 6
        await prune(conn, older_than_s=30 * 86400, include_dead=True)
    assert ids["old_dead"] not in await remaining(pool)
    assert len(await remaining(pool)) == 3


async def test_a_prune_batch_reads_the_finished_index_not_the_whole_table(
    pool: asyncpg.Pool[Any],
) -> None:
    """Without the index each batch reads every row and sorts them: quadratic in history."""
    await pool.execute(
        "INSERT INTO aol.actions (idempotency_key, action_type, payload, status, attempts,"
        " created_at, updated_at, finished_at)"
        " SELECT 'h' || g, 'POST_SOCIAL', '{}', 'succeeded', 1, t, t, t"
        "   FROM generate_series(1, 20000) g,"
        "        LATERAL (SELECT now() - make_interval(secs => g * 600.0) AS t) x"
    )
    await pool.execute("ANALYZE aol.actions")
    explain = f"EXPLAIN {store.q('prune_actions')}"  # planned, not run: nothing is deleted
    rows = await pool.fetch(explain, ["succeeded", "cancelled"], 30 * 86400.0, 1000)
    plan = "\n".join(r[0] for r in rows)
    assert "Index Scan using actions_finished_idx" in plan, plan
    assert "Sort" not in plan, plan  # the oldest come in index order, not sorted after a scan


async def test_a_pruned_idempotency_key_is_free_again(db_url: str, pool: asyncpg.Pool[Any]) -> None:
    first = await insert_action(pool, idempotency_key="k1", status="succeeded", sql_finished_at=OLD)
    async with pool.acquire() as conn:
        await prune(conn, older_than_s=86400)
    async with Client(db_url) as client:
        again = await client.enqueue("POST_SOCIAL", {"content": "x"}, idempotency_key="k1")
    assert again != first


@pytest.mark.parametrize(
    ("text", "seconds"), [("30d", 2592000), ("12h", 43200), ("90m", 5400), ("45", 45.0)]
)
def test_ages_parse(text: str, seconds: float) -> None:
    assert parse_age(text) == seconds


@pytest.mark.parametrize("text", ["", "10 weeks", "-5d", "0", "d"])
def test_bad_ages_are_refused_naming_the_value(text: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(repr(text))):
        parse_age(text)


async def test_the_cli_prunes_and_refuses_a_bad_age(db_url: str, pool: asyncpg.Pool[Any]) -> None:
    await seed(pool)
    env = {**os.environ, "AOL_DATABASE_URL": db_url}
    aol = [sys.executable, "-m", "aol"]
    ok = subprocess.run(
        [*aol, "prune", "--older-than", "30d"], env=env, capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    assert "deleted 2 succeeded/cancelled action(s) and 1 tick ledger row(s)" in ok.stdout
    bad = subprocess.run(
        [*aol, "prune", "--older-than", "soon"], env=env, capture_output=True, text=True
    )
    assert bad.returncode == 2
    assert "'soon' is not understood" in bad.stderr
    assert len(await remaining(pool)) == 4
