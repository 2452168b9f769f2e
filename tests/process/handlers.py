"""Handlers for real-process tests, loaded with `aol run --handlers tests.process.handlers`.

`SLOW` records every call in the test table `test_effects` (created by the test, see
`tests.process.proc.create_effects_table`) through its own asyncpg connection: a row at
start (action, attempt, this process's pid, database clock), then `finished_at` after it
has slept. So a test can prove what ran, in which process, and that attempts never
overlapped. A row whose `finished_at` stays NULL is an attempt that never completed.

Payload: {"seconds": float, "later_seconds": float (optional)}. Attempt 1 sleeps
`seconds`; later attempts sleep `later_seconds` when given (so a rescued action can finish
quickly), else `seconds`.

`NAP_ISOLATED` runs in a child process (`isolated=True`) and blocks it with `time.sleep`
for `seconds`, then names the child's pid: what the worker's deadline must kill.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import asyncpg

from aol import HandlerContext, handler
from aol.db.connect import asyncpg_dsn

INSERT_EFFECT = (
    "INSERT INTO public.test_effects (action_id, attempt, pid, started_at) "
    "VALUES ($1, $2, $3, clock_timestamp()) RETURNING id"
)
FINISH_EFFECT = "UPDATE public.test_effects SET finished_at = clock_timestamp() WHERE id = $1"


def sleep_seconds(payload: dict[str, Any], attempt: int) -> float:
    if attempt > 1 and "later_seconds" in payload:
        return float(payload["later_seconds"])
    return float(payload.get("seconds", 0))


@handler("SLOW")
async def slow(ctx: HandlerContext) -> str:
    seconds = sleep_seconds(ctx.payload, ctx.attempt)
    conn: asyncpg.Connection[Any] = await asyncpg.connect(
        asyncpg_dsn(os.environ["AOL_DATABASE_URL"])
    )
    try:
        effect_id = await conn.fetchval(INSERT_EFFECT, ctx.action_id, ctx.attempt, os.getpid())
        await asyncio.sleep(seconds)
        await conn.execute(FINISH_EFFECT, effect_id)
    finally:
        await conn.close()
    return f"slept {seconds:g}s in pid {os.getpid()}"


@handler("NAP_ISOLATED", isolated=True)
async def nap_isolated(ctx: HandlerContext) -> str:
    time.sleep(float(ctx.payload.get("seconds", 0)))
    return f"napped in pid {os.getpid()}"
