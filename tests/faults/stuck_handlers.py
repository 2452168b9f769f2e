"""Handlers that get stuck, for `tests/faults/test_stuck.py`.

Loaded with `aol run --handlers tests.process.handlers --handlers tests.faults.stuck_handlers`.
Each records its start in the test table `test_effects` (see `tests.process.handlers`: a row
with action, attempt, pid and the database clock, `finished_at` set only if it completes),
so a test can prove when and in which process an attempt began, and that it never ended.

* `BLOCK_LOOP` blocks the worker's event loop with a synchronous `time.sleep`: the loop
  cannot be cancelled, only the watchdog can end the process.
* `SWALLOW_CANCEL` ignores every cancellation: it goes back to sleep each time it is
  cancelled, so the worker can only abandon it.
* `BLOCK_ISOLATED` is declared `isolated=True`: it runs in a child process and blocks
  there with `time.sleep`; the worker kills that process at the action timeout.

Payload: {"seconds": float} (how long to block; default 60).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import Any

import asyncpg

from aol import HandlerContext, handler
from aol.db.connect import asyncpg_dsn
from tests.process.handlers import FINISH_EFFECT, INSERT_EFFECT

BLOCK_SECONDS_DEFAULT = 60.0


def block_seconds(ctx: HandlerContext) -> float:
    return float(ctx.payload.get("seconds", BLOCK_SECONDS_DEFAULT))


async def _connect() -> asyncpg.Connection[Any]:
    conn: asyncpg.Connection[Any] = await asyncpg.connect(
        asyncpg_dsn(os.environ["AOL_DATABASE_URL"])
    )
    return conn


async def _record_start(conn: asyncpg.Connection[Any], ctx: HandlerContext) -> int:
    return int(await conn.fetchval(INSERT_EFFECT, ctx.action_id, ctx.attempt, os.getpid()))


@handler("BLOCK_LOOP")
async def block_loop(ctx: HandlerContext) -> str:
    seconds = block_seconds(ctx)
    conn = await _connect()
    try:
        effect_id = await _record_start(conn, ctx)
        time.sleep(seconds)  # the point: this blocks the event loop
        await conn.execute(FINISH_EFFECT, effect_id)
    finally:
        await conn.close()
    return f"blocked the loop for {seconds:g}s"


@handler("SWALLOW_CANCEL")
async def swallow_cancel(ctx: HandlerContext) -> str:
    seconds = block_seconds(ctx)
    conn = await _connect()
    swallowed = 0
    try:
        effect_id = await _record_start(conn, ctx)
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                await asyncio.sleep(left)
            except asyncio.CancelledError:
                swallowed += 1  # ignore it, and go on sleeping
                ctx.log.warning("cancellation_swallowed", times=swallowed)
        await conn.execute(FINISH_EFFECT, effect_id)
    finally:
        with contextlib.suppress(Exception):
            await conn.close()
    return f"slept {seconds:g}s, swallowing {swallowed} cancellation(s)"


@handler("BLOCK_ISOLATED", isolated=True)
async def block_isolated(ctx: HandlerContext) -> str:
    seconds = block_seconds(ctx)
    conn = await _connect()
    try:
        effect_id = await _record_start(conn, ctx)
        time.sleep(seconds)  # blocks only the child process it runs in
        await conn.execute(FINISH_EFFECT, effect_id)
    finally:
        await conn.close()
    return f"blocked its own process for {seconds:g}s"
