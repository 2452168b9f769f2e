"""The systems under test, behind one interface: install, enqueue, run a worker, verify.

Every system gets the same no-op job whose payload carries a key, a worker started
through its own command line (see `bench.launch`), and a verification that reads the
system's own tables.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import asyncpg

from bench import db

NOOP = "BENCH_NOOP"


@dataclass(frozen=True)
class Verification:
    ok: bool
    how: str
    counts: dict[str, int] = field(default_factory=dict)


class Enqueuer(Protocol):
    via: str

    async def enqueue_batch(self, keys: Sequence[str]) -> None: ...

    async def enqueue_one(self, key: str) -> None: ...

    async def close(self) -> None: ...


class System(Protocol):
    name: str

    @property
    def version(self) -> str: ...

    def settings(self) -> dict[str, str]: ...

    def notes(self) -> list[str]: ...

    async def install(self, url: str) -> None: ...

    async def enqueuer(self, url: str) -> Enqueuer: ...

    def worker_args(self, url: str) -> list[str]: ...

    def worker_env(self, url: str) -> dict[str, str]: ...

    async def remaining(self, conn: asyncpg.Connection[Any]) -> int: ...

    async def verify(self, conn: asyncpg.Connection[Any], n: int) -> Verification: ...

    async def extra(self, conn: asyncpg.Connection[Any]) -> dict[str, Any]: ...


def _counts(row: asyncpg.Record | None) -> dict[str, int]:
    if row is None:
        raise RuntimeError("the verification query returned no row")
    return {str(k): int(v) for k, v in row.items()}


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def aol_fingerprint() -> str:
    """A short hash of aol's Python and SQL sources: which aol the figures belong to (aol
    changes while the benchmark exists; without git, this names the state measured)."""
    import aol

    root = Path(aol.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted([*root.rglob("*.py"), *root.rglob("*.sql")]):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _aol_pool(batch_size: int) -> str:
    try:
        from aol.worker.runner import POOL_MAX_SIZE  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        return f"up to {batch_size + 2} connections (batch size + 2)"
    cap = int(POOL_MAX_SIZE)
    return f"up to {min(batch_size + 2, cap)} connections (batch size + 2, at most {cap})"


# --- aol ------------------------------------------------------------------------------

AOL_BATCH_INSERT = """
INSERT INTO aol.actions (idempotency_key, action_type, payload)
SELECT k, $2, jsonb_build_object('k', k) FROM unnest($1::text[]) AS k
"""
AOL_ENQUEUE_MANY = "SELECT count(*) FROM aol.enqueue_many($1::text[], $2::jsonb[], $3::text[])"
AOL_HAS_ENQUEUE_MANY = """
SELECT to_regprocedure(
    'aol.enqueue_many(text[], jsonb[], text[], timestamptz[], integer[], integer[])'
) IS NOT NULL
"""
AOL_ENQUEUE = "SELECT aol.enqueue($1, $2::jsonb, $3)"
AOL_REMAINING = """
SELECT (SELECT count(*) FROM aol.actions WHERE status IN ('pending', 'retry'))
     + (SELECT count(*) FROM aol.actions WHERE status = 'running')
