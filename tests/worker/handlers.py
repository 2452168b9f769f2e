"""Test handlers, registered into a fresh `Registry` per test, and helpers to run a worker.

Nothing here touches `default_registry`: each test builds its own registry with
`registry(...)`, so handlers never leak from one test into another.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from aol.actions import post_social
from aol.actions.context import HandlerContext
from aol.actions.registry import Handler, Registry
from aol.settings import Settings
from aol.worker.runner import run_worker
from tests.waiting import wait_for

OK = "TEST_OK"
FAIL = "TEST_FAIL"
FLAKY = "TEST_FLAKY"
SLEEPY = "TEST_SLEEPY"
STALL = "TEST_STALL"
BAD_RESULT = "TEST_BAD_RESULT"
POST = post_social.ACTION_TYPE
STOP_TIMEOUT = 10.0


async def ok(ctx: HandlerContext) -> str:
    return f"ok {ctx.action_id}"


async def always_fails(ctx: HandlerContext) -> str:
    raise RuntimeError(f"boom on attempt {ctx.attempt}")


async def fails_first_attempt(ctx: HandlerContext) -> str:
    if ctx.attempt == 1:
        raise RuntimeError("first attempt fails")
    return "second attempt worked"


async def sleeps_ten_seconds(ctx: HandlerContext) -> str:
    await asyncio.sleep(10)
    return "woke up"


async def returns_a_non_string(ctx: HandlerContext) -> Any:
    """Breaks the handler contract: the driver refuses the message when the result is written."""
    return {"not": "a message"}


@dataclass
class Stall:
    """Signals `started` when called, then sleeps `seconds` while `slow` is True."""

    seconds: float
    slow: bool = True
    started: asyncio.Event = field(default_factory=asyncio.Event)
    calls: list[tuple[int, int]] = field(default_factory=list)

    async def __call__(self, ctx: HandlerContext) -> str:
        self.calls.append((ctx.action_id, ctx.attempt))
        self.started.set()
        if self.slow:
            await asyncio.sleep(self.seconds)
        return "stalled"


@dataclass
class Recorder:
    """Wraps a handler and records (action id, attempt, not_before) of every call."""

    inner: Handler
    calls: list[tuple[int, int, datetime]] = field(default_factory=list)

    async def __call__(self, ctx: HandlerContext) -> str | None:
        self.calls.append((ctx.action_id, ctx.attempt, ctx.action.not_before))
        return await self.inner(ctx)


def registry(**handlers: Handler) -> Registry:
    """A fresh registry with the standard test handlers plus `handlers` (type -> handler)."""
    reg = Registry()
    reg.register(OK, ok)
    reg.register(FAIL, always_fails)
    reg.register(FLAKY, fails_first_attempt)
    reg.register(SLEEPY, sleeps_ten_seconds)
    reg.register(BAD_RESULT, returns_a_non_string)
    reg.register(POST, post_social.post_social)
    for action_type, fn in handlers.items():
        reg.register(action_type, fn, replace=True)
    return reg


@dataclass
class BackgroundWorker:
    task: asyncio.Task[int]
    stop: asyncio.Event

    async def stopped(self, timeout: float = STOP_TIMEOUT) -> int:
        """Ask the worker to stop and return its exit code."""
        self.stop.set()
        return await asyncio.wait_for(self.task, timeout=timeout)

    async def exited(self, timeout: float) -> int:
        """Wait for the worker to exit on its own (without a stop) and return its exit code."""
        return await asyncio.wait_for(asyncio.shield(self.task), timeout=timeout)


@contextlib.asynccontextmanager
async def background_worker(
    settings: Settings, url: str, reg: Registry
) -> AsyncIterator[BackgroundWorker]:
    """Run `run_worker` in a task of this event loop; stop it (and wait for it) on exit."""
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_worker(settings, url, registry=reg, stop=stop), name="test-worker"
    )
    try:
        yield BackgroundWorker(task=task, stop=stop)
    finally:
        stop.set()
        if not task.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), timeout=STOP_TIMEOUT)
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        elif not task.cancelled() and task.exception() is not None:
            raise AssertionError("the worker task failed") from task.exception()


# --- reading state -----------------------------------------------------------------------


async def ledger(db: asyncpg.Pool[Any]) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT epoch, tick, outcome, claimed, succeeded, retried, dead, error, duration_ms "
        "FROM aol.tick_ledger ORDER BY id"
    )
    return [dict(r) for r in rows]


async def outcomes(db: asyncpg.Pool[Any]) -> list[str]:
    return [str(r["outcome"]) for r in await ledger(db)]


async def action(db: asyncpg.Pool[Any], action_id: int) -> dict[str, Any]:
    row = await db.fetchrow("SELECT * FROM aol.actions WHERE id = $1", action_id)
    assert row is not None, f"action {action_id} does not exist"
    return dict(row)


async def events(db: asyncpg.Pool[Any], action_id: int) -> list[str]:
    rows = await db.fetch(
        "SELECT event FROM aol.execution_logs WHERE action_id = $1 ORDER BY id", action_id
    )
    return [str(r["event"]) for r in rows]


async def statuses(db: asyncpg.Pool[Any]) -> dict[str, int]:
    rows = await db.fetch("SELECT status, count(*) AS n FROM aol.actions GROUP BY status")
    return {str(r["status"]): int(r["n"]) for r in rows}


async def wait_status(
    db: asyncpg.Pool[Any], action_id: int, status: str, *, timeout: float = 5.0
) -> dict[str, Any]:
    async def probe() -> dict[str, Any]:
        row = await action(db, action_id)
        return row if row["status"] == status else {}

    return await wait_for(probe, timeout=timeout, what=f"action {action_id} to be {status}")


async def lease_released(db: asyncpg.Pool[Any]) -> bool:
    """The lease row was marked released (a clean shutdown, not a lost session)."""
    return bool(await db.fetchval("SELECT released_at IS NOT NULL FROM aol.lease WHERE id = 1"))


async def wait_outcome(db: asyncpg.Pool[Any], outcome: str, *, timeout: float = 5.0) -> None:
    async def probe() -> bool:
        return outcome in await outcomes(db)

    await wait_for(probe, timeout=timeout, what=f"a ledger row with outcome {outcome!r}")


async def lease_held(db: asyncpg.Pool[Any]) -> bool:
    """Somebody holds the lease (acquired and not released)."""
    return bool(
        await db.fetchval(
            "SELECT owner IS NOT NULL AND released_at IS NULL AND epoch > 0 "
            "FROM aol.lease WHERE id = 1"
        )
    )
