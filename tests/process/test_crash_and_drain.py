"""Real `aol` processes: a crash mid-action and its rescue, draining on SIGTERM, `--ticks`,
and the operator's command line (enqueue, pause, status, kill, dlq).

What ran, and in which process, is proven by the `test_effects` rows the SLOW handler
writes (tests/process/handlers.py) and by the actions, lease and ledger rows.
"""

from __future__ import annotations

import importlib.util
import json
import signal
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from aol import enqueue
from tests.process.proc import (
    CLAIM_TTL,
    SHUTDOWN_GRACE,
    Proc,
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
    open_procs,
    until,
)

POST = {"platform": "x", "content": "hello from a test", "audience": "public"}


@pytest.fixture
async def procs(db_url: str, tmp_path: Path) -> AsyncIterator[Procs]:
    async with open_procs(db_url, tmp_path) as p:
        yield p


async def started(pool: asyncpg.Pool[Any], action_id: int, attempts: int = 1) -> bool:
    return len(await effects(pool, action_id)) >= attempts


# --- a crash mid-action ------------------------------------------------------------------


@pytest.mark.process
async def test_sigkill_mid_action_is_rescued_and_completed_by_the_next_worker(
    procs: Procs, pool: asyncpg.Pool[Any]
) -> None:
    await create_effects_table(pool)
    a = await procs.worker(name="A")
    await until(lambda: lease_owner_is(pool, a.owner), what="A's lease", alive=[a])
    # Attempt 1 would sleep 30 s; attempt 2 (after the rescue) finishes at once.
    action_id = int(
        await enqueue(
            pool, "SLOW", {"seconds": 30, "later_seconds": 0.1}, idempotency_key="crash-1"
        )
    )
    await until(lambda: started(pool, action_id), what="attempt 1 to start in A", alive=[a])
    claim = await action_row(pool, action_id)
    assert (claim["status"], claim["attempts"], claim["claimed_by"]) == ("running", 1, a.owner)

    a.send(signal.SIGKILL)
    assert await a.wait(5) == -signal.SIGKILL
    killed_at = await db_clock(pool)  # A is reaped: nothing of it runs after this instant
    a_lease_expiry = (await lease_row(pool))["expires_at"]  # A renews no more
    t_kill = time.monotonic()

    async def lock_free() -> bool:
        return await lease_locks(pool) == (0, 0)

    # PostgreSQL ends A's sessions when their sockets close, and with them the lock.
    await until(lock_free, what="the crashed worker's lock to be released", timeout=5)
    b = await procs.worker(name="B")
    done = await until(
        lambda: action_status_is(pool, action_id, "succeeded"),
        what="B to rescue and finish the action",
        timeout=CLAIM_TTL + 8,
        alive=[b],
    )
    rescue_s = time.monotonic() - t_kill

    rows = await effects(pool, action_id)
    assert [(r["attempt"], r["pid"]) for r in rows] == [(1, a.pid), (2, b.pid)]
    first, second = rows
    assert first["finished_at"] is None  # attempt 1 died with A
    assert second["finished_at"] is not None
    assert second["started_at"] > killed_at  # no overlap: attempt 2 began after A was dead
    # ...and not before attempt 1's claim had expired (tick timeout + claim grace) or A's
    # lease had (a holder that cannot renew stops by its expiry, so its claims are orphans).
    assert second["started_at"] >= min(claim["claim_expires_at"], a_lease_expiry)
    assert claim["claim_expires_at"] - claim["claimed_at"] == timedelta(seconds=CLAIM_TTL)

    assert done["attempts"] == 2
    assert (done["claimed_by"], done["claim_epoch"]) == (b.owner, 2)
    events = [(e["event"], e["attempt"], e["epoch"]) for e in await action_events(pool, action_id)]
    assert events == [("action_rescued", 1, 2), ("action_succeeded", 2, 2)], events
    assert "action_rescued" in b.event_names()
    print(  # noqa: T201
        f"SIGKILL -> attempt 2 finished in {rescue_s:.3f}s; attempt 2 started "
        f"{(second['started_at'] - killed_at).total_seconds():.3f}s after the kill and "
        f"{(second['started_at'] - claim['claim_expires_at']).total_seconds():.3f}s after "
        "the claim expired"
    )

    b.send(signal.SIGTERM)
    assert await b.wait(10) == 0, b.describe()


