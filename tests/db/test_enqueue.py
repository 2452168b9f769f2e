"""Enqueue from SQL and Python: idempotency, transactions, and refusals that name the field."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from aol import Client, EnqueueRejected, NewAction
from aol.db import store
from aol.db.connect import sqlalchemy_url
from tests.factory import insert_action

POST = {"platform": "x", "content": "hello", "audience": "public"}


async def count(pool: asyncpg.Pool[Any]) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM aol.actions"))


async def test_sql_enqueue_returns_the_same_id_for_the_same_key(pool: asyncpg.Pool[Any]) -> None:
    first = await pool.fetchval(
        "SELECT aol.enqueue('POST_SOCIAL', $1::text::jsonb, 'k1')", json.dumps(POST)
    )
    again = await pool.fetchval("SELECT aol.enqueue('POST_SOCIAL', '{\"other\": 1}'::jsonb, 'k1')")
    assert first == again
    assert await count(pool) == 1
    stored = await pool.fetchval("SELECT payload FROM aol.actions WHERE id = $1", first)
    assert stored == POST  # the repeat did not overwrite the stored payload


async def test_sql_enqueue_takes_schedule_priority_and_attempts(pool: asyncpg.Pool[Any]) -> None:
    action_id = await pool.fetchval(
        "SELECT aol.enqueue('POST_SOCIAL', '{}'::jsonb, 'k2', now() + interval '1 hour', 7, 5)"
    )
    row = await pool.fetchrow(
        "SELECT status, priority, max_attempts, not_before > now() AS later "
        "FROM aol.actions WHERE id = $1",
        action_id,
    )
    assert row is not None
    assert dict(row) == {"status": "pending", "priority": 7, "max_attempts": 5, "later": True}


async def test_plain_insert_works_with_defaults(pool: asyncpg.Pool[Any]) -> None:
    action_id = await pool.fetchval(
        "INSERT INTO aol.actions (idempotency_key, action_type, payload) "
        "VALUES ('plain', 'POST_SOCIAL', '{\"a\": 1}') RETURNING id"
    )
    row = await pool.fetchrow(
        "SELECT status, attempts, max_attempts FROM aol.actions WHERE id = $1", action_id
    )
    assert row is not None
    assert dict(row) == {"status": "pending", "attempts": 0, "max_attempts": 3}


@pytest.mark.parametrize(
    ("call", "field", "fragment"),
    [
        ("SELECT aol.enqueue('', '{}'::jsonb, 'k')", "action_type", "action_type must not be"),
        ("SELECT aol.enqueue('   ', '{}'::jsonb, 'k')", "action_type", "must not be empty"),
        ("SELECT aol.enqueue('T', '[1,2]'::jsonb, 'k')", "payload", "JSON object, got array"),
        ("SELECT aol.enqueue('T', '\"s\"'::jsonb, 'k')", "payload", "got string"),
        ("SELECT aol.enqueue('T', NULL, 'k')", "payload", "got null"),
        ("SELECT aol.enqueue('T', '{}'::jsonb, '')", "idempotency_key", "must not be empty"),
        (
            "SELECT aol.enqueue('T', jsonb_build_object('x', repeat('a', 70000)), 'k')",
            "payload",
            "the limit is 65536",
        ),
        ("SELECT aol.enqueue('T', '{}'::jsonb, 'k', NULL, 0, 0)", "max_attempts", "between 1"),
    ],
)
async def test_sql_enqueue_refuses_bad_input_naming_the_field(
    pool: asyncpg.Pool[Any], call: str, field: str, fragment: str
) -> None:
    await insert_action(pool, idempotency_key="already-there")
    with pytest.raises(asyncpg.PostgresError) as caught:
        await pool.fetchval(call)
    assert caught.value.sqlstate == "22023"
    assert caught.value.column_name == field
    assert fragment in str(caught.value)
    assert await count(pool) == 1  # nothing stored changed


@pytest.mark.parametrize(
    ("column", "value", "constraint"),
    [
        ("payload", "'[1]'::jsonb", "actions_payload_is_object"),
        ("action_type", "''", "actions_action_type_not_empty"),
        ("payload", "jsonb_build_object('x', repeat('a', 70000))", "actions_payload_too_large"),
        ("status", "'bogus'", "actions_status_valid"),
    ],
)
async def test_plain_insert_refuses_bad_rows_by_constraint_name(
    pool: asyncpg.Pool[Any], column: str, value: str, constraint: str
) -> None:
    cols = {"idempotency_key": "'k'", "action_type": "'T'", "payload": "'{}'::jsonb"}
    cols[column] = value
    with pytest.raises(asyncpg.CheckViolationError) as caught:
        await pool.execute(
            f"INSERT INTO aol.actions ({', '.join(cols)}) VALUES ({', '.join(cols.values())})"
        )
    assert caught.value.constraint_name == constraint


async def test_client_enqueue_is_idempotent(db_url: str) -> None:
    async with Client(db_url) as client:
        a = await client.enqueue("POST_SOCIAL", POST, idempotency_key="c1")
        b = await client.enqueue("POST_SOCIAL", POST, idempotency_key="c1")
        c = await client.enqueue("POST_SOCIAL", POST, idempotency_key="c2")
    assert a == b != c


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ([1, 2], "payload"),
        ({"x": "a" * 70_000}, "payload"),
        ({"x": "nul\u0000byte"}, None),
        ({"x": object()}, "payload"),
    ],
)
async def test_client_refuses_bad_payload_with_a_typed_error(
    db_url: str, pool: asyncpg.Pool[Any], payload: Any, field: str | None
) -> None:
    async with Client(db_url) as client:
        with pytest.raises(EnqueueRejected) as caught:
            await client.enqueue("POST_SOCIAL", payload, idempotency_key="bad")
    if field:
        assert caught.value.field == field
    assert await count(pool) == 0


async def test_client_refuses_empty_type_and_key(db_url: str) -> None:
    async with Client(db_url) as client:
        with pytest.raises(EnqueueRejected, match="action_type must not be empty"):
            await client.enqueue("", POST, idempotency_key="k")
        with pytest.raises(EnqueueRejected, match="idempotency_key must not be empty") as e:
            await client.enqueue("POST_SOCIAL", POST, idempotency_key=" ")
    assert e.value.field == "idempotency_key"


async def test_enqueue_in_a_rolled_back_asyncpg_transaction_leaves_nothing(
    db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    async with Client(db_url) as client, pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        await client.enqueue("POST_SOCIAL", POST, idempotency_key="tx", connection=conn)
        assert await conn.fetchval("SELECT count(*) FROM aol.actions") == 1
        await tx.rollback()
    assert await count(pool) == 0


async def test_enqueue_in_a_committed_asyncpg_transaction_is_stored(
    db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    async with Client(db_url) as client, pool.acquire() as conn, conn.transaction():
        await client.enqueue("POST_SOCIAL", POST, idempotency_key="tx", connection=conn)
    assert await count(pool) == 1


@pytest.mark.parametrize("commit", [True, False])
async def test_enqueue_in_an_sqlalchemy_session_follows_its_transaction(
    db_url: str, pool: asyncpg.Pool[Any], commit: bool
) -> None:
    engine = create_async_engine(sqlalchemy_url(db_url))
    try:
        async with AsyncSession(engine) as session:
            await session.execute(text("SELECT 1"))
            async with Client(db_url) as client:
                await client.enqueue("POST_SOCIAL", POST, idempotency_key="sa", connection=session)
            if commit:
                await session.commit()
            else:
                await session.rollback()
    finally:
        await engine.dispose()
    assert await count(pool) == (1 if commit else 0)


async def test_concurrent_enqueuers_of_one_key_all_get_the_same_id(
    db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    async with Client(db_url, max_size=16) as client:
        ids = await asyncio.gather(
            *(client.enqueue("POST_SOCIAL", POST, idempotency_key="race") for _ in range(32))
        )
    assert len(set(ids)) == 1
    assert await count(pool) == 1


async def test_enqueue_many_returns_ids_in_order_and_is_idempotent_per_key(
    db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    existing = await insert_action(pool, idempotency_key="b")
    batch = [NewAction("POST_SOCIAL", {"n": n}, key) for n, key in enumerate(["a", "b", "c"])]
    async with Client(db_url) as client:
        ids = await client.enqueue_many(batch)
        again = await client.enqueue_many(batch)
    assert ids == again
    assert ids[1] == existing  # a stored key keeps its action
    assert len(set(ids)) == 3
    assert await count(pool) == 3


async def test_enqueue_many_is_one_notify_and_one_statement(
    db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    conn = await asyncpg.connect(db_url)
    got: list[str] = []
    await conn.add_listener("aol_wakeup", lambda *a: got.append(a[3]))
    assert await store.try_advisory_lock(conn, key=store.IDLE_LOCK_KEY)  # a sleeping worker
    try:
        async with Client(db_url) as client:
            ids = await client.enqueue_many([NewAction("T", {}, f"bulk-{n}") for n in range(1000)])
        await asyncio.sleep(0.3)
    finally:
        await conn.close()
    assert len(ids) == 1000
    assert got == ["INSERT"]


async def test_enqueue_many_stores_all_or_nothing(db_url: str, pool: asyncpg.Pool[Any]) -> None:
    batch = [
        NewAction("POST_SOCIAL", {"ok": 1}, "good"),
        NewAction("", {"ok": 2}, "bad-type"),
    ]
    async with Client(db_url) as client:
        with pytest.raises(EnqueueRejected) as caught:
            await client.enqueue_many(batch)
        with pytest.raises(EnqueueRejected, match=r"action 1 \('bad'\): payload must be"):
            await client.enqueue_many(
                [NewAction("T", {}, "fine"), NewAction("T", [1], "bad")]  # type: ignore[arg-type]
            )
    assert caught.value.constraint == "actions_action_type_not_empty"
    assert await count(pool) == 0


async def test_enqueue_many_refuses_arrays_of_different_lengths(pool: asyncpg.Pool[Any]) -> None:
    with pytest.raises(asyncpg.PostgresError, match="one element per action") as caught:
        await pool.fetch(
            "SELECT * FROM aol.enqueue_many(ARRAY['T','T'], ARRAY['{}'::jsonb], ARRAY['a','b'])"
        )
    assert caught.value.sqlstate == "22023"


async def test_payload_checks_run_when_a_payload_is_written_not_on_every_update(
    pool: asyncpg.Pool[Any],
) -> None:
    """They are constraints of the payload's domain (migration 0007): a claim or a finish
    leaves the payload alone and does not pay for reading it again."""
    action_id = await pool.fetchval("SELECT aol.enqueue('T', '{\"a\": 1}'::jsonb, 'k')")
    await pool.execute(
        "ALTER DOMAIN aol.action_payload ADD CONSTRAINT refuse_all CHECK (false) NOT VALID"
    )
    await pool.execute("UPDATE aol.actions SET priority = 5 WHERE id = $1", action_id)
    with pytest.raises(asyncpg.CheckViolationError) as caught:
        await pool.execute("UPDATE aol.actions SET payload = '{}' WHERE id = $1", action_id)
    assert caught.value.constraint_name == "refuse_all"
    assert await pool.fetchval("SELECT priority FROM aol.actions WHERE id = $1", action_id) == 5
