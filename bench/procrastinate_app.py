"""Procrastinate app for the benchmark: `procrastinate --app bench.procrastinate_app.app worker`.

The DSN comes from `BENCH_DSN` and the pool size from `BENCH_POOL_SIZE`. The `bench_noop`
task does nothing but note its start time (see `bench.stamp`).
"""

from __future__ import annotations

import os

import procrastinate

from bench.stamp import STAMPER

TASK_NAME = "bench_noop"
_pool = int(os.environ.get("BENCH_POOL_SIZE", "4"))

app = procrastinate.App(
    connector=procrastinate.PsycopgConnector(
        conninfo=os.environ.get("BENCH_DSN", ""), min_size=1, max_size=max(1, _pool)
    )
)


@app.task(name=TASK_NAME)
async def bench_noop(key: str) -> None:
    STAMPER.hit(key)