# --- draining on SIGTERM -------------------------------------------------------------------


@pytest.mark.process
async def test_sigterm_lets_the_in_flight_action_finish_then_releases_the_lease(
    procs: Procs, pool: asyncpg.Pool[Any]
) -> None:
    await create_effects_table(pool)
    w = await procs.worker(name="worker")
    await until(lambda: lease_owner_is(pool, w.owner), what="lease", alive=[w])
    action_id = int(await enqueue(pool, "SLOW", {"seconds": 2}, idempotency_key="drain-1"))
    await until(lambda: started(pool, action_id), what="the action to start", alive=[w])

    t0 = time.monotonic()
    w.send(signal.SIGTERM)
    assert await w.wait(SHUTDOWN_GRACE + 2) == 0, w.describe()
    exit_s = time.monotonic() - t0
    assert exit_s < SHUTDOWN_GRACE, exit_s

    done = await action_row(pool, action_id)
    assert (done["status"], done["attempts"]) == ("succeeded", 1)
    [row] = await effects(pool, action_id)
    assert row["pid"] == w.pid
    assert row["finished_at"] is not None
    assert (row["finished_at"] - row["started_at"]).total_seconds() >= 2
    lease = await lease_row(pool)
    assert lease["owner"] == w.owner
    assert lease["released_at"] is not None
    assert lease["expires_at"] <= lease["db_now"]
    assert await lease_locks(pool) == (0, 0)
    names = w.event_names()
    assert names.index("worker_stopping") < names.index("action_succeeded")
    assert names.index("action_succeeded") < names.index("lease_released")

    # The lock is free: a new worker takes it at once.
    t1 = time.monotonic()
    nxt = await procs.worker("--ticks", "1", name="next")
    assert await nxt.wait(10) == 0, nxt.describe()
    assert time.monotonic() - t1 < 5
    assert (await lease_row(pool))["epoch"] == 2


@pytest.mark.process
async def test_sigterm_past_the_grace_cancels_and_records_a_failed_attempt(
    procs: Procs, pool: asyncpg.Pool[Any]
) -> None:
    await create_effects_table(pool)
    w = await procs.worker("--shutdown-grace", "0.5", name="worker")
    await until(lambda: lease_owner_is(pool, w.owner), what="lease", alive=[w])
    action_id = int(await enqueue(pool, "SLOW", {"seconds": 2.5}, idempotency_key="cut-1"))
    await until(lambda: started(pool, action_id), what="the action to start", alive=[w])

    t0 = time.monotonic()
    w.send(signal.SIGTERM)
    assert await w.wait(5) == 0, w.describe()
    assert time.monotonic() - t0 < 2.5  # it did not wait for the 2.5 s handler

    row = await action_row(pool, action_id)
    assert (row["status"], row["attempts"]) == ("retry", 1), dict(row)
    assert "worker stopped mid-attempt" in row["last_error"]
    [effect] = await effects(pool, action_id)
    assert effect["finished_at"] is None
    assert (await lease_row(pool))["released_at"] is not None
    assert await lease_locks(pool) == (0, 0)


# --- --ticks --------------------------------------------------------------------------------


@pytest.mark.process
async def test_ticks_on_an_empty_queue_returns_at_once(
    procs: Procs, pool: asyncpg.Pool[Any]
) -> None:
    t0 = time.monotonic()
    w = await procs.worker("--ticks", "2", name="ticks")
    assert await w.wait(10) == 0, w.describe()
    assert time.monotonic() - t0 < 5
    ledger = await pool.fetch("SELECT tick, outcome, claimed FROM aol.tick_ledger ORDER BY id")
    assert [(r["tick"], r["outcome"], r["claimed"]) for r in ledger] == [
        (1, "idle", 0),
        (2, "idle", 0),
    ]
    assert (await lease_row(pool))["released_at"] is not None


