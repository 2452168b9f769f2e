"""The lease between real `aol run` processes: refusal, standby takeover, loss.

Every test starts real worker processes against a fresh database and proves what happened
from the database (the lease row, pg_locks, actions, and the `test_effects` rows the SLOW
handler writes with its own pid), never from timing alone.
"""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from aol import enqueue
from tests.process.proc import (
    CLAIM_TTL,
    LEASE_TTL,
    Procs,
    action_events,
    action_row,
    action_status_is,
    create_effects_table,
    effects,
    lease_locks,
    lease_owner_is,
    lease_row,
    open_procs,
    until,
)

TAKEOVER_LIMIT_S = 5.0


@pytest.fixture
async def procs(db_url: str, tmp_path: Path) -> AsyncIterator[Procs]:
    async with open_procs(db_url, tmp_path) as p:
        yield p


async def slow(pool: asyncpg.Pool[Any], key: str, seconds: float = 0.0) -> int:
    return int(await enqueue(pool, "SLOW", {"seconds": seconds}, idempotency_key=key))


@pytest.mark.process
async def test_second_worker_exits_3_naming_the_holder(
    procs: Procs, pool: asyncpg.Pool[Any]
) -> None:
    await create_effects_table(pool)
    first = await procs.worker(name="first")
    held = await until(
        lambda: lease_owner_is(pool, first.owner), what="the first worker's lease", alive=[first]
    )
    assert held["epoch"] == 1

    # Work is waiting while the second worker starts: it must not touch any of it.
    ids = [await slow(pool, f"k{i}", seconds=0.3) for i in range(3)]
    second = await procs.worker(name="second")
    code = await second.wait(10)

    assert code == 3, second.describe()
    err = second.stderr()
    assert f"owner={first.owner} epoch={held['epoch']}" in err, err
    assert "--standby" in err, err
    assert "lease_acquired" not in second.event_names(), second.describe()

    async def all_done() -> bool:
        n = await pool.fetchval(
            "SELECT count(*) FROM aol.actions WHERE id = ANY($1::bigint[]) "
            "AND status = 'succeeded'",
            ids,
        )
        return bool(n == len(ids))

    await until(all_done, what="the first worker to finish every action", alive=[first])
    rows = await effects(pool)
    assert sorted(r["action_id"] for r in rows) == sorted(ids)
    assert {r["pid"] for r in rows} == {first.pid}
    claimed_by = await pool.fetch("SELECT DISTINCT claimed_by, claim_epoch FROM aol.actions")
    assert [(r["claimed_by"], r["claim_epoch"]) for r in claimed_by] == [(first.owner, 1)]
    ledger_owners = await pool.fetch("SELECT DISTINCT owner, epoch FROM aol.tick_ledger")
    assert [(r["owner"], r["epoch"]) for r in ledger_owners] == [(first.owner, 1)]
    after = await lease_row(pool)
    assert (after["owner"], after["epoch"], after["released_at"]) == (first.owner, 1, None)

    first.send(signal.SIGTERM)
    assert await first.wait(10) == 0, first.describe()


@pytest.mark.process
async def test_second_worker_with_ticks_also_exits_3(procs: Procs, pool: asyncpg.Pool[Any]) -> None:
    first = await procs.worker(name="first")
    await until(lambda: lease_owner_is(pool, first.owner), what="first lease", alive=[first])
    second = await procs.worker("--ticks", "1", name="second")
    assert await second.wait(10) == 3, second.describe()
    assert first.owner in second.stderr()
    assert (await lease_row(pool))["epoch"] == 1
    assert (
        await pool.fetchval("SELECT count(*) FROM aol.tick_ledger WHERE owner <> $1", first.owner)
        == 0
    )


