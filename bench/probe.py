"""`python -m bench probe`: where aol's time goes, measured from the client side.

pg_stat_statements is not loaded on the shared server (and the benchmark does not change
the server's configuration), so each statement is timed by the client, with the same SQL
text aol sends (`aol.db.store.q(name)`), in fresh `aol_bench_*` databases:

1. hot path: aol's tick statements replayed in a loop over N runnable actions (no Python
   handler, no logging), per statement, in these variants:
   * `aol today`: read_flags, rescue_expired_claims, claim_actions, one finish_action per
     action (concurrently on the pool, as aol.worker.tick does), record_tick;
   * `aol today; no pool reset`: the same on a pool whose release does not send asyncpg's
     reset query (aol's pool sends it after every statement);
   * `batched finish`: the same, with one statement finishing the whole batch (fenced the
     same way: epoch, attempt, lease row) and writing every log row;
   * `batched finish + ledger`: that statement and the ledger row in one transaction.
2. plans: EXPLAIN (ANALYZE, BUFFERS) of claim_actions and finish_action with 0 and with F
   finished actions in the table (inside a transaction that is rolled back).
3. claim join-back: aol's claim_actions of 1,000 against the same statement joining the
   picked ids back through `id = ANY(ARRAY(...))`, with 0 and 100,000 finished rows.
4. NOTIFY at commit: 32 clients calling aol.enqueue with aol's trigger, with the trigger
   off, and with a gated trigger (a sketch of a fix) while a session plays the busy worker.

Nothing here changes aol/; the gated trigger is installed in a throwaway database only.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

from bench import db
from bench.config import Run
from bench.scenarios import FILL_FINISHED, FILL_FINISHED_LOGS, FILL_RUNNABLE, _enqueue_for
from bench.systems import Aol

T = TypeVar("T")
Say = Callable[[str], None]
OWNER = "bench-probe:1"

FINISH_ONE = """
WITH done AS (
    UPDATE aol.actions a
       SET status = 'succeeded', finished_at = now(), updated_at = now(), last_error = NULL
     WHERE a.id = $1 AND a.status = 'running' AND a.claim_epoch = $2 AND a.attempts = $3
       AND EXISTS (SELECT 1 FROM aol.lease l WHERE l.id = 1 AND l.epoch = $2)
    RETURNING a.id
)
INSERT INTO aol.execution_logs
    (action_id, attempt, epoch, tick, level, event, message, duration_ms, artifact_ref,
     artifact_sha256)
SELECT id, $3, $2, $4, 'info', 'action_succeeded', $6, $5, $7, $8 FROM done
RETURNING action_id
"""

BATCH_FINISH = """
WITH input AS (
    SELECT * FROM unnest($1::bigint[], $3::int[], $5::float8[], $6::text[], $7::text[],
                         $8::text[])
        AS i (id, attempt, duration_ms, message, artifact_ref, artifact_sha256)
), done AS (
    UPDATE aol.actions a
       SET status = 'succeeded', finished_at = now(), updated_at = now(), last_error = NULL
      FROM input i
     WHERE a.id = i.id AND a.status = 'running' AND a.claim_epoch = $2
       AND a.attempts = i.attempt
       AND EXISTS (SELECT 1 FROM aol.lease l WHERE l.id = 1 AND l.epoch = $2)
    RETURNING a.id, i.attempt, i.duration_ms, i.message, i.artifact_ref, i.artifact_sha256
)
INSERT INTO aol.execution_logs (action_id, attempt, epoch, tick, level, event, message,
                                duration_ms, artifact_ref, artifact_sha256)
SELECT id, attempt, $2, $4, 'info', 'action_succeeded', message, duration_ms, artifact_ref,
       artifact_sha256
  FROM done
