"""The gated wake-up (migration 0006): enqueuers notify only while a worker sleeps, and a
worker going to sleep waits for every enqueuer that did not notify."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from aol.db import store
from tests.factory import insert_action

BULK = (
    "INSERT INTO aol.actions (idempotency_key, action_type) "
    "SELECT 'bulk-' || g, 'T' FROM generate_series(1, 500) g"
)
FINISHED = (
    "INSERT INTO aol.actions (idempotency_key, action_type, status) "
    "VALUES ('done', 'T', 'succeeded')"
)


async def listening(db_url: str) -> tuple[asyncpg.Connection[Any], list[str]]:
    conn: asyncpg.Connection[Any] = await asyncpg.connect(db_url)
    got: list[str] = []
    await conn.add_listener(store.WAKEUP_CHANNEL, lambda *a: got.append(a[3]))
    return conn, got


async def test_a_sleeping_worker_is_notified_once_per_statement(
    db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    conn, got = await listening(db_url)
    try:
        assert await store.try_advisory_lock(conn, key=store.IDLE_LOCK_KEY)  # asleep
        await pool.execute(BULK)
        await pool.execute(FINISHED)
        await asyncio.sleep(0.3)
    finally:
        await conn.close()
    assert got == ["INSERT"]  # one for the bulk insert, none for a non-runnable row


async def test_no_notification_while_no_worker_sleeps(db_url: str, pool: asyncpg.Pool[Any]) -> None:
    conn, got = await listening(db_url)  # listening, but busy: it does not hold the lock
    try:
        for n in range(20):
            await insert_action(pool, idempotency_key=f"k{n}")
        await pool.execute(BULK)
        await asyncio.sleep(0.3)
    finally:
        await conn.close()
    assert got == []


async def test_going_to_sleep_waits_for_an_enqueuer_that_did_not_notify(
    db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    worker, got = await listening(db_url)
    enqueuer: asyncpg.Connection[Any] = await asyncpg.connect(db_url)
    try:
        await store.set_lock_timeout(worker, seconds=0.1)
        tx = enqueuer.transaction()
        await tx.start()
        await insert_action(enqueuer, idempotency_key="in-flight")  # no worker asleep
        with pytest.raises(asyncpg.LockNotAvailableError):
            await store.wait_advisory_lock(worker, key=store.IDLE_LOCK_KEY)
        await tx.commit()
        await store.wait_advisory_lock(worker, key=store.IDLE_LOCK_KEY)
        # The worker's last look, after the lock, sees the row it was not told about.
        seen = await worker.fetchval("SELECT count(*) FROM aol.actions WHERE status = 'pending'")
        await asyncio.sleep(0.2)
    finally:
        await enqueuer.close()
        await worker.close()
    assert seen == 1
    assert got == []


async def test_an_enqueuer_behind_a_worker_waiting_to_sleep_notifies(
    db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    worker, got = await listening(db_url)
    first: asyncpg.Connection[Any] = await asyncpg.connect(db_url)
    try:
        tx = first.transaction()
        await tx.start()
        await insert_action(first, idempotency_key="first")  # holds the lock shared
        going = asyncio.create_task(store.wait_advisory_lock(worker, key=store.IDLE_LOCK_KEY))
        await asyncio.sleep(0.2)  # the worker now waits for `first`
        assert not going.done()
        await insert_action(pool, idempotency_key="second")  # queued behind: must notify
        await tx.commit()
        await asyncio.wait_for(going, timeout=5)
        await asyncio.sleep(0.2)
    finally:
        await first.close()
        await worker.close()
    assert got == ["INSERT"]


async def test_the_trigger_and_the_worker_use_the_same_lock_key(pool: asyncpg.Pool[Any]) -> None:
    source = await pool.fetchval(
        "SELECT prosrc FROM pg_proc WHERE oid = 'aol.notify_runnable()'::regprocedure"
    )
    assert f"pg_try_advisory_xact_lock_shared({store.IDLE_LOCK_KEY})" in source
