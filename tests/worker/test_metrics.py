"""GET /metrics on a real worker: its counters agree with what the database recorded."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
from structlog.testing import capture_logs

from aol.db import store
from aol.model import ActionStatus, TickOutcome
from aol.settings import Settings
from aol.worker.metrics import CONTENT_TYPE, DB_READ_BUDGET, DB_STATEMENT_TIMEOUT
from tests.factory import insert_action
from tests.promtext import Scraped, parse
from tests.unit.test_metrics import request
from tests.waiting import wait_for
from tests.worker import handlers as h
from tests.worker.test_health import free_port

UNKNOWN = "TEST_NO_SUCH_HANDLER"
IDLE_SCAN = 60.0
HOUR = 3600.0


async def scrape(port: int) -> Scraped:
    status, headers, body = await request(port, "GET /metrics HTTP/1.1")
    assert (status, headers["content-type"]) == (200, CONTENT_TYPE)
    return parse(body.decode())


async def first_scrape(port: int) -> Scraped:
    """Scrape once the worker's health server listens."""

    async def attempt() -> Scraped | None:
        try:
            return await scrape(port)
        except OSError:
            return None

    scraped = await wait_for(attempt, timeout=5, what=f"/metrics on port {port}")
    assert scraped is not None
    return scraped


async def by_status(pool: asyncpg.Pool[Any]) -> dict[str, float]:
    counts = {str(s): 0.0 for s in ActionStatus}
    for row in await pool.fetch("SELECT status, count(*) AS n FROM aol.actions GROUP BY status"):
        counts[row["status"]] = float(row["n"])
    return counts


async def recorded(pool: asyncpg.Pool[Any]) -> dict[str, dict[str, float]]:
    """What the database says happened, per action type, named as the counters are."""
    claims = await pool.fetch(
        "SELECT action_type, sum(attempts) AS n FROM aol.actions GROUP BY action_type"
    )
    events = await pool.fetch(
        "SELECT a.action_type, l.event, count(*) AS n FROM aol.execution_logs l "
        "JOIN aol.actions a ON a.id = l.action_id GROUP BY 1, 2"
    )
    names = {
        "action_succeeded": "aol_actions_succeeded_total",
        "action_retry_scheduled": "aol_actions_retried_total",
        "action_dead": "aol_actions_dead_total",
        "action_rescued": "aol_actions_rescued_total",
    }
    out: dict[str, dict[str, float]] = {name: {} for name in names.values()}
    out["aol_actions_claimed_total"] = {r["action_type"]: float(r["n"]) for r in claims}
    for r in events:
        if r["event"] in names:
            out[names[r["event"]]][r["action_type"]] = float(r["n"])
    return out


def counted(scraped: Scraped) -> dict[str, dict[str, float]]:
    names = (
        "aol_actions_succeeded_total",
        "aol_actions_retried_total",
        "aol_actions_dead_total",
        "aol_actions_claimed_total",
    )
    return {name: scraped.by_label(name, "action_type") for name in names}


