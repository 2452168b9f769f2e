"""PgQueuer factory for the benchmark: `pgq run bench.pgq_app:create_pgqueuer`.

One asyncpg connection, as in PgQueuer's own quick-start; the DSN comes from `BENCH_DSN`.
The `bench_noop` entrypoint does nothing but note its start time (see `bench.stamp`).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from pgqueuer import Job, PgQueuer

from bench.stamp import STAMPER

ENTRYPOINT = "bench_noop"


@asynccontextmanager
async def create_pgqueuer() -> AsyncIterator[PgQueuer]:
    connection = await asyncpg.connect(os.environ["BENCH_DSN"])
    pgq = PgQueuer.from_asyncpg_connection(connection)

    @pgq.entrypoint(ENTRYPOINT)
    async def bench_noop(job: Job) -> None:
        STAMPER.hit((job.payload or b"").decode())

    try:
        yield pgq
    finally:
        await connection.close()
