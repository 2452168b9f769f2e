"""Fault scenarios 4 and 5: the LISTEN connection is terminated by the server, and the
server itself is restarted (fast and immediate) under a holder + standby pair.
"""

from __future__ import annotations

import asyncio
import signal
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from aol import enqueue
from tests.faults.cluster import FaultCluster
from tests.faults.harness import (
    CLAIM_TTL,
    LEASE_TTL,
    SCAN_INTERVAL,
    Fleet,
    check_history,
    db_now,
    lease,
    listener_backends,
    next_completion,
    pid_of_owner,
    read_journal,
    soft,
    statuses,
)
from tests.faults.report import Figures
from tests.process.proc import (
    create_effects_table,
    effects,
    lease_locks,
    lease_owner_is,
    until,
)

pytestmark = pytest.mark.faults
Record = Callable[[Figures], None]
MakeFleet = Callable[..., Fleet]


async def start_latency(pool: asyncpg.Pool[Any], action_id: int) -> float | None:
    """Seconds from the action's enqueue (created_at) to its handler's start, both on the
    database clock; None until it has started."""
    rows = await effects(pool, action_id)
    if not rows:
        return None
    created = await pool.fetchval("SELECT created_at FROM aol.actions WHERE id = $1", action_id)
    return float((rows[0]["started_at"] - created).total_seconds())


async def measured(pool: asyncpg.Pool[Any], key: str, timeout: float, alive: Any) -> float:
    action_id = int(await enqueue(pool, "SLOW", {"seconds": 0}, idempotency_key=key))
    # A latency of exactly 0.0 is not falsy-safe for wait_for: wrap it.
    found = await until(
        lambda: _boxed(start_latency(pool, action_id)),
        what=f"action {key} to start",
        timeout=timeout,
        alive=alive,
    )
    return found[0]


async def _boxed(value: Any) -> tuple[float] | None:
    got = await value
    return None if got is None else (float(got),)


# --- 4. The listener's connection terminated by the server ------------------------------


async def test_4_terminated_listener_reconnects_and_wakeups_stay_fast(
    make_fleet: MakeFleet, faults_pool: asyncpg.Pool[Any], record: Record
) -> None:
    pool = faults_pool
    await create_effects_table(pool)
    fleet = make_fleet(size=1, restart=False)
    await fleet.start()
    [w] = fleet.alive
    await until(lambda: lease_owner_is(pool, w.owner), what="the lease", alive=[w])
    [backend] = await until(
        lambda: listener_backends(pool), what="the LISTEN connection", alive=[w]
    )
    assert str(backend["application_name"]).startswith("aol-listen")
    epoch = (await lease(pool) or {"epoch": None})["epoch"]
    baseline = [await measured(pool, f"before-{i}", 5, [w]) for i in range(3)]

    t_term = time.monotonic()
    assert await pool.fetchval("SELECT pg_terminate_backend($1)", backend["pid"]) is True
    # Enqueued at once, most likely before the listener is back: it must still start within
    # the scan interval.
    first = await measured(pool, "right-after", SCAN_INTERVAL + 2, [w])

    async def new_backend() -> list[asyncpg.Record] | None:
        rows = await listener_backends(pool)
        return rows if rows and rows[0]["pid"] != backend["pid"] else None

    [again] = await until(new_backend, what="a new LISTEN connection", alive=[w], timeout=10)
    reconnect_s = time.monotonic() - t_term
    await until(
        lambda: _has_event(w.event_names(), "listener_reconnected"),
        what="listener_reconnected in the log",
        alive=[w],
    )
    after: list[float] = []
    for i in range(5):
        # Spread the probes over the idle sleep (they measure wake-ups, not synchronise).
        await asyncio.sleep(0.2 + 0.15 * i)
        after.append(await measured(pool, f"after-{i}", SCAN_INTERVAL + 2, [w]))
    same_epoch = (await lease(pool) or {"epoch": None})["epoch"] == epoch

    record(
        Figures(
            scenario="4 listener connection terminated",
            time_to_recover_s=round(reconnect_s, 3),
            lost=0,
            overlaps=0,
            duplicate_effects=0,
            details={
                "measure": "terminate -> new LISTEN backend",
                "first_action_start_s": round(first, 3),
                "wakeup_ms_before_median": round(statistics.median(baseline) * 1000, 1),
                "wakeup_ms_after_median": round(statistics.median(after) * 1000, 1),
                "wakeup_ms_after_max": round(max(after) * 1000, 1),
                "scan_interval_s": SCAN_INTERVAL,
                "lease_kept": same_epoch,
            },
        )
    )

    assert again["pid"] != backend["pid"]
    assert first < SCAN_INTERVAL + 0.5, first
    # Well inside the 2 s scan interval: these are NOTIFY wake-ups again.
    assert max(after) < 0.5, after
    assert same_epoch, "terminating the listener must not cost the lease"
    assert w.running, w.describe()

    # `measured` returns when the last handler started; its result is written just after.
    async def all_succeeded() -> bool:
        return await statuses(pool) == {"succeeded": 3 + 1 + 5}

    await until(all_succeeded, what="nine actions succeeded", alive=[w], timeout=5)
    w.send(signal.SIGTERM)
    assert await w.wait(10) == 0, w.describe()