@pytest.mark.process
async def test_standby_waits_then_takes_over_promptly_after_sigterm(
    procs: Procs, pool: asyncpg.Pool[Any]
) -> None:
    await create_effects_table(pool)
    active = await procs.worker(name="active")
    await until(lambda: lease_owner_is(pool, active.owner), what="active lease", alive=[active])
    standby = await procs.worker("--standby", name="standby")

    async def standby_blocked() -> bool:
        return await lease_locks(pool) == (1, 1)

    await until(standby_blocked, what="the standby to wait on the lock", alive=[active, standby])

    # While the standby waits, work is done by the active worker only.
    before = await slow(pool, "before", seconds=0.2)
    await until(
        lambda: action_status_is(pool, before, "succeeded"),
        what="action run by the active worker",
        alive=[active, standby],
    )
    assert [r["pid"] for r in await effects(pool, before)] == [active.pid]
    assert (await lease_row(pool))["epoch"] == 1
    assert "lease_acquired" not in standby.event_names(), standby.describe()

    t0 = time.monotonic()
    active.send(signal.SIGTERM)
    took = await until(
        lambda: lease_owner_is(pool, standby.owner),
        what="the standby to take the lease",
        timeout=TAKEOVER_LIMIT_S + 5,
        alive=[standby],
    )
    takeover_s = time.monotonic() - t0
    print(f"standby takeover after SIGTERM: {takeover_s:.3f}s")  # noqa: T201
    assert takeover_s < TAKEOVER_LIMIT_S, takeover_s
    assert took["epoch"] == 2
    assert await active.wait(10) == 0, active.describe()

    after = await slow(pool, "after", seconds=0.2)
    await until(
        lambda: action_status_is(pool, after, "succeeded"),
        what="action run by the new holder",
        alive=[standby],
    )
    assert [r["pid"] for r in await effects(pool, after)] == [standby.pid]
    row = await action_row(pool, after)
    assert (row["claimed_by"], row["claim_epoch"]) == (standby.owner, 2)
    assert "lease_waiting" in standby.event_names()

    standby.send(signal.SIGTERM)
    assert await standby.wait(10) == 0, standby.describe()


@pytest.mark.process
async def test_waiting_standby_stops_on_sigterm(procs: Procs, pool: asyncpg.Pool[Any]) -> None:
    """A standby blocked on the lock must still honour SIGTERM, not hang until the holder
    exits (a service manager stopping the standby would otherwise have to SIGKILL it)."""
    active = await procs.worker(name="active")
    await until(lambda: lease_owner_is(pool, active.owner), what="active lease", alive=[active])
    standby = await procs.worker("--standby", name="standby")

    async def standby_blocked() -> bool:
        return await lease_locks(pool) == (1, 1)

    await until(standby_blocked, what="the standby to wait on the lock", alive=[active, standby])
    t0 = time.monotonic()
    standby.send(signal.SIGTERM)
    assert await standby.wait(5) == 0, standby.describe()
    print(f"waiting standby stopped after SIGTERM in {time.monotonic() - t0:.3f}s")  # noqa: T201

    # It never held the lease, and it left nothing waiting behind.
    assert await lease_locks(pool) == (1, 0)
    row = await lease_row(pool)
    assert (row["owner"], row["epoch"]) == (active.owner, 1)
    assert active.running
    active.send(signal.SIGTERM)
    assert await active.wait(10) == 0, active.describe()


@pytest.mark.process
async def test_worker_whose_lock_session_dies_exits_4(
    procs: Procs, pool: asyncpg.Pool[Any]
) -> None:
    """Killing the lock connection's backend loses the lease: the worker exits 4 at once,
    and the next worker takes the lease at a higher epoch."""
    worker = await procs.worker(name="worker")
    await until(lambda: lease_owner_is(pool, worker.owner), what="lease", alive=[worker])
    t0 = time.monotonic()
    terminated = await pool.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name = $1",
        f"aol-lease {worker.owner}",
    )
    assert terminated == 1
    assert await worker.wait(LEASE_TTL + 2) == 4, worker.describe()
    lost_s = time.monotonic() - t0
    print(f"lock session killed -> exit 4 in {lost_s:.3f}s")  # noqa: T201
    assert "lease_lost" in worker.event_names()

    nxt = await procs.worker("--ticks", "1", name="next")
    assert await nxt.wait(10) == 0, nxt.describe()
    row = await lease_row(pool)
    assert (row["owner"], row["epoch"]) == (nxt.owner, 2)
    assert row["released_at"] is not None


