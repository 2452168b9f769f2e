"""Claiming, fenced result writes and rescue, straight against the SQL in queries.sql."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import asyncpg
import pytest

from aol.db import store
from aol.db.connect import create_pool
from aol.model import ActionId, Epoch
from tests.factory import insert_action

OWNER = "o"
CLAIMERS = 16
ACTIONS = 500
LIMIT = 7


async def set_lease(
    db: asyncpg.Pool[Any], *, owner: str = OWNER, epoch: int = 1, previous_expires: str = "NULL"
) -> None:
    await db.execute(
        "UPDATE aol.lease SET owner = $1, epoch = $2, "
        f"previous_expires_at = {previous_expires} WHERE id = 1",
        owner,
        epoch,
    )


async def claim(db: store.Executor, *, epoch: int = 1, limit: int = LIMIT) -> list[int]:
    got = await store.claim(db, owner=OWNER, epoch=Epoch(epoch), limit=limit, claim_ttl=30)
    return [a.id for a in got.actions]


async def row(db: asyncpg.Pool[Any], action_id: int) -> dict[str, Any]:
    found = await db.fetchrow("SELECT * FROM aol.actions WHERE id = $1", action_id)
    assert found is not None
    return dict(found)


async def log_events(db: asyncpg.Pool[Any]) -> list[tuple[int | None, str]]:
    rows = await db.fetch("SELECT action_id, event FROM aol.execution_logs ORDER BY id")
    return [(r["action_id"], r["event"]) for r in rows]


async def test_concurrent_claimers_never_claim_an_action_twice(db_url: str) -> None:
    claimers = await create_pool(
        db_url, min_size=CLAIMERS, max_size=CLAIMERS, application_name="aol-test-claimer"
    )
    try:
        await set_lease(claimers)
        await claimers.execute(
            "INSERT INTO aol.actions (idempotency_key, action_type) "
            "SELECT 'bulk-' || g, 'T' FROM generate_series(1, $1::int) g",
            ACTIONS,
        )
        ready, go = asyncio.Event(), asyncio.Event()
        holding: list[object] = []
        batch_sizes: list[int] = []

        async def claimer() -> list[int]:
            got: list[int] = []
            async with claimers.acquire() as conn:
                holding.append(conn)
                if len(holding) == CLAIMERS:
                    ready.set()
                await go.wait()
                while batch := await claim(conn):
                    assert len(batch) <= LIMIT
                    batch_sizes.append(len(batch))
                    got.extend(batch)
            return got

        tasks = [asyncio.create_task(claimer()) for _ in range(CLAIMERS)]
        await asyncio.wait_for(ready.wait(), timeout=10)  # each on its own connection
        go.set()
        per_claimer = await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)

        every = [i for got in per_claimer for i in got]
        duplicates = [i for i, n in Counter(every).items() if n > 1]
        assert duplicates == []
        assert len(every) == len(set(every)) == ACTIONS
        assert sum(batch_sizes) == ACTIONS
        assert sum(1 for got in per_claimer if got) > 1  # the claimers really did overlap
        by_state = await claimers.fetch(
            "SELECT status, attempts, claimed_by, claim_epoch, count(*) AS n FROM aol.actions "
            "GROUP BY 1, 2, 3, 4"
        )
        assert [dict(r) for r in by_state] == [
            {
                "status": "running",
                "attempts": 1,
                "claimed_by": OWNER,
                "claim_epoch": 1,
                "n": ACTIONS,
            }
        ]
        ids = {r["id"] for r in await claimers.fetch("SELECT id FROM aol.actions")}
        assert set(every) == ids
    finally:
        await asyncio.wait_for(claimers.close(), timeout=10)


async def test_a_claimer_with_a_stale_epoch_claims_nothing(pool: asyncpg.Pool[Any]) -> None:
    await set_lease(pool, epoch=2)
    action_id = await insert_action(pool)

    assert await claim(pool, epoch=1) == []
    other_owner = await store.claim(
        pool, owner="someone-else", epoch=Epoch(2), limit=5, claim_ttl=30
    )
    assert other_owner.actions == []

    untouched = await row(pool, action_id)
    assert (untouched["status"], untouched["attempts"], untouched["claim_epoch"]) == (
        "pending",
        0,
        None,
    )
    assert await claim(pool, epoch=2) == [action_id]  # the current holder does claim it


@pytest.mark.parametrize(
    ("change", "seen"),
    [
        pytest.param({"paused": True}, (True, False), id="paused"),
        pytest.param({"killed": True}, (False, True), id="killed"),
    ],
)
async def test_a_paused_or_killed_claim_takes_nothing_and_says_why(
    pool: asyncpg.Pool[Any], change: dict[str, bool], seen: tuple[bool, bool]
) -> None:
    await set_lease(pool, epoch=1)
    action_id = await insert_action(pool)
    await store.set_flags(pool, reason="test", **change)

    got = await store.claim(pool, owner=OWNER, epoch=Epoch(1), limit=5, claim_ttl=30)

    assert (got.paused, got.killed, got.actions) == (*seen, [])
    assert (await row(pool, action_id))["status"] == "pending"
    await store.set_flags(pool, reason="test", paused=False, killed=False)
    got = await store.claim(pool, owner=OWNER, epoch=Epoch(1), limit=5, claim_ttl=30)
    assert [a.id for a in got.actions] == [action_id]


async def test_the_claim_carries_the_proof_flag_it_was_made_under(
    pool: asyncpg.Pool[Any],
) -> None:
    await set_lease(pool, epoch=1)
    await insert_action(pool)
    await insert_action(pool)
    await store.set_flags(pool, reason="test", proof_mode=False)

    got = await store.claim(pool, owner=OWNER, epoch=Epoch(1), limit=5, claim_ttl=30)

    assert (got.proof_mode, got.paused, got.killed, len(got.actions)) == (False, False, False, 2)
    await store.set_flags(pool, reason="test", proof_mode=True)
    empty = await store.claim(pool, owner=OWNER, epoch=Epoch(1), limit=5, claim_ttl=30)
    assert (empty.proof_mode, empty.actions) == (True, [])


async def test_higher_priority_is_claimed_first_and_future_actions_wait(
    pool: asyncpg.Pool[Any],
) -> None:
    await set_lease(pool)
    low = await insert_action(pool, priority=-1)
    normal_later = await insert_action(
        pool, priority=0, sql_not_before="now() - interval '1 minute'"
    )
    normal_earlier = await insert_action(
        pool, priority=0, sql_not_before="now() - interval '1 hour'"
    )
    high = await insert_action(pool, priority=10)
    future = await insert_action(pool, priority=100, sql_not_before="now() + interval '1 hour'")
    medium = await insert_action(pool, priority=5)

    assert await claim(pool, limit=2) == [high, medium]
    assert await claim(pool, limit=2) == [normal_earlier, normal_later]
    assert await claim(pool, limit=10) == [low]
    assert await claim(pool, limit=10) == []

    waiting = await row(pool, future)
    assert (waiting["status"], waiting["attempts"]) == ("pending", 0)


async def test_running_succeeded_and_dead_actions_are_not_claimed(
    pool: asyncpg.Pool[Any],
) -> None:
    await set_lease(pool)
    for status in ("succeeded", "dead", "cancelled"):
        await insert_action(pool, status=status)
    await insert_action(
        pool, status="running", claim_epoch=1, sql_claim_expires_at="now() + interval '1 hour'"
    )
    retry = await insert_action(pool, status="retry", attempts=1)

    assert await claim(pool, limit=10) == [retry]
    assert (await row(pool, retry))["attempts"] == 2


@pytest.mark.parametrize(
    ("write_epoch", "write_attempt", "lease_epoch"),
    [
        pytest.param(2, 1, 1, id="epoch-not-the-claims"),
        pytest.param(1, 2, 1, id="wrong-attempt"),
        pytest.param(1, 1, 2, id="lease-moved-on"),
    ],
)
async def test_fenced_writes_with_a_stale_claim_change_nothing(
    pool: asyncpg.Pool[Any], write_epoch: int, write_attempt: int, lease_epoch: int
) -> None:
    await set_lease(pool)
    action_id = await insert_action(pool)
    assert await claim(pool) == [action_id]
    before = await row(pool, action_id)
    await set_lease(pool, epoch=lease_epoch)

    common: dict[str, Any] = {
        "action_id": ActionId(action_id),
        "epoch": Epoch(write_epoch),
        "attempt": write_attempt,
        "tick": 1,
        "duration_ms": 1.0,
    }
    assert not await store.finish_action(
        pool, **common, message="late", artifact_ref=None, artifact_sha256=None
    )
    assert not await store.schedule_retry(pool, **common, delay=0.1, error="late")
    assert not await store.dead_letter_action(pool, **common, error="late")

    assert await row(pool, action_id) == before
    assert await log_events(pool) == []


async def test_fenced_write_by_the_current_claim_is_stored_once(pool: asyncpg.Pool[Any]) -> None:
    await set_lease(pool)
    action_id = await insert_action(pool)
    assert await claim(pool) == [action_id]
    common: dict[str, Any] = {
        "action_id": ActionId(action_id),
        "epoch": Epoch(1),
        "attempt": 1,
        "tick": 1,
        "duration_ms": 1.0,
    }

    assert await store.finish_action(
        pool, **common, message="done", artifact_ref=None, artifact_sha256=None
    )
    # The row is no longer running: a second result for the same attempt is refused.
    assert not await store.finish_action(
        pool, **common, message="again", artifact_ref=None, artifact_sha256=None
    )
    assert not await store.schedule_retry(pool, **common, delay=0.1, error="late")

    done = await row(pool, action_id)
    assert (done["status"], done["attempts"], done["last_error"]) == ("succeeded", 1, None)
    assert done["finished_at"] is not None
    assert await log_events(pool) == [(action_id, "action_succeeded")]


async def test_a_batch_of_successes_at_different_attempts_is_fenced_attempt_by_attempt(
    pool: asyncpg.Pool[Any],
) -> None:
    """When a tick's successes are at different attempts, each row is checked against its
    own attempt (looked up in the array), and a stale attempt among them is refused alone."""
    await set_lease(pool)
    first = await insert_action(pool)
    second = await insert_action(pool, status="retry", attempts=1)
    third = await insert_action(pool, status="retry", attempts=2)
    assert sorted(await claim(pool)) == [first, second, third]  # attempts 1, 2 and 3 now

    written = await store.finish_actions(
        pool,
        epoch=Epoch(1),
        tick=1,
        action_ids=[ActionId(first), ActionId(second), ActionId(third)],
        attempts=[1, 2, 2],  # the third's result names an attempt that is not its claim's
        durations_ms=[1.0, 2.0, 3.0],
        messages=["a", None, "c"],
        artifact_refs=[None, None, None],
        artifact_sha256s=[None, None, None],
    )
    assert written == {first, second}
    rows = [await row(pool, i) for i in (first, second)]
    assert [(r["status"], r["attempts"]) for r in rows] == [("succeeded", 1), ("succeeded", 2)]
    assert (await row(pool, third))["status"] == "running"
    logged = await pool.fetch(
        "SELECT action_id, attempt, message, duration_ms FROM aol.execution_logs ORDER BY action_id"
    )
    assert [tuple(r) for r in logged] == [(first, 1, "a", 1.0), (second, 2, None, 2.0)]


async def test_rescue_moves_expired_claims_to_retry_or_dead_and_leaves_live_ones(
    pool: asyncpg.Pool[Any],
) -> None:
    # The previous holder's lease is still valid: only each claim's own expiry counts.
    await set_lease(pool, epoch=2, previous_expires="now() + interval '1 hour'")
    claim_cols: dict[str, Any] = {"status": "running", "claim_epoch": 1, "claimed_by": "old"}
    expired = "now() - interval '1 second'"
    live = "now() + interval '1 hour'"
    to_retry = await insert_action(
        pool, **claim_cols, attempts=1, max_attempts=3, sql_claim_expires_at=expired
    )
    to_dead = await insert_action(
        pool, **claim_cols, attempts=3, max_attempts=3, sql_claim_expires_at=expired
    )
    still_live = await insert_action(
        pool, **claim_cols, attempts=1, max_attempts=3, sql_claim_expires_at=live
    )
    live_before = await row(pool, still_live)

    assert await store.rescue_expired_claims(pool, epoch=Epoch(1)) == []  # stale: no rescue
    assert await log_events(pool) == []

    rescued = await store.rescue_expired_claims(pool, epoch=Epoch(2))

    assert rescued == [(to_retry, "retry"), (to_dead, "dead")]
    retried, dead = await row(pool, to_retry), await row(pool, to_dead)
    assert (retried["status"], retried["attempts"], retried["finished_at"]) == ("retry", 1, None)
    assert (dead["status"], dead["attempts"]) == ("dead", 3)
    assert dead["finished_at"] is not None
    for rescued_row in (retried, dead):
        assert "claim by old (epoch 1) expired" in rescued_row["last_error"]
    assert await row(pool, still_live) == live_before
    assert await log_events(pool) == [(to_retry, "action_rescued"), (to_dead, "action_rescued")]

    assert await store.rescue_expired_claims(pool, epoch=Epoch(2)) == []  # nothing twice
    assert await claim(pool, epoch=2) == [to_retry]  # runnable again; the dead one is not


async def test_a_workers_attempt_cap_dead_letters_a_rescue_below_the_actions_own_limit(
    pool: asyncpg.Pool[Any],
) -> None:
    await set_lease(pool, epoch=2, previous_expires="now() + interval '1 hour'")
    cols: dict[str, Any] = {"status": "running", "claim_epoch": 1, "claimed_by": "old"}
    expired = "now() - interval '1 second'"
    first = await insert_action(
        pool, **cols, attempts=1, max_attempts=5, sql_claim_expires_at=expired
    )
    second = await insert_action(
        pool, **cols, attempts=2, max_attempts=5, sql_claim_expires_at=expired
    )

    rescued = await store.rescue_expired_claims(pool, epoch=Epoch(2), max_attempts=2)

    assert rescued == [(first, "retry"), (second, "dead")]


async def test_claims_of_an_earlier_epoch_are_rescued_once_the_previous_lease_expired(
    pool: asyncpg.Pool[Any],
) -> None:
    claim_cols: dict[str, Any] = {"status": "running", "claimed_by": "old", "attempts": 1}
    live = "now() + interval '1 hour'"
    old_claim = await insert_action(pool, **claim_cols, claim_epoch=1, sql_claim_expires_at=live)
    own_claim = await insert_action(pool, **claim_cols, claim_epoch=2, sql_claim_expires_at=live)

    await set_lease(pool, epoch=2, previous_expires="now() + interval '1 hour'")
    assert await store.rescue_expired_claims(pool, epoch=Epoch(2)) == []

    await set_lease(pool, epoch=2, previous_expires="now() - interval '1 second'")
    assert await store.rescue_expired_claims(pool, epoch=Epoch(2)) == [(old_claim, "retry")]
    assert (await row(pool, own_claim))["status"] == "running"


async def test_a_rescued_action_is_claimed_alone(pool: asyncpg.Pool[Any]) -> None:
    await set_lease(pool, epoch=1)
    normal = [await insert_action(pool) for _ in range(3)]
    suspect = await insert_action(pool, status="retry", rescues=1, attempts=1)

    assert await claim(pool, limit=7) == [suspect]  # alone, though more were due
    assert sorted(await claim(pool, limit=7)) == normal  # then the others, together


async def test_the_generic_plan_of_finish_actions_does_not_loop_over_its_input(
    pool: asyncpg.Pool[Any],
) -> None:
    """After five runs a prepared statement may switch to a generic plan, which knows
    nothing of the arrays' lengths. The finish must reach its rows through an index, not
    by a nested loop over the unnested input (1,000 x 1,000 at a full batch)."""
    sql = store.q("finish_actions")
    async with pool.acquire() as conn:
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        await conn.execute(
            "PREPARE finish_probe (bigint[], bigint, integer[], bigint, double precision[], "
            "text[], text[], text[], integer) AS " + sql
        )
        try:
            plan = await conn.fetchval(
                "EXPLAIN (FORMAT JSON) EXECUTE finish_probe("
                "ARRAY[1, 2]::bigint[], 1, ARRAY[1, 1], 1, ARRAY[0.1, 0.1], "
                "ARRAY[NULL, NULL]::text[], ARRAY[NULL, NULL]::text[], "
                "ARRAY[NULL, NULL]::text[], 1)"
            )
        finally:
            await conn.execute("DEALLOCATE finish_probe")
            await conn.execute("RESET plan_cache_mode")
    text = json.dumps(plan)
    assert "Nested Loop" not in text, text
    assert "Join Filter" not in text, text
    assert "id = ANY ($1)" in text, text
