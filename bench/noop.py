"""aol handler module for the benchmark: `aol run --handlers bench.noop`.

`BENCH_NOOP` does nothing but note its start time (see `bench.stamp`): the benchmark
measures the queue, not the work.
"""

from __future__ import annotations

from aol import HandlerContext, handler
from bench.stamp import STAMPER

ACTION_TYPE = "BENCH_NOOP"


@handler(ACTION_TYPE)
async def bench_noop(ctx: HandlerContext) -> str | None:
    STAMPER.hit(str(ctx.payload.get("k", ctx.action.idempotency_key)))
    return None
