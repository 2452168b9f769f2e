"""Each control changes exactly what it says, records who and why, and bad input changes
nothing: a missing reason is 400, a retry of an action that is not dead is 409."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import httpx
import pytest

from tests.waiting import wait_for
from tests.web.conftest import post
from tests.web.page import attr_text, db_flags, db_log_count, db_status
from tests.web.seed import Seeded


@pytest.mark.parametrize(
    ("op", "flag", "value"),
    [
        ("pause", "paused", True),
        ("kill", "killed", True),
        ("proof-off", "proof_mode", False),
    ],
)
async def test_a_flag_button_sets_its_flag_with_the_operator_and_reason(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any], csrf: str, op: str, flag: str, value: bool
) -> None:
    answer = await post(client, f"/control/{op}", csrf=csrf, reason="deploy window")

    assert answer.status_code == 303
    flags = await db_flags(pool)
    assert flags[flag] is value
    assert flags["reason"] == "alice (dashboard): deploy window"
    logged = await pool.fetchrow(
        "SELECT event, message FROM aol.execution_logs ORDER BY id DESC LIMIT 1"
    )
    assert logged is not None
    assert logged["event"] == "flags_changed"
    assert "alice (dashboard): deploy window" in logged["message"]


@pytest.mark.parametrize(
    ("set_op", "undo_op", "flag"),
    [
        ("pause", "resume", "paused"),
        ("kill", "unkill", "killed"),
        ("proof-off", "proof-on", "proof_mode"),
    ],
)
async def test_each_flag_button_has_its_undo(
    client: httpx.AsyncClient,
    pool: asyncpg.Pool[Any],
    csrf: str,
    set_op: str,
    undo_op: str,
    flag: str,
) -> None:
    before = (await db_flags(pool))[flag]
    assert (await post(client, f"/control/{set_op}", csrf=csrf)).status_code == 303
    assert (await db_flags(pool))[flag] is not before
    assert (await post(client, f"/control/{undo_op}", csrf=csrf)).status_code == 303
    assert (await db_flags(pool))[flag] is before


@pytest.mark.parametrize("reason", [None, "", "   ", "x" * 501])
async def test_a_control_without_a_usable_reason_is_400_and_changes_nothing(
    client: httpx.AsyncClient,
    pool: asyncpg.Pool[Any],
    seeded: Seeded,
    csrf: str,
    reason: str | None,
) -> None:
    flags, logs = await db_flags(pool), await db_log_count(pool)
    dead, pending = seeded.first("dead"), seeded.first("pending")

    for path in (
        "/control/pause",
        "/control/retry-all",
        f"/actions/{dead}/retry",
        f"/actions/{pending}/cancel",
    ):
        answer = await post(client, path, csrf=csrf, reason=reason)
        assert answer.status_code == 400, path
        assert "reason" in attr_text(answer.text, "data-error")

    assert await db_flags(pool) == flags
    assert await db_log_count(pool) == logs
    assert await db_status(pool, dead) == "dead"
    assert await db_status(pool, pending) == "pending"


async def test_retry_moves_one_dead_action_to_retry_and_records_who_and_why(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any], seeded: Seeded, csrf: str
) -> None:
    chosen, other = seeded.ids["dead"]

    answer = await post(
        client, f"/actions/{chosen}/retry", csrf=csrf, reason="SMTP fixed", json_answer=True
    )

    assert answer.status_code == 200
    assert answer.json() == {"ok": True, "message": f"action {chosen} goes back to retry"}
    assert await db_status(pool, chosen) == "retry"
    assert await db_status(pool, other) == "dead"
    logged = await pool.fetchrow(
        "SELECT event, message FROM aol.execution_logs WHERE action_id = $1 ORDER BY id DESC "
        "LIMIT 1",
        chosen,
    )
    assert logged is not None
    assert logged["event"] == "action_retried_by_operator"
    assert logged["message"] == "by alice (dashboard): SMTP fixed"


@pytest.mark.parametrize("status", ["pending", "running", "succeeded", "retry", "cancelled"])
async def test_retry_of_an_action_that_is_not_dead_is_409_and_changes_nothing(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any], seeded: Seeded, csrf: str, status: str
) -> None:
    action_id = seeded.first(status)
    logs = await db_log_count(pool)

    answer = await post(client, f"/actions/{action_id}/retry", csrf=csrf, json_answer=True)

    assert answer.status_code == 409
    assert answer.json()["message"] == (
        f"action {action_id} is {status}, not dead: only dead actions are retried"
    )
    assert await db_status(pool, action_id) == status
    assert await db_log_count(pool) == logs


async def test_retry_and_cancel_of_a_missing_action_are_404(
    client: httpx.AsyncClient, csrf: str
) -> None:
    for op in ("retry", "cancel"):
        answer = await post(client, f"/actions/424242/{op}", csrf=csrf, json_answer=True)
        assert answer.status_code == 404
        assert answer.json()["message"] == "no action 424242"


async def test_retry_all_moves_every_dead_action_and_then_has_nothing_to_do(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any], seeded: Seeded, csrf: str
) -> None:
    answer = await post(client, "/control/retry-all", csrf=csrf, json_answer=True)

    assert answer.status_code == 200
    assert answer.json()["message"] == f"{len(seeded.ids['dead'])} dead action(s) go back to retry"
    for action_id in seeded.ids["dead"]:
        assert await db_status(pool, action_id) == "retry"
    again = await post(client, "/control/retry-all", csrf=csrf, json_answer=True)
    assert again.status_code == 409
    assert again.json()["message"] == "no dead actions to retry"


@pytest.mark.parametrize("status", ["pending", "retry"])
async def test_cancel_ends_a_waiting_action_and_records_who_and_why(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any], seeded: Seeded, csrf: str, status: str
) -> None:
    action_id = seeded.first(status)

    answer = await post(client, f"/actions/{action_id}/cancel", csrf=csrf, reason="duplicate")

    assert answer.status_code == 303
    row = await pool.fetchrow(
        "SELECT status, finished_at FROM aol.actions WHERE id = $1", action_id
    )
    assert row is not None
    assert row["status"] == "cancelled"
    assert row["finished_at"] is not None
    logged = await pool.fetchrow(
        "SELECT event, message FROM aol.execution_logs WHERE action_id = $1 ORDER BY id DESC "
        "LIMIT 1",
        action_id,
    )
    assert logged is not None
    assert (logged["event"], logged["message"]) == (
        "action_cancelled_by_operator",
        "by alice (dashboard): duplicate",
    )


@pytest.mark.parametrize("status", ["running", "succeeded", "dead", "cancelled"])
async def test_cancel_of_an_action_that_is_not_waiting_is_409_and_changes_nothing(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any], seeded: Seeded, csrf: str, status: str
) -> None:
    action_id = seeded.first(status)
    logs = await db_log_count(pool)

    answer = await post(client, f"/actions/{action_id}/cancel", csrf=csrf, json_answer=True)

    assert answer.status_code == 409
    assert answer.json()["message"] == (
        f"action {action_id} is {status}: only a pending or retry action can be cancelled"
    )
    assert await db_status(pool, action_id) == status
    assert await db_log_count(pool) == logs


async def test_an_unknown_control_is_404(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any], csrf: str
) -> None:
    flags = await db_flags(pool)
    answer = await post(client, "/control/explode", csrf=csrf, json_answer=True)
    assert answer.status_code == 404
    assert "no such control 'explode'" in answer.json()["message"]
    assert await db_flags(pool) == flags


async def test_a_form_post_returns_to_the_page_it_came_from_but_never_offsite(
    client: httpx.AsyncClient, csrf: str
) -> None:
    for target, expected in (("/actions/3", "/actions/3"), ("//evil.example/", "/")):
        answer = await client.post(
            "/control/pause",
            data={"csrf": csrf, "reason": "r", "next": target},
            headers={"Origin": "http://127.0.0.1:8080"},
        )
        assert answer.status_code == 303
        assert answer.headers["location"] == expected


async def test_cancel_racing_a_claim_leaves_the_claimed_action_running(
    pool: asyncpg.Pool[Any], seeded: Seeded
) -> None:
    """The worker's claim holds the row lock when the cancel arrives: the cancel waits for
    it, sees the action running, and changes nothing."""
    from aol.db import store

    action_id = seeded.first("pending")
    logs = await db_log_count(pool)
    async with pool.acquire() as claimer:
        claim = claimer.transaction()
        await claim.start()
        await claimer.execute(
            "UPDATE aol.actions SET status = 'running', attempts = 1, claim_epoch = 7, "
            "claim_expires_at = now() + interval '1 min' WHERE id = $1",
            action_id,
        )
        cancel = asyncio.create_task(
            store.cancel_waiting_action(pool, action_id=action_id, changed_by="t", reason="r")
        )

        async def cancel_waits_for_the_lock() -> bool:
            return bool(
                await pool.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database()"
                )
            )

        await wait_for(cancel_waits_for_the_lock, what="the cancel to wait for the claim")
        await claim.commit()
        before, cancelled = await cancel

    assert (before, cancelled) == ("pending", False)
    assert await db_status(pool, action_id) == "running"
    assert await db_log_count(pool) == logs