@pytest.mark.process
@pytest.mark.parametrize(
    "event_loop",
    [
        "asyncio",
        pytest.param(
            "uvloop",
            marks=pytest.mark.skipif(
                importlib.util.find_spec("uvloop") is None,
                reason="uvloop is not installed here (pip install 'aol[uvloop]')",
            ),
        ),
    ],
)
async def test_the_worker_runs_on_the_event_loop_asked_for(
    procs: Procs, pool: asyncpg.Pool[Any], event_loop: str
) -> None:
    """`--event-loop uvloop` runs the same worker on uvloop: it says so at start; it claims,
    runs and writes results and ledger rows as on asyncio; an isolated handler runs in its
    child process, and one that blocks its child is killed at the action timeout; and it
    exits 0 at its last tick. On either loop `aol run` has moved its start-up heap out of
    the collector's way."""
    posts = [
        int(await enqueue(pool, "POST_SOCIAL", POST, idempotency_key=f"loop-{i}", priority=1))
        for i in range(2)
    ]
    quick = int(await enqueue(pool, "NAP_ISOLATED", {"seconds": 0}, idempotency_key="nap-0"))
    stuck = int(
        await enqueue(
            pool, "NAP_ISOLATED", {"seconds": 60}, idempotency_key="nap-60", max_attempts=1
        )
    )
    w = await procs.worker(
        "--ticks",
        "2",
        "--batch-size",
        "2",
        "--action-timeout",
        "1",
        "--event-loop",
        event_loop,
        name=event_loop,
    )
    assert await w.wait(15) == 0, w.describe()
    starting = [e for e in w.events() if e.get("event") == "worker_starting"]
    assert [e["event_loop"] for e in starting] == [event_loop], w.describe()
    assert starting[0]["frozen_objects"] > 10_000, w.describe()  # the modules' objects
    rows = await pool.fetch("SELECT id, status, attempts, last_error FROM aol.actions")
    by_id = {r["id"]: r for r in rows}
    assert [(by_id[i]["status"], by_id[i]["attempts"]) for i in [*posts, quick]] == [
        ("succeeded", 1)
    ] * 3
    assert by_id[stuck]["status"] == "dead", w.describe()
    assert "timed out after 1s; its process" in by_id[stuck]["last_error"], by_id[stuck]
    logged = await pool.fetch(
        "SELECT action_id, message FROM aol.execution_logs WHERE event = 'action_succeeded'"
    )
    messages = {r["action_id"]: r["message"] for r in logged}
    assert sorted(messages) == sorted([*posts, quick])
    assert messages[quick].startswith("napped in pid ")
    assert messages[quick] != f"napped in pid {w.pid}"  # in a child, not the worker
    ledger = await pool.fetch("SELECT tick, claimed FROM aol.tick_ledger ORDER BY tick")
    assert [(r["tick"], r["claimed"]) for r in ledger] == [(1, 2), (2, 2)]


@pytest.mark.process
async def test_ticks_runs_a_queue_of_five_in_batches_of_three(
    procs: Procs, pool: asyncpg.Pool[Any]
) -> None:
    ids = [
        int(await enqueue(pool, "POST_SOCIAL", POST, idempotency_key=f"post-{i}")) for i in range(5)
    ]
    w = await procs.worker("--ticks", "2", "--batch-size", "3", name="ticks")
    assert await w.wait(10) == 0, w.describe()
    rows = await pool.fetch("SELECT id, status, attempts FROM aol.actions ORDER BY id")
    assert [(r["id"], r["status"], r["attempts"]) for r in rows] == [
        (i, "succeeded", 1) for i in ids
    ]
    ledger = await pool.fetch("SELECT tick, outcome, claimed, succeeded FROM aol.tick_ledger")
    assert sorted((r["tick"], r["outcome"], r["claimed"], r["succeeded"]) for r in ledger) == [
        (1, "ok", 3, 3),
        (2, "ok", 2, 2),
    ]
    # Proof mode (the default) wrote one artifact per post under AOL_DATA_DIR.
    refs = await pool.fetch(
        "SELECT artifact_ref FROM aol.execution_logs WHERE event = 'action_succeeded'"
    )
    assert len(refs) == 5
    for r in refs:
        path = Path(r["artifact_ref"])
        assert path.is_relative_to(procs.data_dir), path
        assert path.is_file()


