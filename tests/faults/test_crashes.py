"""Fault scenarios 1, 6 and 8: the holder is SIGKILLed mid-action, a poison action kills
every worker that runs it, and the holder is stopped with SIGTERM while work is in flight.

Real `aol run` processes against the fault suite's own PostgreSQL; what ran where is
proven by `test_effects` rows (the SLOW handler of tests/process/handlers.py, database
clock) or by the journal of tests/faults/handlers.py (CLOCK_MONOTONIC).
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from aol import enqueue
from tests.faults.harness import (
    CLAIM_TTL,
    LEASE_TTL,
    SHUTDOWN_GRACE,
    Fleet,
    check_history,
    read_journal,
    run_args,
    statuses,
)
from tests.faults.report import Figures
from tests.process.proc import (
    Procs,
    action_events,
    action_row,
    action_status_is,
    create_effects_table,
    db_clock,
    effects,
    lease_locks,
    lease_owner_is,
    lease_row,
    until,
)

pytestmark = pytest.mark.faults
Record = Callable[[Figures], None]
MakeFleet = Callable[..., Fleet]


async def started(pool: asyncpg.Pool[Any], action_id: int, attempts: int = 1) -> bool:
    return len(await effects(pool, action_id)) >= attempts


async def all_final(pool: asyncpg.Pool[Any], ids: list[int]) -> list[asyncpg.Record] | None:
    rows = await pool.fetch(
        "SELECT id, status, attempts, last_error FROM aol.actions WHERE id = ANY($1) ORDER BY id",
        ids,
    )
    if all(r["status"] in ("succeeded", "dead") for r in rows):
        return list(rows)
    return None


async def holder_and_standby(pool: asyncpg.Pool[Any]) -> bool:
    return await lease_locks(pool) == (1, 1)


# --- 1. SIGKILL of the holder mid-action ----------------------------------------------------


async def test_1_sigkill_of_the_holder_mid_action_reruns_once_without_overlap(
    procs: Procs, faults_pool: asyncpg.Pool[Any], record: Record
) -> None:
    pool = faults_pool
    await create_effects_table(pool)
    a = await procs.start(*run_args(), name="A")
    await until(lambda: lease_owner_is(pool, a.owner), what="A's lease", alive=[a])
    b = await procs.start(*run_args(), name="B")
    await until(lambda: holder_and_standby(pool), what="B waiting as standby", alive=[a, b])

    # Attempt 1 would take 30 s; attempt 2 finishes at once.
    slow_id = int(
        await enqueue(pool, "SLOW", {"seconds": 30, "later_seconds": 0.2}, idempotency_key="s1")
    )
    await until(lambda: started(pool, slow_id), what="attempt 1 to start in A", alive=[a, b])
    claim = await action_row(pool, slow_id)
    assert (claim["status"], claim["attempts"], claim["claimed_by"]) == ("running", 1, a.owner)

    kill_sent = await db_clock(pool)
    t_kill = time.monotonic()
    a.send(signal.SIGKILL)
    assert await a.wait(5) == -signal.SIGKILL
    killed_at = await db_clock(pool)  # A is reaped: nothing of it runs after this instant

    # Work enqueued while the holder is gone is not lost either.
    later = [
        int(await enqueue(pool, "SLOW", {"seconds": 0.05}, idempotency_key=f"s1-after-{i}"))
        for i in range(5)
    ]
    took_over = await until(
        lambda: lease_owner_is(pool, b.owner), what="B to take the lease", alive=[b], timeout=5
    )
    takeover_s = (took_over["acquired_at"] - kill_sent).total_seconds()
    done = await until(
        lambda: action_status_is(pool, slow_id, "succeeded", "dead"),
        what="B to rescue and finish the action",
        timeout=CLAIM_TTL + 8,
        alive=[b],
    )
    wall_s = time.monotonic() - t_kill
    finals = await until(lambda: all_final(pool, later), what="the later actions", alive=[b])

    rows = await effects(pool, slow_id)
    first, second = rows[0], rows[-1]
    rerun_s = (second["started_at"] - kill_sent).total_seconds()
    overlaps = sum(
        1
        for prev, nxt in itertools.pairwise(rows)
        if nxt["started_at"] <= (prev["finished_at"] or killed_at)
    )
    lost = sum(1 for r in [done, *finals] if r["status"] != "succeeded")
    record(
        Figures(
            scenario="1 SIGKILL of the holder mid-action",
            time_to_recover_s=round(rerun_s, 3),
            lost=lost,
            overlaps=overlaps,
            duplicate_effects=len(rows) - 1,
            details={
                "measure": "kill -> attempt 2 starts (database clock)",
                "takeover_s": round(takeover_s, 3),
                "attempt_2_finished_s": round(wall_s, 3),
                "lease_ttl_s": LEASE_TTL,
                "claim_ttl_s": CLAIM_TTL,
                "attempts": done["attempts"],
            },
        )
    )

    assert done["status"] == "succeeded", dict(done)
    assert done["attempts"] == 2, dict(done)
    assert [(r["attempt"], r["pid"]) for r in rows] == [(1, a.pid), (2, b.pid)]
    assert first["finished_at"] is None  # attempt 1 died with A
    assert second["finished_at"] is not None
    # No overlap: attempt 2 began after A was dead, and not before A's lease (or, failing
    # that, its claim) had expired.
    assert second["started_at"] > killed_at
    lease = await lease_row(pool)
    assert lease["epoch"] == 2
    assert second["started_at"] >= min(claim["claim_expires_at"], lease["previous_expires_at"])
    # The standby takes over at once; the action re-runs within the lease TTL (plus the
    # wake-up slack of a tick).
    assert takeover_s < 1.0, takeover_s
    assert rerun_s <= LEASE_TTL + 0.5, rerun_s
    events = [(e["event"], e["attempt"], e["epoch"]) for e in await action_events(pool, slow_id)]
    assert events == [("action_rescued", 1, 2), ("action_succeeded", 2, 2)], events
    assert lost == 0
    assert overlaps == 0

    b.send(signal.SIGTERM)
    assert await b.wait(10) == 0, b.describe()


# --- 6. A poison action that kills every worker that runs it ---------------------------


async def poison_with_companions(
    pool: asyncpg.Pool[Any], *, companion_attempts: int
) -> tuple[int, list[int]]:
    """The poison and two other actions in one transaction, so the three share a batch."""
    async with pool.acquire() as conn, conn.transaction():
        poison = int(await enqueue(conn, "CRASH", {}, idempotency_key="poison", max_attempts=3))
        companions = [
            int(
                await enqueue(
                    conn,
                    "RECORD",
                    {"ms": 50},
                    idempotency_key=f"companion-{i}",
                    max_attempts=companion_attempts,
                )
            )
            for i in range(2)
        ]
    return poison, companions


async def test_6_poison_action_is_dead_lettered_while_other_actions_keep_succeeding(
    make_fleet: MakeFleet, faults_pool: asyncpg.Pool[Any], journal_dir: Path, record: Record
) -> None:
    """The poison ends dead after max_attempts (3) crashes; the daemon, restarted by the
    test each time, keeps serving. Other actions get 10 attempts, so those that share the
    poison's batches (its two companions, and any arrival that happens to) survive the
    three crashes; test_6b shows what happens with the default 3 (a bug)."""
    pool = faults_pool
    fleet = make_fleet(size=2, restart=True)  # the test is the supervisor
    await fleet.start()
    await until(lambda: holder_and_standby(pool), what="a holder and a standby", timeout=15)

    t0 = time.monotonic()
    poison, companions = await poison_with_companions(pool, companion_attempts=10)
    good = list(companions)

    async def feed() -> None:
        # Other work keeps arriving the whole time, 5 a second.
        i = 0
        while True:
            i += 1
            key = f"good-{i}"
            good.append(
                int(await enqueue(pool, "RECORD", {"ms": 50}, idempotency_key=key, max_attempts=10))
            )
            await asyncio.sleep(0.2)

    feeder = asyncio.create_task(feed())
    try:
        dead = await until(
            lambda: action_status_is(pool, poison, "dead", "succeeded"),
            what="the poison action to be dead-lettered",
            timeout=3 * (LEASE_TTL + CLAIM_TTL) + 15,
        )
        t_dead = time.monotonic() - t0
    finally:
        feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)
    # Three more after it is dead: service goes on as normal.
    for i in range(3):
        good.append(int(await enqueue(pool, "RECORD", {"ms": 50}, idempotency_key=f"after-{i}")))
    finals = await until(lambda: all_final(pool, good), what="every good action", timeout=30)
    await until(lambda: holder_and_standby(pool), what="a holder and a standby", timeout=15)
    await fleet.stop()

    deaths = {d.pid: d.at for d in fleet.deaths}
    attempts = read_journal(journal_dir)
    history = check_history([x for x in attempts if x.action_id != poison], deaths)
    crashes = [d for d in fleet.deaths if d.returncode == -signal.SIGKILL]
    poison_runs = [x for x in attempts if x.action_id == poison]
    # Service gaps: from each crash to the next good attempt that completed.
    gaps = []
    for d in crashes:
        after = [x.end for x in attempts if x.how == "ok" and x.end is not None and x.end > d.at]
        if after:
            gaps.append(min(after) - d.at)
    lost = sum(1 for r in finals if r["status"] != "succeeded")
    record(
        Figures(
            scenario="6 poison action crashing the worker",
            time_to_recover_s=round(max(gaps), 3) if gaps else None,
            lost=lost,
            overlaps=len(history.overlaps),
            duplicate_effects=history.reexecutions,
            details={
                "measure": "worst worker crash -> next other action completes",
                "poison_attempts": dead["attempts"],
                "poison_status": dead["status"],
                "worker_crashes": len(crashes),
                "poison_dead_after_s": round(t_dead, 3),
                "other_actions": len(good),
                "other_actions_claimed_more_than_once": sum(1 for r in finals if r["attempts"] > 1),
                "companions_attempts": [r["attempts"] for r in finals if r["id"] in companions],
            },
        )
    )

    assert dead["status"] == "dead", dict(dead)
    assert dead["attempts"] == 3, dict(dead)
    assert "expired" in (dead["last_error"] or ""), dead["last_error"]
    assert len(poison_runs) == 3, poison_runs  # each claim ran the handler once...
    assert len(crashes) == 3, fleet.deaths  # ...and each run took its worker down
    assert [d for d in fleet.unexpected_exits() if d.returncode != -signal.SIGKILL] == []
    assert len(gaps) == 3
    assert max(gaps) < LEASE_TTL + 1, gaps  # the standby served at once, every time
    assert not history.overlaps, history.overlaps
    assert not history.unaccounted, history.unaccounted
    assert lost == 0, [dict(r) for r in finals if r["status"] != "succeeded"]


async def test_6b_a_poison_actions_batch_mates_are_not_dead_lettered_with_it(
    make_fleet: MakeFleet, faults_pool: asyncpg.Pool[Any], record: Record
) -> None:
    """Default max_attempts (3) everywhere: the poison's two batch-mates must still succeed."""
    pool = faults_pool
    fleet = make_fleet(size=2, restart=True)
    await fleet.start()
    await until(lambda: holder_and_standby(pool), what="a holder and a standby", timeout=15)
    poison, companions = await poison_with_companions(pool, companion_attempts=3)
    finals = await until(
        lambda: all_final(pool, [poison, *companions]),
        what="the poison and its batch-mates to be final",
        timeout=3 * (LEASE_TTL + CLAIM_TTL) + 15,
    )
    await fleet.stop()
    by_id = {r["id"]: r for r in finals}
    lost = sum(1 for i in companions if by_id[i]["status"] != "succeeded")
    record(
        Figures(
            scenario="6b batch-mates of a poison action",
            time_to_recover_s=None,
            lost=lost,
            overlaps=0,
            duplicate_effects=0,
            details={
                "poison_status": by_id[poison]["status"],
                "companions": ",".join(
                    f"{by_id[i]['status']}/{by_id[i]['attempts']}" for i in companions
                ),
            },
        )
    )
    assert by_id[poison]["status"] == "dead"
    assert [by_id[i]["status"] for i in companions] == ["succeeded", "succeeded"], [
        dict(by_id[i]) for i in companions
    ]