@pytest.mark.process
async def test_standby_holder_whose_lock_session_dies_takes_the_lease_again(
    procs: Procs, pool: asyncpg.Pool[Any]
) -> None:
    await create_effects_table(pool)
    worker = await procs.worker("--standby", name="worker")
    await until(lambda: lease_owner_is(pool, worker.owner), what="lease", alive=[worker])
    await pool.fetchval(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name = $1",
        f"aol-lease {worker.owner}",
    )

    async def reacquired() -> bool:
        row = await lease_row(pool)
        return bool(row["owner"] == worker.owner and row["epoch"] == 2)

    await until(reacquired, what="the standby to take the lease again", alive=[worker])
    action_id = await slow(pool, "after-loss", seconds=0.1)
    done = await until(
        lambda: action_status_is(pool, action_id, "succeeded"),
        what="the action under the new epoch",
        alive=[worker],
    )
    assert done["claim_epoch"] == 2
    assert "lease_lost" in worker.event_names()
    worker.send(signal.SIGTERM)
    assert await worker.wait(10) == 0, worker.describe()


@pytest.mark.process
async def test_frozen_holder_is_fenced_out_after_a_standby_takes_over(
    procs: Procs, pool: asyncpg.Pool[Any]
) -> None:
    """A holder frozen mid-action (SIGSTOP: a long pause, a partition) loses its lock
    session; the standby takes over at epoch 2, rescues the claim once it expires and runs
    it. When the frozen worker wakes, its late result for attempt 1 changes nothing and it
    exits 4."""
    await create_effects_table(pool)
    a = await procs.worker(name="A")
    await until(lambda: lease_owner_is(pool, a.owner), what="A's lease", alive=[a])
    b = await procs.worker("--standby", name="B")

    async def standby_blocked() -> bool:
        return await lease_locks(pool) == (1, 1)

    await until(standby_blocked, what="B to wait on the lock", alive=[a, b])
    action_id = int(
        await enqueue(
            pool, "SLOW", {"seconds": 30, "later_seconds": 0.1}, idempotency_key="frozen-1"
        )
    )

    async def attempt_started() -> bool:
        return len(await effects(pool, action_id)) == 1

    await until(attempt_started, what="attempt 1 to start in A", alive=[a, b])
    a.send(signal.SIGSTOP)
    await pool.fetchval(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name = $1",
        f"aol-lease {a.owner}",
    )
    await until(lambda: lease_owner_is(pool, b.owner), what="B to take over", alive=[b])
    done = await until(
        lambda: action_status_is(pool, action_id, "succeeded"),
        what="B to rescue and finish the action",
        timeout=CLAIM_TTL + 5,
        alive=[b],
    )
    assert (done["attempts"], done["claimed_by"], done["claim_epoch"]) == (2, b.owner, 2)

    a.send(signal.SIGCONT)
    assert await a.wait(10) == 4, a.describe()
    # A's late attempt-1 result was refused: the action is as B left it.
    after = await action_row(pool, action_id)
    assert (after["status"], after["attempts"], after["claim_epoch"]) == ("succeeded", 2, 2)
    assert after["updated_at"] == done["updated_at"]
    events = [(e["event"], e["attempt"], e["epoch"]) for e in await action_events(pool, action_id)]
    assert events == [("action_rescued", 1, 2), ("action_succeeded", 2, 2)], events
    assert "action_result_discarded" in a.event_names(), a.describe()
    rows = await effects(pool, action_id)
    assert [(r["attempt"], r["pid"]) for r in rows] == [(1, a.pid), (2, b.pid)]
    lease = await lease_row(pool)
    assert (lease["owner"], lease["epoch"], lease["released_at"]) == (b.owner, 2, None)
    b.send(signal.SIGTERM)
    assert await b.wait(10) == 0, b.describe()