# --- the command line ------------------------------------------------------------------------


def single_line(proc: Proc) -> str:
    lines = proc.stdout().strip().splitlines()
    assert len(lines) == 1, proc.describe()
    return lines[0]


@pytest.mark.process
async def test_cli_enqueue_is_idempotent_and_refuses_bad_payloads(
    procs: Procs, pool: asyncpg.Pool[Any]
) -> None:
    payload = json.dumps(POST)
    first = await procs.run("enqueue", "POST_SOCIAL", "--payload", payload, "--key", "k")
    assert first.returncode == 0, first.describe()
    action_id = int(single_line(first))
    again = await procs.run("enqueue", "POST_SOCIAL", "--payload", '{"other": 1}', "--key", "k")
    assert again.returncode == 0, again.describe()
    assert int(single_line(again)) == action_id
    row = await action_row(pool, action_id)
    assert (row["action_type"], row["payload"], row["status"]) == ("POST_SOCIAL", POST, "pending")

    not_object = await procs.run("enqueue", "POST_SOCIAL", "--payload", "[1]", "--key", "k2")
    assert not_object.returncode == 1, not_object.describe()
    assert "payload" in not_object.stderr(), not_object.describe()
    assert "object" in not_object.stderr(), not_object.describe()

    bad_json = await procs.run("enqueue", "POST_SOCIAL", "--payload", "{nope", "--key", "k3")
    assert bad_json.returncode == 2, bad_json.describe()  # a usage error
    assert "--payload" in bad_json.stderr(), bad_json.describe()
    assert "JSON" in bad_json.stderr(), bad_json.describe()

    assert await pool.fetchval("SELECT count(*) FROM aol.actions") == 1


async def status_json(procs: Procs) -> dict[str, Any]:
    proc = await procs.run("status", "--json")
    assert proc.returncode == 0, proc.describe()
    data: dict[str, Any] = json.loads(single_line(proc))
    return data


@pytest.mark.process
async def test_cli_pause_status_and_run_while_paused(procs: Procs, pool: asyncpg.Pool[Any]) -> None:
    action_id = int(await enqueue(pool, "POST_SOCIAL", POST, idempotency_key="p1"))
    paused = await procs.run("pause", "--reason", "maintenance window")
    assert paused.returncode == 0, paused.describe()
    data = await status_json(procs)
    assert data["flags"]["paused"] is True
    assert data["flags"]["reason"] == "maintenance window"
    assert data["counts"]["pending"] == 1

    w = await procs.worker("--ticks", "1", name="paused-run")
    assert await w.wait(10) == 0, w.describe()
    assert (await action_row(pool, action_id))["status"] == "pending"
    assert await pool.fetchval("SELECT outcome FROM aol.tick_ledger") == "paused"

    resumed = await procs.run("resume", "--reason", "done")
    assert resumed.returncode == 0, resumed.describe()
    w2 = await procs.worker("--ticks", "1", name="resumed-run")
    assert await w2.wait(10) == 0, w2.describe()
    assert (await action_row(pool, action_id))["status"] == "succeeded"
    data = await status_json(procs)
    assert data["flags"]["paused"] is False
    assert data["last_tick"]["outcome"] == "ok"
    assert data["lease"]["owner"] == w2.owner
    assert data["lease"]["held"] is False


