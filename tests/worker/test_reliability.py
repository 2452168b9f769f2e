"""Bounds that hold: deadlines against handlers that do not cooperate, the kill switch
cutting in-flight work short, the listener's self-probe, poll-only mode, the watchdog."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from typing import Any

import asyncpg

from aol.actions.context import HandlerContext
from aol.client import enqueue
from aol.db import store
from aol.db.listen import Listener
from aol.settings import Settings
from aol.worker.watchdog import Watchdog
from tests.waiting import wait_for
from tests.worker import handlers as h
from tests.worker import isolated_handlers as iso

STUBBORN = "TEST_STUBBORN"


async def swallows_cancellation(ctx: HandlerContext) -> str:
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        await asyncio.sleep(1.5)  # ignores the first cancellation (a second one ends it)
    return "late"


async def test_a_handler_that_swallows_cancellation_is_timed_out_and_the_tick_ends_on_time(
    settings: Settings, db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    reg = h.registry(**{STUBBORN: swallows_cancellation})
    settings = settings.with_(action_timeout=0.5, tick_timeout=5.0, scan_interval=60.0)
    async with h.background_worker(settings, db_url, reg):
        stubborn = await enqueue(pool, STUBBORN, {}, idempotency_key="stubborn")
        row = await h.wait_status(pool, stubborn, "retry", timeout=5)
        assert "HandlerTimeout" in row["last_error"]
        assert "ignored cancellation" in row["last_error"]

        # The ledger row is written when the tick ends, just after the result.
        async def claiming_ticks() -> list[dict[str, Any]]:
            return [t for t in await h.ledger(pool) if t["claimed"]]

        [tick] = await wait_for(claiming_ticks, timeout=5, what="the tick's ledger row")
        assert tick["duration_ms"] < 2000  # 0.5 s deadline + 0.5 s grace, not 10 s
        # The worker is still free to work: a later action runs.
        ok = await enqueue(pool, h.OK, {}, idempotency_key="after")
        await h.wait_status(pool, ok, "succeeded", timeout=5)


async def test_an_isolated_handler_is_killed_at_its_deadline_without_blocking_the_worker(
    settings: Settings, db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    reg = h.registry()
    reg.register("TEST_BLOCKS", iso.blocks_forever, isolated=True)
    settings = settings.with_(action_timeout=1.0, scan_interval=60.0)
    async with h.background_worker(settings, db_url, reg):
        started = time.monotonic()
        blocked = await enqueue(pool, "TEST_BLOCKS", {}, idempotency_key="blocks")
        row = await h.wait_status(pool, blocked, "retry", timeout=8)
        assert time.monotonic() - started < 5
        assert "HandlerTimeout" in row["last_error"]
        assert "was killed" in row["last_error"]


async def test_an_isolated_handler_writes_its_artifact_and_reports_permanent_errors(
    settings: Settings, db_url: str, pool: asyncpg.Pool[Any], data_dir: Path
) -> None:
    reg = h.registry()
    reg.register("TEST_PROOF", iso.writes_proof, isolated=True)
    reg.register("TEST_REJECT", iso.rejects_payload, isolated=True)
    settings = settings.with_(action_timeout=5.0, scan_interval=60.0)
    async with h.background_worker(settings, db_url, reg):
        proof = await enqueue(pool, "TEST_PROOF", {}, idempotency_key="iso-proof")
        reject = await enqueue(pool, "TEST_REJECT", {}, idempotency_key="iso-reject")
        await h.wait_status(pool, proof, "succeeded", timeout=10)
        dead = await h.wait_status(pool, reject, "dead", timeout=10)
    assert dead["attempts"] == 1  # permanent in the child: no retries burned
    assert "InvalidPayload: field 'x' is missing" in dead["last_error"]
    logged = await pool.fetchrow(
        "SELECT artifact_ref, artifact_sha256 FROM aol.execution_logs "
        "WHERE action_id = $1 AND event = 'action_succeeded'",
        proof,
    )
    assert logged is not None
    path = Path(logged["artifact_ref"])
    assert path.is_relative_to(data_dir)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == logged["artifact_sha256"]


async def kill(pool: asyncpg.Pool[Any], *, cancels: bool) -> None:
    await pool.execute(
        "UPDATE aol.control_flags SET killed = true, kill_cancels = $1, "
        "changed_by = 'test', reason = 'stop it' WHERE id = 1",
        cancels,
    )


async def test_kill_cuts_in_flight_work_short_and_returns_it_to_retry(
    settings: Settings, db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    stall = h.Stall(seconds=30)
    reg = h.registry(**{h.STALL: stall})
    async with h.background_worker(settings.with_(action_timeout=5.0), db_url, reg) as worker:
        action_id = await enqueue(pool, h.STALL, {}, idempotency_key="in-flight")
        await asyncio.wait_for(stall.started.wait(), timeout=5)
        killed_at = time.monotonic()
        await kill(pool, cancels=False)
        assert await worker.exited(timeout=3) == 0
        assert time.monotonic() - killed_at < 2
    row = await h.action(pool, action_id)
    assert row["status"] == "retry"
    assert "killed by operator (test: stop it)" in row["last_error"]
    assert await h.statuses(pool) == {"retry": 1}  # nothing left running
    assert "killed" in await h.outcomes(pool)


async def test_kill_with_kill_cancels_cancels_the_in_flight_action(
    settings: Settings, db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    stall = h.Stall(seconds=30)
    reg = h.registry(**{h.STALL: stall})
    async with h.background_worker(settings.with_(action_timeout=5.0), db_url, reg) as worker:
        action_id = await enqueue(pool, h.STALL, {}, idempotency_key="in-flight")
        await asyncio.wait_for(stall.started.wait(), timeout=5)
        await kill(pool, cancels=True)
        assert await worker.exited(timeout=3) == 0
    row = await h.action(pool, action_id)
    assert (row["status"], row["attempts"]) == ("cancelled", 1)
    assert await h.events(pool, action_id) == ["action_cancelled"]


async def test_a_deaf_listener_is_found_by_its_probe_and_reconnected(
    db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    listener = Listener(db_url, store.WAKEUP_CHANNEL)
    await listener.start()
    try:
        assert await listener.probe(pool, timeout=2)
        assert not listener.wake.is_set()  # a probe is not work
        # Go deaf without the connection closing: notifications stop arriving.
        conn = listener._conn
        assert conn is not None
        await conn.remove_listener(store.WAKEUP_CHANNEL, listener._on_notify)
        assert not await listener.probe(pool, timeout=0.5)
        await wait_for(lambda: _reconnected(listener), timeout=5, what="a reconnect")
        assert listener.wake.is_set()  # a full scan follows a reconnect
        listener.wake.clear()
        assert await listener.enter_idle()  # asleep on the new connection: enqueuers notify
        await enqueue(pool, h.OK, {}, idempotency_key="heard")
        await asyncio.wait_for(listener.wake.wait(), timeout=2)
    finally:
        await listener.close()


async def _reconnected(listener: Listener) -> bool:
    return listener.reconnects >= 1 and listener.connected


async def test_poll_only_mode_runs_actions_without_a_listen_connection(
    settings: Settings, db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    settings = settings.with_(listen=False, scan_interval=0.3)
    async with h.background_worker(settings, db_url, h.registry()):
        action_id = await enqueue(pool, h.OK, {}, idempotency_key="polled")
        await h.wait_status(pool, action_id, "succeeded", timeout=5)
        listening = await pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name LIKE 'aol-listen%'"
        )
    assert listening == 0


async def test_the_watchdog_fires_when_the_loop_is_blocked() -> None:
    fired: list[int] = []
    async with Watchdog(0.3, on_fire=fired.append) as dog:
        time.sleep(0.8)  # block the event loop, as a broken handler would
        await asyncio.sleep(0)
    assert fired == [70]
    assert dog.fired


async def test_the_watchdog_stays_quiet_while_the_loop_runs() -> None:
    fired: list[int] = []
    async with Watchdog(0.3, on_fire=fired.append):
        for _ in range(10):
            await asyncio.sleep(0.05)
    assert fired == []