RETURNING action_id
"""

K_BUSY = 0x616F6C62757379  # "aolbusy"
K_PENDING = 0x616F6C70656E64  # "aolpend"
GATED_TRIGGER = f"""
CREATE OR REPLACE FUNCTION aol.notify_runnable() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, aol, pg_temp AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_rows WHERE status IN ('pending', 'retry')) THEN
        IF pg_try_advisory_xact_lock_shared({K_BUSY}) THEN
            PERFORM pg_notify('aol_wakeup', TG_OP);   -- worker idle: wake it
        ELSE
            PERFORM pg_advisory_xact_lock_shared({K_PENDING});  -- busy: it will look
        END IF;
    END IF;
    RETURN NULL;
END
$$;
"""


async def _no_reset(conn: asyncpg.Connection[Any]) -> None:
    return None


class Timer:
    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = defaultdict(list)

    async def __call__(self, name: str, aw: Awaitable[T]) -> T:
        t = time.perf_counter()
        value = await aw
        self.samples[name].append(time.perf_counter() - t)
        return value

    def table(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for name, values in self.samples.items():
            quarter = max(1, len(values) // 4)
            quarters = [values[i : i + quarter] for i in range(0, len(values), quarter)][:4]
            out[name] = {
                "calls": len(values),
                "mean_ms": round(1000 * sum(values) / len(values), 3),
                "total_s": round(sum(values), 3),
                "mean_ms_by_quarter": [round(1000 * sum(q) / len(q), 3) for q in quarters],
            }
        return out


async def _prepared(url: str, runnable: int, finished: int = 0) -> None:
    from aol.db.migrate import upgrade

    await upgrade(url)
    conn = await db.connect(url)
    try:
        if finished:
            await conn.execute(FILL_FINISHED, finished)
            await conn.execute(FILL_FINISHED_LOGS)
        if runnable:
            await conn.execute(FILL_RUNNABLE, runnable)
        await conn.execute("VACUUM ANALYZE aol.actions")
        await conn.execute("VACUUM ANALYZE aol.execution_logs")
    finally:
        await conn.close()


def _finish_args(sql: str, rows: list[Any], epoch: int, tick: int) -> tuple[Any, ...]:
    """Arguments of a batched finish for claimed `rows`; aol's own statement also takes the
    attempt number the rows share ($9, NULL when they differ)."""
    k = len(rows)
    attempts = [r["attempts"] for r in rows]
    args: tuple[Any, ...] = (
        [r["id"] for r in rows],
        epoch,
        attempts,
        tick,
        [0.01] * k,
        [None] * k,
        [None] * k,
        [None] * k,
    )
    if "$9" in sql:
        shared = set(attempts)
        args += (shared.pop() if len(shared) == 1 else None,)
    return args


def _finish_sql(per_action: bool) -> tuple[str, str]:
    """The finish statement a variant sends, and where it comes from.

    Per action: the single-row statement of aol's schema-0003 queries.sql (`finish_action`),
    frozen here so the comparison outlives it. Batched: aol's own `finish_actions` when this
    aol has it, else the same statement frozen here (`BATCH_FINISH`).
    """
    from aol.db import store

    if per_action:
        return FINISH_ONE, "bench copy of aol's former finish_action (one row)"
    if "finish_actions" in store.queries():
        return store.q("finish_actions"), "aol's finish_actions"
    return BATCH_FINISH, "bench's batched finish (aol has no finish_actions)"


async def hot_path(admin_url: str, n: int, batch: int, variant: str, say: Say) -> dict[str, Any]:
    from aol.db import store
    from aol.db.connect import create_pool, init_connection
    from aol.model import TickOutcome as Outcome

    q = store.q
    per_action = variant.startswith("per-action")
    in_one_txn = "in one transaction" in variant
    finish_sql, finish_source = _finish_sql(per_action)
    async with db.fresh_database(admin_url, "aol", "probe") as url:
        await _prepared(url, n)
        lock = await db.connect(url)
        # One connection per concurrent finish for the per-action path (aol sized its pool
        # at batch + 2 for it); the batched path needs few.
        size = batch + 2 if per_action else 4
        if variant.endswith("no pool reset"):
            # asyncpg runs `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
            # RESET ALL` on every release to the pool: one more round trip per statement.
            pool = await asyncpg.create_pool(
                db.plain_url(url),
                min_size=size,
                max_size=size,
                init=init_connection,
                reset=_no_reset,
            )
        else:
            pool = await create_pool(url, min_size=size, max_size=size)
        timer = Timer()
        try:
            epoch = await store.acquire_lease(lock, owner=OWNER, ttl=600)
            done = 0
            tick = 0
            t0 = time.perf_counter()
            while True:
                tick += 1
                t_tick = time.perf_counter()
                await timer("read_flags", pool.fetchrow(q("read_flags")))
                await timer(
                    "rescue_expired_claims", pool.fetch(q("rescue_expired_claims"), epoch, None)
                )
                rows = await timer(
                    "claim_actions", pool.fetch(q("claim_actions"), OWNER, epoch, batch, 30.0)
                )
                # One row of flags with NULL action columns comes back when nothing was
                # claimed: the queue is empty.
                rows = [r for r in rows if r["id"] is not None]
                if not rows:
                    break
                ledger_args = (
                    OWNER,
                    epoch,
                    tick,
                    1.0,
                    str(Outcome.OK),
                    len(rows),
                    len(rows),
                    0,
                    0,
                    None,
                )
                if per_action:
                    t = time.perf_counter()
                    await asyncio.gather(
                        *(
                            timer(
                                "finish, one row (each)",
                                pool.fetchval(
                                    finish_sql,
                                    r["id"],
                                    epoch,
                                    r["attempts"],
                                    tick,
                                    0.01,
                                    None,
                                    None,
                                    None,
                                ),
                            )
                            for r in rows
                        )
                    )
                    timer.samples["finish, one row (all of a tick)"].append(time.perf_counter() - t)
                    await timer("record_tick", pool.execute(q("record_tick"), *ledger_args))
                else:
                    args = _finish_args(finish_sql, rows, epoch, tick)
                    if in_one_txn:
                        async with pool.acquire() as conn, conn.transaction():
                            await timer("finish, batched", conn.fetch(finish_sql, *args))
                            await timer("record_tick", conn.execute(q("record_tick"), *ledger_args))
                    else:
                        await timer("finish, batched", pool.fetch(finish_sql, *args))
                        await timer("record_tick", pool.execute(q("record_tick"), *ledger_args))
                timer.samples["tick"].append(time.perf_counter() - t_tick)
                done += len(rows)
            elapsed = time.perf_counter() - t0
            logged = await lock.fetchval(
                "SELECT count(*) FROM aol.execution_logs WHERE event = 'action_succeeded'"
            )
        finally:
            await pool.close()
            await lock.close()
    rate = done / elapsed
    say(f"  {variant:<40} batch {batch:>3}: {rate:>8,.0f} actions/s ({done} actions, {tick} ticks)")
    for name, row in timer.table().items():
        by_q = " / ".join(f"{x:.2f}" for x in row["mean_ms_by_quarter"])
        say(
            f"      {name:<32} {row['calls']:>6} calls  mean {row['mean_ms']:>7.3f} ms"
            f"  (by quarter of the run: {by_q})"
        )
    return {
        "variant": variant,
        "finish_statement": finish_source,
        "batch": batch,
        "actions": done,
        "rate": round(rate, 1),
        "log_rows": logged,
        "statements": timer.table(),
    }


async def plans(
    admin_url: str, finished: int, runnable: int, say: Say, churn: int = 0
) -> dict[str, Any]:
    """Plans of the hot statements; with `churn`, after that many actions were claimed and
    finished (batches of 50, no VACUUM in between, as in a drain on this server, where
    autovacuum is off)."""
    from aol.db import store

    q = store.q
    label = f"{finished:>9,} finished" + (f", after {churn:,} claimed+finished" if churn else "")
    out: dict[str, Any] = {"finished": finished, "runnable": runnable, "churn": churn}
    async with db.fresh_database(admin_url, "aol", f"plan{finished}") as url:
        await _prepared(url, runnable, finished)
        conn = await db.connect(url)
        try:
            epoch = await store.acquire_lease(conn, owner=OWNER, ttl=600)
            batched, _ = _finish_sql(per_action=False)

            tick = 0
            while tick * 50 < churn:
                tick += 1
                rows = await conn.fetch(q("claim_actions"), OWNER, epoch, 50, 30.0)
                await conn.fetch(batched, *_finish_args(batched, rows, epoch, tick))
            # A committed claim, so the finish statements have running rows to work on.
            rows = await conn.fetch(q("claim_actions"), OWNER, epoch, 50, 30.0)
            target = rows[0]
            for name, sql, args in (
                ("claim_actions (50)", q("claim_actions"), (OWNER, epoch, 50, 30.0)),
                ("claim_actions (1000)", q("claim_actions"), (OWNER, epoch, 1000, 30.0)),
                (
                    "finish, one row",
                    FINISH_ONE,
                    (target["id"], epoch, target["attempts"], 1, 0.01, None, None, None),
                ),
                ("finish, batched (50)", batched, _finish_args(batched, list(rows), epoch, 1)),
                ("next_wakeup", q("next_wakeup"), ()),
            ):
                tr = conn.transaction()
                await tr.start()
                try:
                    lines = [
                        str(r[0])
                        for r in await conn.fetch(
                            "EXPLAIN (ANALYZE, BUFFERS, TIMING OFF) " + sql, *args
                        )
                    ]
                finally:
                    await tr.rollback()
                out[name] = lines
                exec_line = next((ln for ln in lines if ln.startswith("Execution Time")), "")
                buffers = next((ln.strip() for ln in lines if ln.strip().startswith("Buffers")), "")
                seq = (
                    " [Seq Scan on aol.actions]"
                    if any("Seq Scan on actions" in ln for ln in lines)
                    else ""
                )
                say(f"  {label}, {name}: {exec_line} ({buffers}){seq}")
        finally:
            await conn.close()
    return out


PICKED_CTE = "), picked AS (\n    SELECT id FROM suspect UNION ALL SELECT id FROM batch\n)"
ANY_JOIN_BACK = """UPDATE aol.actions a
   SET status = 'running', attempts = a.attempts + 1, claimed_by = $1, claim_epoch = $2,
       claimed_at = now(), claim_expires_at = now() + make_interval(secs => $4),
       updated_at = now()
 WHERE a.id = ANY (ARRAY(SELECT id FROM suspect) || ARRAY(SELECT id FROM batch))
