"""Operator controls seen by a running worker: pause, resume, kill and dead-letter retry.

Every flag change sends NOTIFY, so each test runs the worker with a 60 s scan interval:
anything that happens within a second happened because the worker was woken.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg

from aol.db import store
from aol.settings import Settings
from aol.worker.runner import EXIT_OK, run_worker
from tests.factory import insert_action
from tests.waiting import wait_for
from tests.worker import handlers as h

IDLE_SCAN = 60.0


def idle(settings: Settings) -> Settings:
    return settings.with_(scan_interval=IDLE_SCAN)


async def untouched(pool: asyncpg.Pool[Any], action_id: int) -> bool:
    row = await h.action(pool, action_id)
    return (row["status"], row["attempts"], row["claim_epoch"]) == ("pending", 0, None)


async def test_a_paused_worker_claims_nothing_though_actions_are_due(
    settings: Settings, db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    await store.set_flags(pool, paused=True, reason="maintenance")
    ids = [await insert_action(pool, action_type=h.OK) for _ in range(2)]

    assert await run_worker(settings, db_url, ticks=2, registry=h.registry()) == EXIT_OK

    rows = await h.ledger(pool)
    assert [(r["tick"], r["outcome"], r["claimed"]) for r in rows] == [
        (1, "paused", 0),
        (2, "paused", 0),
    ]
    for action_id in ids:
        assert await untouched(pool, action_id)


async def test_resume_wakes_a_paused_worker_within_a_second(
    settings: Settings, db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    await store.set_flags(pool, paused=True, reason="hold")
    action_id = await insert_action(pool, action_type=h.OK)

    async with h.background_worker(idle(settings), db_url, h.registry()):
        await h.wait_outcome(pool, "paused")  # now asleep for the 60 s scan interval
        assert await untouched(pool, action_id)

        started = time.monotonic()
        flags = await store.set_flags(pool, paused=False, reason="go")
        row = await h.wait_status(pool, action_id, "succeeded", timeout=5.0)
        elapsed = time.monotonic() - started

    assert not flags.paused
    assert elapsed < 1.0, f"resumed after {elapsed:.3f}s: the flag change did not wake it"
    assert row["attempts"] == 1
    assert (await h.outcomes(pool))[:2] == ["paused", "ok"]


async def test_kill_stops_a_running_worker_promptly_with_exit_code_zero(
    settings: Settings, db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    async with h.background_worker(idle(settings), db_url, h.registry()) as worker:
        await h.wait_outcome(pool, "idle")

        started = time.monotonic()
        await store.set_flags(pool, killed=True, reason="stop now")
        code = await worker.exited(timeout=5.0)
        elapsed = time.monotonic() - started

    assert code == EXIT_OK
    assert elapsed < 1.0, f"exited {elapsed:.3f}s after the kill"
    assert await h.outcomes(pool) == ["idle", "killed"]
    assert await h.lease_released(pool)  # released


async def test_a_kill_read_by_the_claim_is_recorded_once_under_that_tick(
    settings: Settings, db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    """The kill's notification arrives while the tick whose claim read the kill is writing
    its ledger row (held up here by a lock on the ledger): that tick's row is the only one."""
    async with h.background_worker(idle(settings), db_url, h.registry()) as worker:
        await h.wait_outcome(pool, "idle")
        async with pool.acquire() as blocker, pool.acquire() as quiet:
            tx = blocker.transaction()
            await tx.start()
            await blocker.execute("LOCK TABLE aol.tick_ledger IN SHARE MODE")
            # The kill without its notification (triggers do not fire for a replica role).
            await quiet.execute("SET session_replication_role = replica")
            await quiet.execute(
                "UPDATE aol.control_flags SET killed = true, reason = 'stop', changed_by = 't'"
            )
            await quiet.execute("RESET session_replication_role")
            await pool.execute("SELECT pg_notify($1, 'INSERT')", store.WAKEUP_CHANNEL)
            await wait_for(
                lambda: pool.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE '%tick_ledger%'"
                ),
                what="the tick's ledger row waiting on the lock",
            )
            notified = await pool.fetchval("SELECT clock_timestamp()")
            await pool.execute("SELECT pg_notify($1, 'flags')", store.WAKEUP_CHANNEL)
            # The worker reads the flags while its row waits (then, without the fix, it
            # cancels the tick writing that row).
            await wait_for(
                lambda: pool.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE query = $1"
                    " AND query_start > $2 AND state = 'idle'",
                    store.q("read_flags"),
                    notified,
                ),
                what="the worker reading the flags after their notification",
            )
            await asyncio.sleep(0.1)  # what it does next, in the worker's loop
            await tx.commit()
        code = await worker.exited(timeout=5.0)

    assert code == EXIT_OK
    rows = await h.ledger(pool)
    assert [(r["tick"], r["outcome"]) for r in rows] == [(1, "idle"), (2, "killed")]


