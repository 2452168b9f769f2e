"""The worker in-process against a real PostgreSQL: ticks, wake-ups, retries, timeouts,
proof artifacts and the loss of the lease."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import structlog.testing

from aol import client
from aol.actions.context import HandlerContext
from aol.db import store
from aol.errors import LeaseHeld
from aol.settings import Settings
from aol.worker.runner import EXIT_LEASE_LOST, EXIT_OK, run_worker
from tests.factory import insert_action
from tests.waiting import wait_for
from tests.worker import handlers as h

IDLE_SCAN = 60.0  # a scan interval far beyond any test: only NOTIFY or a due time wakes


async def ledger_counts(pool: asyncpg.Pool[Any]) -> list[tuple[str, int, int, int, int]]:
    return [
        (r["outcome"], r["claimed"], r["succeeded"], r["retried"], r["dead"])
        for r in await h.ledger(pool)
    ]


async def assert_nothing_running(pool: asyncpg.Pool[Any]) -> None:
    assert (await h.statuses(pool)).get("running", 0) == 0


async def logs_of(pool: asyncpg.Pool[Any], action_id: int) -> list[dict[str, Any]]:
    return await store.list_action_logs(pool, action_id=action_id)


# --- ticks -------------------------------------------------------------------------------


async def test_two_ticks_on_an_empty_queue_return_at_once_with_two_idle_rows(
    settings: Settings, db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    started = time.monotonic()
    code = await run_worker(settings, db_url, ticks=2, registry=h.registry())

    assert code == EXIT_OK
    assert time.monotonic() - started < 3.0
    rows = await h.ledger(pool)
    assert [(r["tick"], r["outcome"], r["claimed"]) for r in rows] == [
        (1, "idle", 0),
        (2, "idle", 0),
    ]
    assert {r["epoch"] for r in rows} == {1}
    assert await h.lease_released(pool)  # released on exit


async def test_five_actions_at_batch_three_finish_in_two_ticks(
    settings: Settings, db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    ids = [await insert_action(pool, action_type=h.OK) for _ in range(5)]

    code = await run_worker(settings.with_(batch_size=3), db_url, ticks=2, registry=h.registry())

    assert code == EXIT_OK
    assert await ledger_counts(pool) == [("ok", 3, 3, 0, 0), ("ok", 2, 2, 0, 0)]
    for action_id in ids:
        row = await h.action(pool, action_id)
        assert (row["status"], row["attempts"]) == ("succeeded", 1)
        assert await h.events(pool, action_id) == ["action_succeeded"]
    assert await h.statuses(pool) == {"succeeded": 5}


# --- waking up ---------------------------------------------------------------------------


async def test_an_idle_worker_wakes_on_notify_without_polling(
    settings: Settings, db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    async with h.background_worker(settings.with_(scan_interval=IDLE_SCAN), db_url, h.registry()):
        await h.wait_outcome(pool, "idle")  # listening, then asleep for up to 60 s

        started = time.monotonic()
        action_id = await client.enqueue(pool, h.OK, {}, idempotency_key="wake-me")
        await h.wait_status(pool, action_id, "succeeded", timeout=5.0)
        elapsed = time.monotonic() - started

    assert elapsed < 1.0, f"took {elapsed:.3f}s: the worker did not wake on NOTIFY"
    assert (await h.action(pool, action_id))["attempts"] == 1


async def test_a_scheduled_action_runs_at_its_time_not_at_the_next_scan(
    settings: Settings, db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    async with h.background_worker(settings.with_(scan_interval=IDLE_SCAN), db_url, h.registry()):
        await h.wait_outcome(pool, "idle")
        due = datetime.now(UTC) + timedelta(seconds=1.5)
        action_id = await client.enqueue(pool, h.OK, {}, idempotency_key="later", not_before=due)
        row = await h.wait_status(pool, action_id, "succeeded", timeout=4.0)

    late = (row["claimed_at"] - row["not_before"]).total_seconds()
    assert 0 <= late < 0.5, f"claimed {late:.3f}s after its not_before"
    assert row["attempts"] == 1


async def test_a_dropped_listen_connection_reconnects_and_wakes_again(
    settings: Settings, db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    async def listener_pids() -> list[int]:
        rows = await pool.fetch(
            "SELECT pid FROM pg_stat_activity "
            "WHERE application_name LIKE 'aol-listen%' AND datname = current_database()"
        )
        return [int(r["pid"]) for r in rows]

    async with h.background_worker(settings.with_(scan_interval=IDLE_SCAN), db_url, h.registry()):
        await h.wait_outcome(pool, "idle")
        [old] = await listener_pids()
        await pool.execute("SELECT pg_terminate_backend($1)", old)

        async def replaced() -> list[int]:
            pids = await listener_pids()
            return pids if pids and old not in pids else []

        assert len(await wait_for(replaced, timeout=5.0, what="a new LISTEN session")) == 1

        async def rescanned() -> bool:  # a reconnect wakes the worker for a full scan
            return await h.outcomes(pool) == ["idle", "idle"]

        await wait_for(rescanned, timeout=5.0, what="the scan after the reconnect")
        started = time.monotonic()
        action_id = await client.enqueue(pool, h.OK, {}, idempotency_key="after-reconnect")
        await h.wait_status(pool, action_id, "succeeded", timeout=5.0)
        elapsed = time.monotonic() - started

    assert elapsed < 1.0, f"took {elapsed:.3f}s after the LISTEN session was replaced"


# --- failures and retries ----------------------------------------------------------------


async def test_a_failing_action_is_retried_with_growing_backoff_then_dead_lettered(
    settings: Settings, db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    recorder = h.Recorder(h.always_fails)
    reg = h.registry(**{h.FAIL: recorder})
    action_id = await insert_action(pool, action_type=h.FAIL, max_attempts=3)

    async with h.background_worker(settings.with_(backoff_base=0.2, backoff_max=5.0), db_url, reg):
        row = await h.wait_status(pool, action_id, "dead", timeout=5.0)

    assert row["attempts"] == 3
    assert row["last_error"] == "RuntimeError: boom on attempt 3"
    logs = await logs_of(pool, action_id)
    assert [(r["event"], r["attempt"]) for r in logs] == [
        ("action_retry_scheduled", 1),
        ("action_retry_scheduled", 2),
        ("action_dead", 3),
    ]
    assert [attempt for _, attempt, _ in recorder.calls] == [1, 2, 3]
    # Each retry's not_before is set in the transaction that logged it: the delay is exact.
    delays = [
        (not_before - log["created_at"]).total_seconds()
        for (_, _, not_before), log in zip(recorder.calls[1:], logs[:2], strict=True)
    ]
    assert delays == pytest.approx([0.2, 0.4], abs=1e-3)
    assert delays[1] > delays[0]
    await assert_nothing_running(pool)


async def test_an_action_that_fails_once_then_succeeds_ends_succeeded(
    settings: Settings, db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    action_id = await insert_action(pool, action_type=h.FLAKY, max_attempts=3)

    async with h.background_worker(settings, db_url, h.registry()):
        row = await h.wait_status(pool, action_id, "succeeded", timeout=5.0)

    assert (row["attempts"], row["last_error"]) == (2, None)
    assert await h.events(pool, action_id) == ["action_retry_scheduled", "action_succeeded"]


@pytest.mark.parametrize(
    ("action_type", "payload", "fragments"),
    [
        pytest.param(
            "POST_SOCIAK",
            {},
            ["unknown action type 'POST_SOCIAK'", "did you mean 'POST_SOCIAL'"],
            id="unknown-type-with-hint",
        ),
        pytest.param("ZZZ", {}, ["unknown action type 'ZZZ'"], id="unknown-type-no-hint"),
        pytest.param(
            h.POST,
            {"platform": "x", "audience": "public"},
            ["field 'content'", "missing"],
            id="missing-content",
        ),
        pytest.param(
            h.POST,
            {"platform": "x", "content": "hi", "audience": "publik"},
            ["field 'audience'", "did you mean 'public'"],
            id="bad-audience",
        ),
    ],
)
async def test_a_permanent_error_dead_letters_after_one_attempt(
    settings: Settings,
    db_url: str,
    pool: asyncpg.Pool[Any],
    action_type: str,
    payload: dict[str, Any],
    fragments: list[str],
) -> None:
    action_id = await insert_action(pool, action_type=action_type, payload=payload, max_attempts=5)

    assert await run_worker(settings, db_url, ticks=1, registry=h.registry()) == EXIT_OK

    row = await h.action(pool, action_id)
    assert (row["status"], row["attempts"]) == ("dead", 1)
    for fragment in fragments:
        assert fragment in row["last_error"]
    if action_type == "ZZZ":
        assert "did you mean" not in row["last_error"]
    assert await h.events(pool, action_id) == ["action_dead"]
    assert not (settings.data_dir / "artifacts").exists()  # nothing was "posted"


async def test_post_social_with_proof_mode_off_is_dead_without_retries(
    settings: Settings, db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    await store.set_flags(pool, proof_mode=False, reason="r")
    action_id = await insert_action(pool, action_type=h.POST, max_attempts=5)

    assert await run_worker(settings, db_url, ticks=1, registry=h.registry()) == EXIT_OK

    row = await h.action(pool, action_id)
    assert (row["status"], row["attempts"]) == ("dead", 1)
    assert "real run not configured" in row["last_error"]
    assert row["last_error"].startswith("RealRunNotConfigured")
    assert not (settings.data_dir / "artifacts").exists()


async def test_an_exception_in_one_handler_fails_only_its_own_action(
    settings: Settings, db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    first = await insert_action(pool, action_type=h.OK)
    failing = await insert_action(pool, action_type=h.FAIL, max_attempts=3)
    last = await insert_action(pool, action_type=h.OK)

    code = await run_worker(settings.with_(batch_size=3), db_url, ticks=1, registry=h.registry())

    assert code == EXIT_OK
    assert await ledger_counts(pool) == [("ok", 3, 2, 1, 0)]
    for ok_id in (first, last):
        assert (await h.action(pool, ok_id))["status"] == "succeeded"
    row = await h.action(pool, failing)
    assert (row["status"], row["attempts"]) == ("retry", 1)
    assert "RuntimeError" in row["last_error"]


async def test_a_handler_breaking_its_contract_fails_only_its_own_action(
    settings: Settings, db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    stall = h.Stall(seconds=0.5)
    slow = await insert_action(pool, action_type=h.STALL)
    bad = await insert_action(pool, action_type=h.BAD_RESULT, max_attempts=3)

    code = await run_worker(settings, db_url, ticks=1, registry=h.registry(**{h.STALL: stall}))

    assert code == EXIT_OK
    assert stall.calls == [(slow, 1)]  # ran once, and was not abandoned mid-attempt
    row = await h.action(pool, slow)
    assert (row["status"], row["attempts"]) == ("succeeded", 1)
    assert await h.events(pool, slow) == ["action_succeeded"]
    failed = await h.action(pool, bad)
    assert (failed["status"], failed["attempts"]) == ("retry", 1)
    assert "TypeError: handler returned dict" in failed["last_error"]
    [tick] = await h.ledger(pool)
    assert (tick["outcome"], tick["claimed"], tick["succeeded"], tick["retried"]) == (
        "ok",
        2,
        1,
        1,
    )
    await assert_nothing_running(pool)


async def test_a_handler_that_lets_out_a_cancellation_of_its_own_fails_its_attempt(
    settings: Settings, db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    """A handler task can end cancelled without the worker cancelling it (a future it
    awaited was cancelled elsewhere). That attempt fails and is retried; it is not left
    `running` until its claim expires, and its batch-mates are written as usual."""

    async def cancelled_elsewhere(ctx: HandlerContext) -> str | None:
        other: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        other.cancel()
        await other  # raises CancelledError: this task ends cancelled
        return None

    victim = await insert_action(pool, action_type="TEST_CANCELLED", max_attempts=3)
    ok = await insert_action(pool, action_type=h.OK)

    code = await run_worker(
        settings.with_(batch_size=2),
        db_url,
        ticks=1,
        registry=h.registry(TEST_CANCELLED=cancelled_elsewhere),
    )

    assert code == EXIT_OK
    row = await h.action(pool, victim)
    assert (row["status"], row["attempts"]) == ("retry", 1)
    assert "cancelled, neither by its deadline nor by the worker" in row["last_error"]
    assert (await h.action(pool, ok))["status"] == "succeeded"
    assert await ledger_counts(pool) == [("ok", 2, 1, 1, 0)]
    await assert_nothing_running(pool)


# --- timeouts ----------------------------------------------------------------------------


@pytest.mark.parametrize(("max_attempts", "status"), [(1, "dead"), (2, "retry")])
async def test_a_handler_past_the_action_timeout_is_cut_off(
    settings: Settings, db_url: str, pool: asyncpg.Pool[Any], max_attempts: int, status: str
) -> None:
    action_id = await insert_action(pool, action_type=h.SLEEPY, max_attempts=max_attempts)
    quick = await insert_action(pool, action_type=h.OK)

    started = time.monotonic()
    code = await run_worker(
        settings.with_(action_timeout=0.3), db_url, ticks=1, registry=h.registry()
    )

    assert code == EXIT_OK
    assert time.monotonic() - started < 3.0
    row = await h.action(pool, action_id)
    assert (row["status"], row["attempts"]) == (status, 1)
    assert "timed out after 0.3s" in row["last_error"]
    assert (await h.action(pool, quick))["status"] == "succeeded"
    assert (await ledger_counts(pool))[0][0] == "ok"  # the tick itself did not time out
    await assert_nothing_running(pool)


async def test_a_tick_past_its_timeout_is_recorded_and_leaves_nothing_running(
    settings: Settings, db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    # action_timeout above tick_timeout is refused by validate(); with_ does not validate,
    # which is the only way to let the tick timeout fire first.
    slow = settings.with_(tick_timeout=1.0, action_timeout=5.0)
    action_id = await insert_action(pool, action_type=h.SLEEPY, max_attempts=3)

    started = time.monotonic()
    code = await run_worker(slow, db_url, ticks=1, registry=h.registry())
    elapsed = time.monotonic() - started

    assert code == EXIT_OK
    assert elapsed < 2.5, f"the tick took {elapsed:.2f}s"
    [tick] = await h.ledger(pool)
    assert (tick["outcome"], tick["claimed"], tick["retried"]) == ("timeout", 1, 1)
    assert "tick exceeded its timeout of 1s" in tick["error"]
    row = await h.action(pool, action_id)
    assert (row["status"], row["attempts"]) == ("retry", 1)
    assert "tick exceeded its timeout" in row["last_error"]
    assert await h.events(pool, action_id) == ["action_retry_scheduled"]
    await assert_nothing_running(pool)


# --- proof artifacts ---------------------------------------------------------------------


async def test_post_social_in_proof_mode_writes_an_artifact_logged_with_its_sha256(
    settings: Settings, db_url: str, pool: asyncpg.Pool[Any], data_dir: Path
) -> None:
    content = "Bonjour, le monde — épreuve"
    action_id = await insert_action(
        pool,
        action_type=h.POST,
        idempotency_key="post/1 with spaces",
        payload={"platform": "mastodon", "content": content, "audience": "followers"},
    )

    assert await run_worker(settings, db_url, ticks=1, registry=h.registry()) == EXIT_OK

    assert (await h.action(pool, action_id))["status"] == "succeeded"
    [log] = await logs_of(pool, action_id)
    assert log["event"] == "action_succeeded"
    path = Path(log["artifact_ref"])
    assert path.is_absolute()
    assert path.is_relative_to((data_dir / "artifacts").resolve())
    files = [p for p in (data_dir / "artifacts").rglob("*") if p.is_file()]
    assert [p.resolve() for p in files] == [path]  # one file, no leftover temporary file
    data = path.read_bytes()
    assert log["artifact_sha256"] == hashlib.sha256(data).hexdigest()
    written = json.loads(data)
    assert written["would_post"] == {
        "platform": "mastodon",
        "audience": "followers",
        "content": content,
    }
    assert (written["action_id"], written["attempt"], written["proof"]) == (action_id, 1, True)
    assert str(path) in log["message"]


# --- losing the lease --------------------------------------------------------------------


async def terminate_lease_session(pool: asyncpg.Pool[Any]) -> list[bool]:
    rows = await pool.fetch(
        "SELECT pg_terminate_backend(pid) AS killed FROM pg_stat_activity "
        "WHERE application_name LIKE 'aol-lease%' AND datname = current_database()"
    )
    return [bool(r["killed"]) for r in rows]


async def test_a_worker_that_loses_its_lease_stops_and_drops_its_in_flight_result(
    settings: Settings, db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    stall = h.Stall(seconds=1.5)
    reg = h.registry(**{h.STALL: stall})
    quick = settings.with_(tick_timeout=2.0, action_timeout=2.0, claim_grace=0.2)
    in_flight = await insert_action(pool, action_type=h.STALL)

    async with h.background_worker(quick, db_url, reg) as first:
        await asyncio.wait_for(stall.started.wait(), timeout=5.0)
        assert await terminate_lease_session(pool) == [True]
        later = await insert_action(pool, action_type=h.STALL)  # NOTIFY: must not be claimed
        code = await first.exited(timeout=5.0)

    assert code == EXIT_LEASE_LOST
    assert not await h.lease_released(pool)  # nothing written under the lost lease
    assert stall.calls == [(in_flight, 1)]  # the handler did run to its end ...
    row = await h.action(pool, in_flight)
    assert (row["status"], row["attempts"], row["claim_epoch"]) == ("running", 1, 1)
    assert await h.events(pool, in_flight) == []  # ... but its result was not written
    waiting = await h.action(pool, later)
    assert (waiting["status"], waiting["attempts"]) == ("pending", 0)
    assert [
        (r["epoch"], r["tick"], r["claimed"], r["succeeded"]) for r in await h.ledger(pool)
    ] == [(1, 1, 1, 0)]

    # The next holder rescues the stale claim once it expires and runs it as attempt 2.
    stall.slow = False
    async with h.background_worker(quick, db_url, reg) as second:
        rescued = await h.wait_status(pool, in_flight, "succeeded", timeout=5.0)
        await h.wait_status(pool, later, "succeeded", timeout=1.0)
        assert await second.stopped() == EXIT_OK

    assert (rescued["attempts"], rescued["claim_epoch"]) == (2, 2)
    logs = await logs_of(pool, in_flight)
    assert [(r["event"], r["attempt"], r["epoch"]) for r in logs] == [
        ("action_rescued", 1, 2),
        ("action_succeeded", 2, 2),
    ]
    assert (await h.action(pool, later))["attempts"] == 1
    await assert_nothing_running(pool)


async def test_a_late_result_under_a_superseded_epoch_is_refused_and_the_worker_exits(
    settings: Settings, db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    stall = h.Stall(seconds=0.3)
    action_id = await insert_action(pool, action_type=h.STALL)

    async with h.background_worker(
        settings.with_(scan_interval=IDLE_SCAN), db_url, h.registry(**{h.STALL: stall})
    ) as worker:
        await asyncio.wait_for(stall.started.wait(), timeout=5.0)
        # Another holder's acquire_lease: the epoch moves on under the running attempt.
        await pool.execute("UPDATE aol.lease SET owner = 'usurper', epoch = epoch + 1")
        code = await worker.exited(timeout=5.0)  # the next heartbeat notices

    assert code == EXIT_LEASE_LOST
    row = await h.action(pool, action_id)
    assert (row["status"], row["attempts"], row["claim_epoch"]) == ("running", 1, 1)
    assert await h.events(pool, action_id) == []  # fenced out: no result was written
    lease = await store.read_lease(pool)
    assert (lease.owner, lease.epoch) == ("usurper", 2)  # the old holder did not release it
    assert await h.outcomes(pool) == ["ok"]


async def test_a_worker_refuses_to_start_while_another_holds_the_lease(
    settings: Settings, db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    async with h.background_worker(settings.with_(scan_interval=IDLE_SCAN), db_url, h.registry()):
        await h.wait_outcome(pool, "idle")
        with pytest.raises(LeaseHeld, match="another worker holds the lease"):
            await run_worker(
                settings.with_(owner="intruder"), db_url, ticks=1, registry=h.registry()
            )
        lease = await store.read_lease(pool)
        assert (lease.owner, lease.epoch) == (settings.owner, 1)  # the epoch did not move
    assert {r["epoch"] for r in await h.ledger(pool)} == {1}  # the intruder ran no tick


async def test_ticks_mode_picks_up_a_due_retry_in_the_next_tick(
    settings: Settings, db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    # ticks=N runs back to back: a retry due at once is picked up by tick 2
    action_id = await insert_action(pool, action_type=h.FLAKY)
    fast = settings.with_(backoff_base=0.0, backoff_max=0.0)

    assert await run_worker(fast, db_url, ticks=2, registry=h.registry()) == EXIT_OK

    assert await ledger_counts(pool) == [("ok", 1, 0, 1, 0), ("ok", 1, 1, 0, 0)]
    row = await h.action(pool, action_id)
    assert (row["status"], row["attempts"]) == ("succeeded", 2)


async def test_the_claim_after_a_failure_waits_for_its_retry_to_be_written(
    settings: Settings, db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    """The failure is written behind the tick; the next claim waits for that write, so a
    retry due at once is claimed even when the write is slow (here: held up by a lock on
    the action's row, taken while the attempt runs)."""

    async def slow_then_fails_once(ctx: HandlerContext) -> str:
        await asyncio.sleep(0.3)
        if ctx.action.attempts == 1:
            raise RuntimeError("first attempt fails")
        return "second attempt"

    reg = h.registry(TEST_SLOW_FLAKY=slow_then_fails_once)
    action_id = await insert_action(pool, action_type="TEST_SLOW_FLAKY")
    fast = settings.with_(backoff_base=0.0, backoff_max=0.0)
    blocker: asyncpg.Connection[Any] = await asyncpg.connect(db_url)
    try:
        worker = asyncio.create_task(run_worker(fast, db_url, ticks=2, registry=reg))
        await h.wait_status(pool, action_id, "running")
        held = blocker.transaction()
        await held.start()
        await blocker.execute("SELECT 1 FROM aol.actions WHERE id = $1 FOR UPDATE", action_id)
        await asyncio.sleep(0.8)  # the attempt failed; its write waits on the row lock
        await held.rollback()
        assert await asyncio.wait_for(worker, timeout=30) == EXIT_OK
    finally:
        await blocker.close()
    assert await ledger_counts(pool) == [("ok", 1, 0, 1, 0), ("ok", 1, 1, 0, 0)]
    row = await h.action(pool, action_id)
    assert (row["status"], row["attempts"]) == ("succeeded", 2)


# --- log lines ---------------------------------------------------------------------------


async def test_success_log_tick_writes_one_line_per_tick_and_still_one_per_failure(
    settings: Settings, db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    ok_ids = [await insert_action(pool, action_type=h.OK) for _ in range(3)]
    bad = await insert_action(pool, action_type=h.FAIL, max_attempts=1)

    with structlog.testing.capture_logs() as lines:
        code = await run_worker(
            settings.with_(batch_size=10, success_log="tick"),
            db_url,
            ticks=1,
            registry=h.registry(),
        )

    assert code == EXIT_OK
    events = [line["event"] for line in lines]
    assert "action_succeeded" not in events
    [summary] = [line for line in lines if line["event"] == "actions_succeeded"]
    assert (summary["count"], summary["action_ids"], summary["tick"]) == (3, sorted(ok_ids), 1)
    [dead] = [line for line in lines if line["event"] == "action_dead"]
    assert dead["action_id"] == bad
    # The execution log keeps a row per attempt whatever the log lines say.
    for action_id in ok_ids:
        assert await h.events(pool, action_id) == ["action_succeeded"]


async def test_success_log_each_writes_a_line_per_success(
    settings: Settings, db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    ok_ids = [await insert_action(pool, action_type=h.OK) for _ in range(3)]

    with structlog.testing.capture_logs() as lines:
        await run_worker(settings.with_(batch_size=10), db_url, ticks=1, registry=h.registry())

    done = [line for line in lines if line["event"] == "action_succeeded"]
    assert sorted(line["action_id"] for line in done) == sorted(ok_ids)
    assert all(line["attempt"] == 1 and line["tick"] == 1 for line in done)
    assert "actions_succeeded" not in [line["event"] for line in lines]


async def test_the_workers_attempt_cap_dead_letters_before_the_actions_own_limit(
    settings: Settings, db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    action_id = await insert_action(pool, action_type=h.FAIL, max_attempts=5)

    capped = settings.with_(max_attempts=2, backoff_base=0.05, backoff_max=0.1)
    async with h.background_worker(capped, db_url, h.registry()):
        row = await h.wait_status(pool, action_id, "dead", timeout=5.0)

    assert (row["attempts"], row["max_attempts"]) == (2, 5)
    assert await h.events(pool, action_id) == ["action_retry_scheduled", "action_dead"]


async def test_the_worker_pool_skips_the_session_reset_on_release(
    settings: Settings, db_url: str, pool: asyncpg.Pool[Any]
) -> None:
    """Its statements leave no session state (the locks and LISTEN have their own
    connections), so a release costs no reset query; its sessions are named after it."""
    ids = [await client.enqueue(pool, h.OK, {}, idempotency_key=f"r{i}") for i in range(6)]
    async with h.background_worker(settings, db_url, h.registry()):
        for action_id in ids:
            await h.wait_status(pool, action_id, "succeeded")
        await h.wait_outcome(pool, "idle")
        rows = await pool.fetch(
            "SELECT query FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = $1",
            f"aol-worker {settings.owner}",
        )
    assert rows, "the worker's pool sessions are named aol-worker <owner>"
    last = [str(r["query"]) for r in rows]
    assert not [q for q in last if "pg_advisory_unlock_all" in q], last