@pytest.mark.process
async def test_cli_kill_stops_run_at_once_until_cleared(
    procs: Procs, pool: asyncpg.Pool[Any]
) -> None:
    action_id = int(await enqueue(pool, "POST_SOCIAL", POST, idempotency_key="k1"))
    killed = await procs.run("kill", "--reason", "runaway agent")
    assert killed.returncode == 0, killed.describe()
    assert "killed=True" in killed.stdout()

    t0 = time.monotonic()
    w = await procs.worker(name="killed-run")  # no --ticks: only the kill switch stops it
    assert await w.wait(10) == 0, w.describe()
    assert time.monotonic() - t0 < 5
    assert "worker_killed" in w.event_names()
    row = await action_row(pool, action_id)
    assert (row["status"], row["attempts"], row["claimed_by"]) == ("pending", 0, None)
    assert await pool.fetchval("SELECT outcome FROM aol.tick_ledger") == "killed"

    data = await status_json(procs)
    assert data["flags"]["killed"] is True
    assert data["flags"]["reason"] == "runaway agent"

    cleared = await procs.run("kill", "--clear", "--reason", "fixed")
    assert cleared.returncode == 0, cleared.describe()
    assert "killed=False" in cleared.stdout()
    w2 = await procs.worker("--ticks", "1", name="cleared-run")
    assert await w2.wait(10) == 0, w2.describe()
    assert (await action_row(pool, action_id))["status"] == "succeeded"


@pytest.mark.process
async def test_cli_dlq_list_and_retry(procs: Procs, pool: asyncpg.Pool[Any]) -> None:
    empty = await procs.run("dlq", "list")
    assert empty.returncode == 0, empty.describe()
    assert "no dead actions" in empty.stdout()

    bad = {**POST, "audience": "everyone"}  # accepted on enqueue, refused by the handler
    enq = await procs.run("enqueue", "POST_SOCIAL", "--payload", json.dumps(bad), "--key", "bad")
    assert enq.returncode == 0, enq.describe()
    dead_id = int(single_line(enq))
    ok_id = int(await enqueue(pool, "POST_SOCIAL", POST, idempotency_key="good"))

    w = await procs.worker("--ticks", "1", name="run")
    assert await w.wait(10) == 0, w.describe()
    assert (await action_row(pool, ok_id))["status"] == "succeeded"
    assert (await action_row(pool, dead_id))["status"] == "dead"

    listed = await procs.run("dlq", "list")
    assert listed.returncode == 0, listed.describe()
    line = single_line(listed)
    assert line.startswith(f"{dead_id}\tPOST_SOCIAL\tbad\tattempts 1/3\t"), line
    assert "audience" in line

    both = await procs.run("dlq", "retry", str(dead_id), "--all")
    assert both.returncode == 2, both.describe()

    retried = await procs.run("dlq", "retry", "--all", "--reason", "payload rules changed")
    assert retried.returncode == 0, retried.describe()
    assert single_line(retried) == f"retrying 1 action(s): {dead_id}"
    row = await action_row(pool, dead_id)
    assert (row["status"], row["attempts"], row["max_attempts"]) == ("retry", 1, 4)
    events = [e["event"] for e in await action_events(pool, dead_id)]
    assert events[-1] == "action_retried_by_operator"
    after = await procs.run("dlq", "list")
    assert "no dead actions" in after.stdout()


@pytest.mark.process
async def test_cli_kill_wakes_an_idle_worker_which_exits_0(
    procs: Procs, pool: asyncpg.Pool[Any]
) -> None:
    """The scan interval is 30 s, so only the flag change's NOTIFY can wake the worker."""
    w = await procs.worker(name="worker")

    async def idle_tick() -> bool:
        return bool(await pool.fetchval("SELECT count(*) FROM aol.tick_ledger") >= 1)

    await until(idle_tick, what="the worker's first (idle) tick", alive=[w])
    t0 = time.monotonic()
    killed = await procs.run("kill", "--reason", "stop everything")
    assert killed.returncode == 0, killed.describe()
    assert await w.wait(5) == 0, w.describe()
    print(f"aol kill -> idle worker exited in {time.monotonic() - t0:.3f}s")  # noqa: T201
    assert "worker_killed" in w.event_names()
    last = await pool.fetchrow("SELECT outcome FROM aol.tick_ledger ORDER BY id DESC LIMIT 1")
    assert last is not None
    assert last["outcome"] == "killed"
    assert (await lease_row(pool))["released_at"] is not None
