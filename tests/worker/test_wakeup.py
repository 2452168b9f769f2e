"""The gated wake-up with a real worker: it sleeps holding the wake-up lock, works without
it, and never sleeps through an action that was enqueued without a notification."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable
from typing import Any

import asyncpg

from aol import client
from aol.actions.context import HandlerContext
from aol.db import store
from aol.settings import Settings
from tests.factory import insert_action
from tests.waiting import wait_for
from tests.worker import handlers as h

IDLE_SCAN = 60.0  # only a notification or the worker's own last look can find new work
NAP = "TEST_NAP"


async def nap(ctx: HandlerContext) -> str:
    await asyncio.sleep(float(ctx.payload.get("seconds", 0.5)))
    return "rested"


async def idle_lock_holders(pool: asyncpg.Pool[Any]) -> list[str]:
    """application_name of each session holding the wake-up lock exclusively."""
    key = store.IDLE_LOCK_KEY
    rows = await pool.fetch(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
        "WHERE l.locktype = 'advisory' AND l.database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND l.classid = $1 AND l.objid = $2 AND l.objsubid = 1 "
        "AND l.mode = 'ExclusiveLock' AND l.granted",
        key >> 32,
        key & 0xFFFFFFFF,
    )
    return [str(r["application_name"]) for r in rows]


async def test_an_idle_worker_holds_the_wakeup_lock_on_its_listen_session_and_a_busy_one_not(
    settings: Settings, db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    reg = h.registry(**{NAP: nap})
    async with h.background_worker(settings.with_(scan_interval=IDLE_SCAN), db_url, reg):
        await h.wait_outcome(pool, "idle")
        holders = await wait_for(lambda: idle_lock_holders(pool), what="the wake-up lock held")
        assert len(holders) == 1
        assert holders[0].startswith("aol-listen")

        action_id = await client.enqueue(pool, NAP, {"seconds": 1}, idempotency_key="busy")
        await h.wait_status(pool, action_id, "running")
        assert await idle_lock_holders(pool) == []  # working: enqueuers need not notify
        await h.wait_status(pool, action_id, "succeeded")
        await wait_for(lambda: idle_lock_holders(pool), what="the worker asleep again")


async def test_no_action_waits_for_the_scan_under_bursts_of_concurrent_enqueuers(
    settings: Settings, db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    """Eight enqueuers in bursts with random gaps, so the worker goes to sleep and wakes
    hundreds of times, often while an enqueuer is mid-transaction. With the scan at 60 s,
    one lost wake-up would leave an action waiting for a minute."""
    rng = random.Random(7)

    async def enqueuer(n: int) -> None:
        for i in range(60):
            await client.enqueue(pool, h.OK, {}, idempotency_key=f"e{n}-{i}")
            await asyncio.sleep(rng.choice([0, 0, 0.001, 0.005, 0.02]))

    settings = settings.with_(scan_interval=IDLE_SCAN, batch_size=4)
    async with h.background_worker(settings, db_url, h.registry()):
        await h.wait_outcome(pool, "idle")
        await asyncio.gather(*(enqueuer(n) for n in range(8)))

        async def all_done() -> bool:
            return await h.statuses(pool) == {"succeeded": 480}

        await wait_for(all_done, timeout=30, what="all 480 actions to succeed")
    slowest = await pool.fetchval(
        "SELECT max(extract(epoch FROM claimed_at - created_at)) FROM aol.actions"
    )
    assert slowest < 5.0, f"an action waited {slowest:.1f}s for a worker that was asleep"
    idle_ticks = await pool.fetchval(
        "SELECT count(*) FROM aol.tick_ledger WHERE outcome IN ('ok', 'idle')"
    )
    assert idle_ticks > 20  # the worker did go to sleep and wake many times


async def test_a_long_enqueue_transaction_is_seen_soon_after_it_commits(
    settings: Settings, db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    reg = h.registry(**{NAP: nap})
    async with h.background_worker(settings.with_(scan_interval=IDLE_SCAN), db_url, reg):
        await h.wait_outcome(pool, "idle")
        await wait_for(lambda: idle_lock_holders(pool), what="the worker asleep")
        # Wake it, so that it is at work (not notified) while the long transaction enqueues.
        waker = await client.enqueue(pool, NAP, {"seconds": 0.5}, idempotency_key="wake")
        await h.wait_status(pool, waker, "running")
        conn: asyncpg.Connection[Any] = await asyncpg.connect(db_url)
        try:
            async with conn.transaction():
                action_id = await insert_action(conn, action_type=h.OK, idempotency_key="long")
                await asyncio.sleep(1.5)  # the worker tries to sleep meanwhile, and cannot
            committed = time.monotonic()
        finally:
            await conn.close()
        await h.wait_status(pool, action_id, "succeeded", timeout=5.0)
        elapsed = time.monotonic() - committed
    assert elapsed < 1.0, f"found {elapsed:.2f}s after its commit"


async def count_wakeups(db_url: str, during: Awaitable[None]) -> int:
    """Notifications on the wake-up channel (flags aside) while `during` runs."""
    heard: list[str] = []
    conn: asyncpg.Connection[Any] = await asyncpg.connect(db_url)
    try:
        await conn.add_listener(store.WAKEUP_CHANNEL, lambda *args: heard.append(str(args[3])))
        await during
        await asyncio.sleep(0.2)  # the last ones in transit
    finally:
        await conn.close()
    return sum(1 for payload in heard if payload != "flags")


async def test_enqueuers_of_a_busy_queue_do_not_notify_the_worker_that_polls_it(
    settings: Settings, db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    """Eight enqueuers without pause: each tick finds several actions waiting, so the
    worker claims again after `busy_poll` instead of sleeping on the wake-up lock, and the
    enqueuers, finding it awake, do not notify. (With busy polling off, it sleeps after
    each tick and every commit that finds it asleep notifies: a third to a half of them.)"""
    per_enqueuer = 150

    async def enqueuer(n: int) -> None:
        for i in range(per_enqueuer):
            await client.enqueue(pool, h.OK, {}, idempotency_key=f"b{n}-{i}")

    async def burst() -> None:
        await asyncio.gather(*(enqueuer(n) for n in range(8)))

    settings = settings.with_(scan_interval=IDLE_SCAN, batch_size=1000, busy_poll=0.02)
    total = 8 * per_enqueuer
    async with h.background_worker(settings, db_url, h.registry()):
        await h.wait_outcome(pool, "idle")
        notified = await count_wakeups(db_url, burst())

        async def all_done() -> bool:
            return await h.statuses(pool) == {"succeeded": total}

        await wait_for(all_done, timeout=30, what=f"all {total} actions to succeed")
    assert notified < total // 10, f"{notified} of {total} commits notified a busy worker"
    slowest = await pool.fetchval(
        "SELECT max(extract(epoch FROM claimed_at - created_at)) FROM aol.actions"
    )
    assert slowest < 2.0, f"an action waited {slowest:.1f}s while the worker polled"