async def _has_event(names: list[str], name: str) -> bool:
    return name in names


# --- 5. PostgreSQL restarted, fast and immediate ----------------------------------------


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_5_postgres_restart_one_holder_again_and_nothing_stranded_or_lost(
    mode: str,
    fault_cluster: FaultCluster,
    make_fleet: MakeFleet,
    faults_pool: asyncpg.Pool[Any],
    journal_dir: Path,
    record: Record,
) -> None:
    pool = faults_pool
    fleet = make_fleet(size=2, restart=True)  # restarts whatever exits (none should)
    await fleet.start()

    async def pair() -> bool:
        return await soft(lambda: lease_locks(pool)) == (1, 1)

    await until(pair, what="a holder and a standby", timeout=15)
    before = await lease(pool)
    assert before is not None
    ids = [
        int(await enqueue(pool, "RECORD", {"ms": 1000}, idempotency_key=f"r5-{i}"))
        for i in range(6)
    ]

    async def running() -> bool:
        return bool(await pool.fetchval("SELECT count(*) FROM aol.actions WHERE status='running'"))

    await until(running, what="actions in flight", timeout=10)
    down = await fault_cluster.restart_async(mode)
    since = await db_now(pool)  # the database clock once it answers again
    ids += [
        int(await enqueue(pool, "RECORD", {"ms": 50}, idempotency_key=f"r5-after-{i}"))
        for i in range(3)
    ]

    async def new_epoch() -> asyncpg.Record | None:
        row = await lease(pool)
        if row is None or row["epoch"] <= before["epoch"] or row["released_at"] is not None:
            return None
        return row if fleet.by_pid(pid_of_owner(row["owner"])) else None

    took = await until(new_epoch, what="a new lease epoch", timeout=30)
    to_epoch_s = time.monotonic() - down.back
    completion = await next_completion(pool, since, timeout=30)
    assert completion is not None, "no action completed within 30 s of the restart"
    assert completion.seconds is not None  # three were enqueued after the restart

    async def settled() -> dict[str, int] | None:
        counts = await soft(lambda: statuses(pool))
        return counts if counts == {"succeeded": len(ids)} else None

    final = await until(settled, what="every action succeeded", timeout=LEASE_TTL + CLAIM_TTL + 20)
    await until(pair, what="a holder and a standby again", timeout=10)
    holder = await fleet.holder(pool)
    await fleet.stop()

    attempts = read_journal(journal_dir)
    history = check_history(attempts, {d.pid: d.at for d in fleet.deaths})
    epochs = int(took["epoch"] - before["epoch"])
    record(
        Figures(
            scenario=f"5 PostgreSQL restart ({mode})",
            time_to_recover_s=round(to_epoch_s, 3),
            lost=len(ids) - final.get("succeeded", 0),
            overlaps=len(history.overlaps),
            duplicate_effects=history.reexecutions,
            details={
                "measure": "database back -> new lease epoch held by a live worker",
                "downtime_s": round(down.seconds_down, 3),
                "back_to_next_completion_s": round(completion.seconds, 3),
                "epochs_advanced": epochs,
                "worker_exits": len(fleet.unexpected_exits()),
                "cut_short_attempts": sum(1 for a in attempts if a.how == "cancelled"),
            },
        )
    )

    assert holder is not None, "a live worker holds the lease"
    assert to_epoch_s < LEASE_TTL + 2, to_epoch_s
    assert not history.overlaps, history.overlaps
    assert not history.unaccounted, history.unaccounted
    # --standby workers ride out the restart by themselves: nobody had to restart them.
    assert fleet.unexpected_exits() == [], fleet.describe()