async def test_the_counters_match_what_the_database_recorded(
    settings: Settings, db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    for _ in range(3):
        await insert_action(pool, action_type=h.OK)
    for _ in range(2):
        await insert_action(pool, action_type=h.FLAKY, max_attempts=3)
    await insert_action(pool, action_type=h.FAIL, max_attempts=2)
    await insert_action(pool, action_type=UNKNOWN)  # a permanent error: dead at once
    port = free_port()

    async with h.background_worker(
        settings.with_(health_port=port, scan_interval=IDLE_SCAN), db_url, h.registry()
    ):

        async def all_final() -> bool:
            return await h.statuses(pool) == {"succeeded": 5, "dead": 2}

        await wait_for(all_final, timeout=10, what="every action to succeed or die")
        # Pausing makes the worker quiet: after its paused tick it sleeps for a minute.
        await store.set_flags(pool, paused=True, reason="settle before scraping")
        await h.wait_outcome(pool, "paused")
        scraped = await scrape(port)

        expected = {
            "aol_actions_succeeded_total": {h.OK: 3, h.FLAKY: 2},
            "aol_actions_retried_total": {h.FLAKY: 2, h.FAIL: 1},
            "aol_actions_dead_total": {h.FAIL: 1, UNKNOWN: 1},
            "aol_actions_claimed_total": {h.OK: 3, h.FLAKY: 4, h.FAIL: 2, UNKNOWN: 1},
        }
        database = await recorded(pool)
        assert counted(scraped) == expected
        assert {k: v for k, v in database.items() if k in expected} == expected
        assert scraped.by_label("aol_actions_discarded_total", "action_type") == {}
        assert scraped.by_label("aol_actions_cancelled_total", "action_type") == {}
        assert scraped.value("aol_actions_rescued_total") == 0
        # Every written attempt ran a handler (or failed to find one) and was timed.
        timed = scraped.by_label("aol_action_duration_seconds_count", "action_type")
        assert timed == {h.OK: 3, h.FLAKY: 4, h.FAIL: 2, UNKNOWN: 1}

        ledger = await h.ledger(pool)
        per_outcome = {str(o): 0.0 for o in TickOutcome}
        for row in ledger:
            per_outcome[row["outcome"]] += 1
        assert scraped.by_label("aol_ticks_total", "outcome") == per_outcome
        assert scraped.value("aol_tick_duration_seconds_count") == len(ledger)
        assert sum(r["claimed"] for r in ledger) == 10

        assert scraped.value("aol_metrics_db_up") == 1
        assert scraped.by_label("aol_actions", "status") == await by_status(pool)
        # A small table: the finished counts are taken at every scrape (see slowread).
        age = scraped.value("aol_actions_finished_count_age_seconds")
        assert age is not None
        assert 0 <= age < 1
        assert scraped.value("aol_queue_lag_seconds") == 0  # nothing runnable waits
        assert scraped.value("aol_lease_held") == 1
        for name in ("aol_lease_heartbeat_age_seconds", "aol_lease_row_heartbeat_age_seconds"):
            age = scraped.value(name)
            assert age is not None, name
            assert 0 <= age <= settings.lease_ttl, (name, age)


async def test_queue_lag_shows_an_old_runnable_action_and_only_the_holder_holds_the_lease(
    settings: Settings, db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    await store.set_flags(pool, paused=True, reason="let the queue age")
    await insert_action(pool, action_type=h.OK, sql_not_before="now() + interval '1 hour'")
    holder_port, standby_port = free_port(), free_port()
    holding = settings.with_(health_port=holder_port, scan_interval=IDLE_SCAN)
    standby = settings.with_(health_port=standby_port, standby=True, owner="standby:1")

    async with h.background_worker(holding, db_url, h.registry()):
        await h.wait_outcome(pool, "paused")
        await wait_for(lambda: h.lease_held(pool), timeout=5, what="the holder's lease")
        only_future = await first_scrape(holder_port)
        await insert_action(pool, action_type=h.OK, sql_not_before="now() - interval '1 hour'")

        async with h.background_worker(standby, db_url, h.registry()):
            on_standby = await first_scrape(standby_port)
            on_holder = await scrape(holder_port)
            statuses = await by_status(pool)

    assert only_future.value("aol_queue_lag_seconds") == 0  # not due yet: no lag
    for scraped in (on_holder, on_standby):
        lag = scraped.value("aol_queue_lag_seconds")
        assert lag is not None
        assert HOUR <= lag < HOUR + 60
        assert scraped.value("aol_metrics_db_up") == 1
        assert scraped.by_label("aol_actions", "status") == statuses
        assert statuses["pending"] == 2
    assert on_holder.value("aol_lease_held") == 1
    assert on_holder.value("aol_lease_heartbeat_age_seconds") is not None
    assert (on_holder.value("aol_ticks_total", outcome="paused") or 0) >= 1
    assert on_standby.value("aol_lease_held") == 0
    assert on_standby.value("aol_lease_heartbeat_age_seconds") is None
    assert sum(on_standby.by_label("aol_ticks_total", "outcome").values()) == 0
    # Both see the holder's heartbeat in the lease row.
    row_age = on_standby.value("aol_lease_row_heartbeat_age_seconds")
    assert row_age is not None
    assert 0 <= row_age <= settings.lease_ttl


async def test_a_scrape_with_the_database_blocked_says_so_and_still_answers(
    settings: Settings, db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    await store.set_flags(pool, paused=True, reason="keep the worker off aol.actions")
    port = free_port()
    async with h.background_worker(
        settings.with_(health_port=port, scan_interval=IDLE_SCAN), db_url, h.registry()
    ):
        await h.wait_outcome(pool, "paused")
        before = await first_scrape(port)
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("LOCK TABLE aol.actions IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            with capture_logs() as logs:
                blocked = await scrape(port)
            elapsed = time.monotonic() - started
        after = await scrape(port)

    assert before.value("aol_metrics_db_up") == 1
    assert blocked.value("aol_metrics_db_up") == 0
    # The statement timeout ended the read, well before the read's overall budget.
    assert DB_STATEMENT_TIMEOUT <= elapsed < DB_READ_BUDGET
    failures = [e for e in logs if e["event"] == "metrics_read_failed"]
    assert [e["error_type"] for e in failures] == ["QueryCanceledError"]
    assert blocked.by_label("aol_actions", "status") == {}  # left out, not reported stale
    assert blocked.value("aol_queue_lag_seconds") is None
    assert blocked.value("aol_lease_held") == 1  # in-process metrics are still there
    assert blocked.value("aol_ticks_total", outcome="paused") == before.value(
        "aol_ticks_total", outcome="paused"
    )
    assert after.value("aol_metrics_db_up") == 1  # the next scrape reconnects
    assert after.by_label("aol_actions", "status") == await by_status(pool)


async def test_a_fenced_out_result_counts_as_discarded_not_succeeded(
    settings: Settings, db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    # The attempt outlasts the heartbeat that notices the lost lease, so the tick is cut
    # short and its attempt dropped on the way out.
    stall = h.Stall(seconds=10.0)
    action_id = await insert_action(pool, action_type=h.STALL)
    port = free_port()
    # A standby that loses the lease waits to take it again, so its server stays up.
    worker = settings.with_(health_port=port, standby=True, scan_interval=IDLE_SCAN)

    async with h.background_worker(worker, db_url, h.registry(**{h.STALL: stall})):
        await asyncio.wait_for(stall.started.wait(), timeout=5.0)
        # Another holder's acquire_lease: the epoch moves on under the running attempt.
        await pool.execute("UPDATE aol.lease SET owner = 'usurper', epoch = epoch + 1")
        stall.slow = False
        # Back as holder at epoch 3, the worker rescues the stale claim and runs it again.
        await h.wait_status(pool, action_id, "succeeded", timeout=15.0)

        async def success_on_the_ledger() -> bool:
            return any(row["succeeded"] for row in await h.ledger(pool))

        await wait_for(success_on_the_ledger, timeout=5, what="the success's tick row")
        await store.set_flags(pool, paused=True, reason="settle before scraping")
        await h.wait_outcome(pool, "paused")
        scraped = await scrape(port)
        database = await recorded(pool)

    assert await h.events(pool, action_id) == ["action_rescued", "action_succeeded"]
    assert scraped.by_label("aol_actions_discarded_total", "action_type") == {h.STALL: 1}
    assert scraped.by_label("aol_actions_succeeded_total", "action_type") == {h.STALL: 1}
    assert database["aol_actions_succeeded_total"] == {h.STALL: 1}
    assert scraped.by_label("aol_actions_claimed_total", "action_type") == {h.STALL: 2}
    assert database["aol_actions_claimed_total"] == {h.STALL: 2}
    assert scraped.value("aol_actions_rescued_total") == 1
    assert scraped.value("aol_lease_held") == 1
    cut_short = [r for r in await h.ledger(pool) if r["outcome"] == "error"]
    assert [(r["epoch"], r["error"]) for r in cut_short] == [(1, "lease lost mid-attempt")]
    assert scraped.value("aol_ticks_total", outcome="error") == 1