# --- 8. SIGTERM with work in flight ---------------------------------------------------------


async def test_8_sigterm_drains_in_flight_work_and_the_standby_takes_over_within_2s(
    procs: Procs, faults_pool: asyncpg.Pool[Any], record: Record
) -> None:
    pool = faults_pool
    await create_effects_table(pool)
    a = await procs.start(*run_args(), name="A")
    await until(lambda: lease_owner_is(pool, a.owner), what="A's lease", alive=[a])
    b = await procs.start(*run_args(), name="B")
    await until(lambda: holder_and_standby(pool), what="B waiting as standby", alive=[a, b])

    in_flight = [
        int(await enqueue(pool, "SLOW", {"seconds": 1.5}, idempotency_key=f"s8-{i}"))
        for i in range(3)  # the batch size: all three run at once
    ]

    async def all_started() -> bool:
        return all([await started(pool, i) for i in in_flight])

    await until(all_started, what="three actions in flight in A", alive=[a, b])
    a.send(signal.SIGTERM)
    t_term = time.monotonic()
    # Work that arrives after the signal: A must not claim it; B runs it.
    after = [
        int(await enqueue(pool, "SLOW", {"seconds": 0.05}, idempotency_key=f"s8-after-{i}"))
        for i in range(2)
    ]
    assert await a.wait(SHUTDOWN_GRACE + 2) == 0, a.describe()
    exit_s = time.monotonic() - t_term
    took_over = await until(
        lambda: lease_owner_is(pool, b.owner), what="B to take the lease", alive=[b], timeout=5
    )
    takeover_wall_s = time.monotonic() - t_term
    finals = await until(lambda: all_final(pool, in_flight + after), what="all actions")
    # A released the row on its way out (expires_at = release time), which the new holder
    # keeps as previous_expires_at.
    takeover_s = (took_over["acquired_at"] - took_over["previous_expires_at"]).total_seconds()

    rows = {i: await effects(pool, i) for i in in_flight + after}
    reruns = sum(len(r) - 1 for r in rows.values())
    lost = sum(1 for r in finals if r["status"] != "succeeded")
    record(
        Figures(
            scenario="8 SIGTERM with work in flight",
            time_to_recover_s=round(takeover_s, 3),
            lost=lost,
            overlaps=0,
            duplicate_effects=reruns,
            details={
                "measure": "lease released -> standby holds it (database clock)",
                "sigterm_to_exit_s": round(exit_s, 3),
                "sigterm_to_standby_holding_s": round(takeover_wall_s, 3),
                "in_flight": len(in_flight),
            },
        )
    )

    for i in in_flight:
        [effect] = rows[i]
        assert (effect["pid"], effect["attempt"]) == (a.pid, 1)
        assert effect["finished_at"] is not None  # finished, not cut short
    for i in after:
        assert [(e["pid"], e["attempt"]) for e in rows[i]] == [(b.pid, 1)]
    assert [(r["status"], r["attempts"]) for r in finals] == [("succeeded", 1)] * len(finals)
    names = a.event_names()
    assert "lease_released" in names, a.describe()
    assert names.index("worker_stopping") < names.index("lease_released")
    assert took_over["epoch"] == 2
    assert takeover_s < 2.0, takeover_s
    assert exit_s < SHUTDOWN_GRACE, exit_s
    assert await statuses(pool) == {"succeeded": len(finals)}

    b.send(signal.SIGTERM)
    assert await b.wait(10) == 0, b.describe()