"""
VIA_MANY = "aol.enqueue_many (one call per batch)"
VIA_INSERT = "one INSERT INTO aol.actions ... SELECT FROM unnest($1::text[]) per batch"


class AolEnqueuer:
    """Single jobs through `aol.enqueue`; batches through `aol.enqueue_many` where the
    schema has it (migration 0004), else one INSERT ... SELECT FROM unnest statement. Both
    are one statement, so the statement-level trigger sends one NOTIFY per batch."""

    def __init__(self, conn: asyncpg.Connection[Any], has_many: bool) -> None:
        self.conn = conn
        self.via = VIA_MANY if has_many else VIA_INSERT

    async def enqueue_batch(self, keys: Sequence[str]) -> None:
        if self.via == VIA_MANY:
            await self.conn.fetchval(
                AOL_ENQUEUE_MANY,
                [NOOP] * len(keys),
                [json.dumps({"k": k}) for k in keys],
                list(keys),
            )
        else:
            await self.conn.execute(AOL_BATCH_INSERT, list(keys), NOOP)

    async def enqueue_one(self, key: str) -> None:
        await self.conn.fetchval(AOL_ENQUEUE, NOOP, json.dumps({"k": key}), key)

    async def close(self) -> None:
        await self.conn.close()


@dataclass
class Aol:
    batch_size: int = 1000
    scan_interval: float = 1.0
    success_log: str = "tick"
    event_loop: str = "uvloop"
    name: str = "aol"

    @property
    def version(self) -> str:
        from aol.db.migrate import head_revision

        return f"{_version('aol')} (schema {head_revision()}, source {aol_fingerprint()})"

    def settings(self) -> dict[str, str]:
        return {
            "command": f"aol run --handlers bench.noop --batch-size {self.batch_size} "
            f"--scan-interval {self.scan_interval:g} --success-log {self.success_log} "
            f"--event-loop {self.event_loop}",
            "batch_size": str(self.batch_size),
            "pool": _aol_pool(self.batch_size),
            "wake-up": "LISTEN/NOTIFY (statement-level trigger)",
            "audit": "execution log row per attempt + tick ledger row per tick (on)",
            "logs": "JSON lines on stdout (to a file): "
            + (
                "one per tick for its successes (ids listed), one per failed attempt"
                if self.success_log == "tick"
                else "one per attempt"
            ),
            "event loop": self.event_loop,
        }

    def notes(self) -> list[str]:
        return [
            "aol's batch enqueue: aol.enqueue_many where the schema has it (migration 0004),"
            " else one INSERT INTO aol.actions ... SELECT FROM unnest($1::text[]) statement;"
            " either way one statement per batch, so the statement-level trigger sends one"
            " NOTIFY per batch.",
        ]

    async def install(self, url: str) -> None:
        from aol.db.migrate import upgrade

        await upgrade(url)

    async def enqueuer(self, url: str) -> Enqueuer:
        conn = await db.connect(url)
        return AolEnqueuer(conn, bool(await conn.fetchval(AOL_HAS_ENQUEUE_MANY)))

    def worker_args(self, url: str) -> list[str]:
        return [
            "--database-url",
            url,
            "run",
            "--handlers",
            "bench.noop",
            "--batch-size",
            str(self.batch_size),
            "--scan-interval",
            f"{self.scan_interval:g}",
            "--success-log",
            self.success_log,
            "--event-loop",
            self.event_loop,
        ]

    def worker_env(self, url: str) -> dict[str, str]:
        return {}

    async def remaining(self, conn: asyncpg.Connection[Any]) -> int:
        # Each count matches a partial index's predicate, so it reads only the unfinished
        # rows; `status IN` the three of them matched none, and scanned the whole table
        # (a parallel scan of 68 ms per 10 ms poll with 1,000,000 finished rows).
        return int(await conn.fetchval(AOL_REMAINING))

    async def extra(self, conn: asyncpg.Connection[Any]) -> dict[str, Any]:
        """What the tick ledger says about the ticks that claimed something."""
        row = await conn.fetchrow(
            """
            SELECT count(*) AS ticks,
                   count(*) FILTER (WHERE claimed > 0) AS working_ticks,
                   round(avg(claimed) FILTER (WHERE claimed > 0), 2) AS claimed_per_tick,
                   round(percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms)
                         FILTER (WHERE claimed > 0)::numeric, 3) AS tick_ms_p50,
                   round(percentile_cont(0.99) WITHIN GROUP (ORDER BY duration_ms)
                         FILTER (WHERE claimed > 0)::numeric, 3) AS tick_ms_p99
              FROM aol.tick_ledger
            """
        )
        if row is None:
            return {}
        return {"tick_ledger": {k: (None if v is None else float(v)) for k, v in row.items()}}

    async def verify(self, conn: asyncpg.Connection[Any], n: int) -> Verification:
        row = await conn.fetchrow(
            """
            SELECT (SELECT count(*) FROM aol.actions) AS actions,
                   (SELECT count(*) FROM aol.actions WHERE status = 'succeeded') AS succeeded,
                   (SELECT count(*) FROM aol.actions WHERE attempts <> 1) AS not_one_attempt,
                   (SELECT count(*) FROM aol.execution_logs
                     WHERE event = 'action_succeeded') AS log_rows,
                   (SELECT count(DISTINCT action_id) FROM aol.execution_logs
                     WHERE event = 'action_succeeded') AS log_actions,
                   (SELECT count(*) FROM aol.execution_logs
                     WHERE event <> 'action_succeeded') AS other_log_rows,
                   (SELECT count(*) FROM aol.tick_ledger) AS ticks
            """
        )
        counts = _counts(row)
        ok = (
            counts["actions"] == counts["succeeded"] == counts["log_rows"] == n
            and counts["log_actions"] == n
            and counts["not_one_attempt"] == 0
            and counts["other_log_rows"] == 0
        )
        return Verification(
            ok=ok,
            how="aol.actions: all N succeeded with attempts = 1; aol.execution_logs: N "
            "action_succeeded rows for N distinct actions, no other events",
            counts=counts,
        )


# --- PgQueuer -------------------------------------------------------------------------


class PgqEnqueuer:
    via = "Queries.enqueue with lists (one statement per batch)"

    def __init__(self, conn: asyncpg.Connection[Any]) -> None:
        from pgqueuer import AsyncpgDriver, Queries

        from bench.pgq_app import ENTRYPOINT

        self.conn = conn
        self.queries = Queries(AsyncpgDriver(conn))
        self.entrypoint = ENTRYPOINT

    async def enqueue_batch(self, keys: Sequence[str]) -> None:
        await self.queries.enqueue(
            [self.entrypoint] * len(keys), [k.encode() for k in keys], [0] * len(keys)
        )

    async def enqueue_one(self, key: str) -> None:
        await self.queries.enqueue(self.entrypoint, key.encode())

    async def close(self) -> None:
        await self.conn.close()


@dataclass
class PgQueuer:
    batch_size: int = 10
    name: str = "pgqueuer"

    @property
    def version(self) -> str:
        return _version("pgqueuer")

    def settings(self) -> dict[str, str]:
        return {
            "command": "pgqueuer.run('bench.pgq_app:create_pgqueuer', "
            f"batch_size={self.batch_size}) on uvloop, i.e. `pgq run` (see notes)",
            "batch_size": str(self.batch_size),
            "pool": "1 asyncpg connection (PgQueuer.from_asyncpg_connection)",
            "wake-up": "LISTEN/NOTIFY (trigger on insert/update/delete)",
            "audit": "pgqueuer_log row per status change (queued, successful)",
            "logs": "pgq default (INFO)",
            "event loop": "uvloop (what `pgq run` uses when installed; PgQueuer depends on it)",
        }

    def notes(self) -> list[str]:
        return [
            "`pgq run` 1.6.0 stops before starting with typer 0.29 (its --log-level parser "
            "returns a str where an enum is expected), so the worker runs through PgQueuer's "
            "documented `pgqueuer.run(factory, batch_size=...)` API with the same log set-up "
            "and event loop (uvloop) as `pgq run`.",
        ]

    async def install(self, url: str) -> None:
        from pgqueuer import AsyncpgDriver, Queries

        conn = await db.connect(url)
        try:
            await Queries(AsyncpgDriver(conn)).install()
        finally:
            await conn.close()

    async def enqueuer(self, url: str) -> Enqueuer:
        return PgqEnqueuer(await db.connect(url))

    def worker_args(self, url: str) -> list[str]:
        return [
            "bench.pgq_app:create_pgqueuer",
            "--batch-size",
            str(self.batch_size),
        ]

    def worker_env(self, url: str) -> dict[str, str]:
        return {"BENCH_DSN": url}

    async def remaining(self, conn: asyncpg.Connection[Any]) -> int:
        return int(await conn.fetchval("SELECT count(*) FROM pgqueuer"))

    async def extra(self, conn: asyncpg.Connection[Any]) -> dict[str, Any]:
        return {}

    async def verify(self, conn: asyncpg.Connection[Any], n: int) -> Verification:
        row = await conn.fetchrow(
            """
            SELECT (SELECT count(*) FROM pgqueuer) AS still_queued,
                   count(*) FILTER (WHERE status = 'queued') AS queued_rows,
                   count(*) FILTER (WHERE status = 'picked') AS picked_rows,
                   count(DISTINCT job_id) FILTER (WHERE status = 'picked') AS picked_jobs,
                   count(*) FILTER (WHERE status = 'successful') AS successful_rows,
                   count(DISTINCT job_id) FILTER (WHERE status = 'successful') AS successful_jobs,
                   count(*) FILTER (WHERE status NOT IN ('queued', 'picked', 'successful'))
                       AS other_rows
              FROM pgqueuer_log
            """
        )
        counts = _counts(row)
        ok = (
            counts["still_queued"] == 0
            and counts["queued_rows"] == counts["picked_rows"] == counts["successful_rows"] == n
            and counts["picked_jobs"] == counts["successful_jobs"] == n
            and counts["other_rows"] == 0
        )
        return Verification(
            ok=ok,
            how="pgqueuer (queue table) empty; pgqueuer_log: N 'queued', N 'picked' and N "
            "'successful' rows, picked and successful each for N distinct job ids, no other "
            "status",
            counts=counts,
        )


# --- Procrastinate --------------------------------------------------------------------


class ProcrastinateEnqueuer:
    via = "batch_defer_async (one statement per batch)"

    def __init__(self, app: Any) -> None:
        from bench.procrastinate_app import TASK_NAME

        self.app = app
        self.deferrer = app.configure_task(TASK_NAME)

    async def enqueue_batch(self, keys: Sequence[str]) -> None:
        await self.deferrer.batch_defer_async(*({"key": k} for k in keys))

    async def enqueue_one(self, key: str) -> None:
        await self.deferrer.defer_async(key=key)

    async def close(self) -> None:
        await self.app.close_async()


def _procrastinate_app(url: str, pool: int) -> Any:
    import procrastinate

    return procrastinate.App(
        connector=procrastinate.PsycopgConnector(conninfo=url, min_size=1, max_size=pool)
    )


@dataclass
class Procrastinate:
    concurrency: int = 10
    name: str = "procrastinate"

    @property
    def version(self) -> str:
        return _version("procrastinate")

    def settings(self) -> dict[str, str]:
        return {
            "command": "procrastinate --app bench.procrastinate_app.app worker "
            f"--concurrency {self.concurrency}",
            "concurrency": str(self.concurrency),
            "pool": f"psycopg pool, max {self.concurrency + 2}",
            "wake-up": "LISTEN/NOTIFY (row-level trigger, two notifications per job)",
            "audit": "procrastinate_events row per transition; jobs kept (delete_jobs=never)",
            "logs": "procrastinate default",
            "event loop": "asyncio",
        }

    def notes(self) -> list[str]:
        return []

    async def install(self, url: str) -> None:
        app = _procrastinate_app(url, 1)
        await app.open_async()
        try:
            await app.schema_manager.apply_schema_async()
        finally:
            await app.close_async()

    async def enqueuer(self, url: str) -> Enqueuer:
        app = _procrastinate_app(url, 1)
        await app.open_async()
        return ProcrastinateEnqueuer(app)

    def worker_args(self, url: str) -> list[str]:
        return [
            "--app",
            "bench.procrastinate_app.app",
            "worker",
            "--concurrency",
            str(self.concurrency),
        ]

    def worker_env(self, url: str) -> dict[str, str]:
        return {"BENCH_DSN": url, "BENCH_POOL_SIZE": str(self.concurrency + 2)}

    async def remaining(self, conn: asyncpg.Connection[Any]) -> int:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"
            )
        )

    async def extra(self, conn: asyncpg.Connection[Any]) -> dict[str, Any]:
        return {}

    async def verify(self, conn: asyncpg.Connection[Any], n: int) -> Verification:
        row = await conn.fetchrow(
            """
            SELECT (SELECT count(*) FROM procrastinate_jobs) AS jobs,
                   (SELECT count(*) FROM procrastinate_jobs
                     WHERE status = 'succeeded') AS succeeded,
                   (SELECT count(*) FROM procrastinate_events
                     WHERE type = 'started') AS started_events,
                   (SELECT count(DISTINCT job_id) FROM procrastinate_events
                     WHERE type = 'started') AS started_jobs,
                   (SELECT count(*) FROM procrastinate_events
                     WHERE type = 'succeeded') AS succeeded_events
            """
        )
        counts = _counts(row)
        ok = (
            counts["jobs"] == counts["succeeded"] == n
            and counts["started_events"] == counts["started_jobs"] == n
            and counts["succeeded_events"] == n
        )
        return Verification(
            ok=ok,
            how="procrastinate_jobs: all N succeeded; procrastinate_events: N 'started' "
            "events for N distinct jobs and N 'succeeded' events",
            counts=counts,
        )


SYSTEM_NAMES = ("aol", "pgqueuer", "procrastinate")