RETURNING a.id, a.idempotency_key, a.action_type, a.payload, a.status, a.priority,
          a.attempts, a.max_attempts, a.not_before, a.claim_epoch, a.created_at"""


async def claim_join_back(
    admin_url: str, finished_levels: tuple[int, ...], batch: int, say: Say
) -> list[dict[str, Any]]:
    """aol's claim_actions against the same CTEs joined back through `id = ANY(ARRAY(...))`.

    When most of the table is runnable, the planner joins the picked ids back with a hash
    join over a sequential scan of aol.actions; the ANY form keeps to the primary key.
    Needs the claim statement of schema 0005 (suspect + batch CTEs); skipped otherwise.
    """
    from aol.db import store

    orig = store.q("claim_actions")
    head, found, _ = orig.partition("UPDATE aol.actions a")
    if not found or PICKED_CTE not in head:
        say("  claim join-back: skipped (aol's claim_actions no longer has the picked CTE)")
        return []
    alt = head.replace(PICKED_CTE, ")") + ANY_JOIN_BACK
    out: list[dict[str, Any]] = []
    for finished in finished_levels:
        async with db.fresh_database(admin_url, "aol", f"joinback{finished}") as url:
            await _prepared(url, 100_000, finished)
            conn = await db.connect(url)
            try:
                epoch = await store.acquire_lease(conn, owner=OWNER, ttl=600)
                for name, sql in (("aol claim_actions", orig), ("= ANY(ARRAY(...))", alt)):
                    times: list[float] = []
                    seq = False
                    for _ in range(5):
                        tr = conn.transaction()
                        await tr.start()
                        try:
                            plan = [
                                str(r[0])
                                for r in await conn.fetch(
                                    "EXPLAIN (ANALYZE, BUFFERS) " + sql, OWNER, epoch, batch, 30.0
                                )
                            ]
                        finally:
                            await tr.rollback()
                        times.append(float(plan[-1].split(":")[1].split()[0]))
                        seq = seq or any("Seq Scan on actions" in ln for ln in plan)
                    median = sorted(times)[len(times) // 2]
                    out.append(
                        {"finished": finished, "statement": name, "median_ms": median, "seq": seq}
                    )
                    say(
                        f"  {finished:>9,} finished, 100,000 runnable, claim of {batch}: "
                        f"{name:<20} median {median:6.2f} ms"
                        + (" [Seq Scan on aol.actions]" if seq else "")
                    )
            finally:
                await conn.close()
    return out


async def notify_gate(admin_url: str, clients: int, seconds: float, say: Say) -> list[Any]:
    system = Aol()
    results: list[dict[str, Any]] = []
    async with db.fresh_database(admin_url, "aol", "gate") as url:
        await system.install(url)
        conn = await db.connect(url)
        listener = await db.connect(url)
        busy = await db.connect(url)
        await listener.add_listener("aol_wakeup", lambda *_: None)
        try:
            for mode in ("trigger", "no trigger", "gated trigger, worker busy"):
                if mode == "no trigger":
                    await conn.execute(
                        "ALTER TABLE aol.actions DISABLE TRIGGER actions_notify_insert"
                    )
                elif mode.startswith("gated"):
                    await conn.execute(
                        "ALTER TABLE aol.actions ENABLE TRIGGER actions_notify_insert"
                    )
                    await conn.execute(GATED_TRIGGER)
                    await busy.execute(f"SELECT pg_advisory_lock({K_BUSY})")
                await conn.execute("TRUNCATE aol.actions, aol.execution_logs")
                await conn.execute("CHECKPOINT")
                res = await _enqueue_for(system, url, clients, seconds, mode.replace(" ", ""))
                res["mode"] = mode
                results.append(res)
                say(
                    f"  {mode:<28} {clients} clients: {res['commits_per_s']:>8,.0f} commits/s "
                    f"(commit p50 {res['commit']['p50_ms']:.2f} ms, "
                    f"p99 {res['commit']['p99_ms']:.2f} ms)"
                )
        finally:
            await busy.close()
            await listener.close()
            await conn.close()
    return results


async def main(args: argparse.Namespace, say: Say) -> int:
    from bench.config import Config

    run = Run(config=Config(database_url=args.database_url), command="probe")
    run.open()
    try:
        say("== hot path, statements timed by the client (no handler, no Python logging)")
        for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
            res = await hot_path(args.database_url, args.n, args.batch_size, variant, say)
            run.record("probe-hot-path", **res)
        if args.big_batch:
            # The per-action path cannot run this batch size (its pool would need batch + 2
            # connections, more than max_connections); the batched variants can.
            for variant in ("batched finish", "batched finish + ledger in one transaction"):
                res = await hot_path(args.database_url, args.n, args.big_batch, variant, say)
                run.record("probe-hot-path", **res)
        say("== plans (EXPLAIN ANALYZE, BUFFERS; rolled back)")
        levels = [(0, 0), (100_000, 0), (args.finished, 0), (0, args.churn)]
        for finished, churn in dict.fromkeys(levels):
            res = await plans(args.database_url, finished, 100_000, say, churn=churn)
            run.record("probe-plan", **res)
        say("== claim join-back (EXPLAIN ANALYZE, median of 5, rolled back)")
        jb = await claim_join_back(args.database_url, (0, 100_000), 1000, say)
        run.record("probe-claim-join-back", levels=jb)
        say("== NOTIFY at commit: aol.enqueue from 32 clients")
        gate = await notify_gate(args.database_url, 32, 3.0, say)
        run.record("probe-notify", levels=gate)
        say(f"results: {run.jsonl_path}")
    finally:
        run.close()
    return 0