async def test_a_worker_started_while_killed_exits_at_once_without_claiming(
    settings: Settings, db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    await store.set_flags(pool, killed=True, reason="incident")
    action_id = await insert_action(pool, action_type=h.OK)

    started = time.monotonic()
    code = await run_worker(idle(settings), db_url, registry=h.registry())  # no tick limit

    assert code == EXIT_OK
    assert time.monotonic() - started < 2.0
    assert await h.outcomes(pool) == ["killed"]
    assert await untouched(pool, action_id)
    assert await h.events(pool, action_id) == []


async def test_unkill_lets_the_next_worker_run_what_waited(
    settings: Settings, db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    await store.set_flags(pool, killed=True, reason="incident")
    action_id = await insert_action(pool, action_type=h.OK)
    assert await run_worker(settings, db_url, ticks=1, registry=h.registry()) == EXIT_OK
    assert await untouched(pool, action_id)

    await store.set_flags(pool, killed=False, reason="resolved")
    assert await run_worker(settings, db_url, ticks=1, registry=h.registry()) == EXIT_OK

    assert (await h.action(pool, action_id))["status"] == "succeeded"
    assert await h.outcomes(pool) == ["killed", "ok"]


async def test_retry_dead_moves_chosen_dead_actions_back_and_they_run(
    settings: Settings, db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    dead = {
        "status": "dead",
        "attempts": 3,
        "max_attempts": 3,
        "last_error": "old failure",
        "sql_finished_at": "now()",
    }
    chosen = await insert_action(pool, action_type=h.OK, **dead)
    left = await insert_action(pool, action_type=h.OK, **dead)

    async with h.background_worker(idle(settings), db_url, h.registry()):
        await h.wait_outcome(pool, "idle")

        started = time.monotonic()
        moved = await store.retry_dead(pool, ids=[chosen], changed_by="t", reason="fixed")
        row = await h.wait_status(pool, chosen, "succeeded", timeout=5.0)
        elapsed = time.monotonic() - started

    assert moved == [chosen]
    assert elapsed < 1.0, f"ran {elapsed:.3f}s after the retry: NOTIFY did not wake the worker"
    assert (row["attempts"], row["max_attempts"], row["last_error"]) == (4, 6, None)
    assert await h.events(pool, chosen) == ["action_retried_by_operator", "action_succeeded"]
    still = await h.action(pool, left)
    assert (still["status"], still["attempts"], still["last_error"]) == ("dead", 3, "old failure")
    assert await h.events(pool, left) == []


async def test_retry_all_dead_reruns_every_dead_action(
    settings: Settings, db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    ids = [
        await insert_action(pool, action_type=h.OK, status="dead", attempts=1, max_attempts=1)
        for _ in range(4)
    ]
    done = await insert_action(pool, action_type=h.OK, status="succeeded", attempts=1)

    moved = await store.retry_dead(pool, ids=None, changed_by="t", reason="all")
    assert moved == sorted(ids)
    assert await store.retry_dead(pool, ids=None, changed_by="t", reason="again") == []

    async with h.background_worker(settings, db_url, h.registry()):

        async def all_succeeded() -> bool:
            return await h.statuses(pool) == {"succeeded": 5}

        await wait_for(all_succeeded, timeout=5.0, what="the retried actions to succeed")

    for action_id in ids:
        row = await h.action(pool, action_id)
        assert (row["attempts"], row["max_attempts"]) == (2, 2)
    assert (await h.action(pool, done))["attempts"] == 1  # a succeeded action is not rerun


# --- stopping ----------------------------------------------------------------------------


async def test_stop_lets_an_in_flight_action_finish_within_the_grace(
    settings: Settings, db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    stall = h.Stall(seconds=0.5)
    action_id = await insert_action(pool, action_type=h.STALL)

    async with h.background_worker(
        idle(settings).with_(shutdown_grace=5.0), db_url, h.registry(**{h.STALL: stall})
    ) as worker:
        await asyncio.wait_for(stall.started.wait(), timeout=5.0)
        code = await worker.stopped(timeout=5.0)

    assert code == EXIT_OK
    row = await h.action(pool, action_id)
    assert (row["status"], row["attempts"]) == ("succeeded", 1)
    assert await h.outcomes(pool) == ["ok"]  # no tick after the stop
    assert await h.lease_released(pool)


async def test_stop_past_the_grace_cancels_the_attempt_and_records_it_as_failed(
    settings: Settings, db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    stall = h.Stall(seconds=10.0)
    action_id = await insert_action(pool, action_type=h.STALL, max_attempts=3)

    async with h.background_worker(
        idle(settings).with_(shutdown_grace=0.3), db_url, h.registry(**{h.STALL: stall})
    ) as worker:
        await asyncio.wait_for(stall.started.wait(), timeout=5.0)
        started = time.monotonic()
        code = await worker.stopped(timeout=5.0)
        elapsed = time.monotonic() - started

    assert code == EXIT_OK
    assert elapsed < 2.0, f"stopped {elapsed:.2f}s after the signal"
    row = await h.action(pool, action_id)
    assert (row["status"], row["attempts"]) == ("retry", 1)  # not left running
    assert "worker stopped mid-attempt" in row["last_error"]
    assert await h.events(pool, action_id) == ["action_retry_scheduled"]
    [tick] = await h.ledger(pool)  # the cut-short tick is still on the ledger
    assert (tick["outcome"], tick["claimed"], tick["retried"], tick["error"]) == (
        "error",
        1,
        1,
        "worker stopped mid-attempt",
    )
    assert await h.lease_released(pool)
