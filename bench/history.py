"""`python -m bench history`: what a long history costs aol's operator side.

For each level of finished actions (with one execution log row each), in a fresh
`aol_bench_*` database with 1,000 pending and 100 dead actions beside them:

* dashboard refresh (`aol.web.views.read_overview`, on a pool set up as the dashboard's)
  for the dead-letter view (the default), all actions and succeeded ones: the first
  refresh (it waits for the reads kept between refreshes) and the median of the next;
* the reads that changed (counts, action types, the action list) as a refresh makes them
  now and as it made them before (every count, every action type and the former action
  list statement, frozen here), medians;
* a worker's `/metrics` database read (`DatabaseGauges.refresh`), median;
* `aol prune` of the older half, batch by batch as `aol.retention.prune` does, with
  `actions_finished_idx` and without it (dropped in the throwaway database), each capped
  at `--prune-seconds`: rows per second and the first and last batch times.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench import db

Say = Callable[[str], None]

FILL = """
INSERT INTO aol.actions (idempotency_key, action_type, payload, status, attempts,
                         claimed_by, claim_epoch, claimed_at, claim_expires_at,
                         created_at, updated_at, finished_at)
SELECT 'done-' || g, CASE WHEN g % 3 = 0 THEN 'SEND_EMAIL' ELSE 'POST_SOCIAL' END,
       jsonb_build_object('k', g), CASE WHEN g % 100 = 0 THEN 'cancelled' ELSE 'succeeded' END,
       1, 'bench', 0, t, t, t, t, t
  FROM generate_series(1, $1::int) AS g,
       LATERAL (SELECT now() - make_interval(secs => ($1::int - g + 60) * 5.0) AS t) x
"""
FILL_LOGS = """
INSERT INTO aol.execution_logs (action_id, attempt, epoch, tick, level, event, duration_ms)
SELECT id, 1, 0, 0, 'info', 'action_succeeded', 0.01 FROM aol.actions
"""
FILL_LIVE = """
INSERT INTO aol.actions (idempotency_key, action_type, payload, status, attempts, updated_at,
                         finished_at)
SELECT 'live-' || g, 'POST_SOCIAL', '{}', CASE WHEN g <= 100 THEN 'dead' ELSE 'pending' END,
       CASE WHEN g <= 100 THEN 3 ELSE 0 END, now(), CASE WHEN g <= 100 THEN now() END
  FROM generate_series(1, 1100) AS g
"""
# The action list as every refresh read it before it was read part by part (frozen).
FORMER_LIST = """
SELECT id, idempotency_key, action_type, payload, status, priority, attempts, max_attempts,
       not_before, last_error, claimed_by, claim_epoch, created_at, updated_at, finished_at
  FROM aol.actions
 WHERE ($1::text IS NULL OR status = $1::text)
   AND ($2::text IS NULL OR action_type = $2::text)
 ORDER BY updated_at DESC, id DESC
 LIMIT $3
"""
VIEWS = {"dead letter (default)": "dead", "all actions": None, "succeeded": "succeeded"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--finished",
        default="0,100000,1000000",
        help="finished actions per level, comma-separated (0,100000,1000000)",
    )
    parser.add_argument("--repeat", type=int, default=7, help="refreshes timed per view (7)")
    parser.add_argument(
        "--prune-seconds", type=float, default=30.0, help="cap of each prune run (30)"
    )


async def _median_ms(fn: Callable[[], Awaitable[Any]], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        await fn()
        times.append(1000 * (time.perf_counter() - started))
    return round(statistics.median(times), 2)


async def _prune(url: str, older_than_s: float, cap_s: float) -> dict[str, Any]:
    from aol.db import store

    conn = await db.connect(url)
    batches: list[float] = []
    rows = 0
    started = time.perf_counter()
    try:
        while time.perf_counter() - started < cap_s:
            t = time.perf_counter()
            n = await store.prune_actions(
                conn, statuses=("succeeded", "cancelled"), older_than_s=older_than_s, batch=1000
            )
            if n == 0:
                break
            batches.append(1000 * (time.perf_counter() - t))
            rows += n
    finally:
        await conn.close()
    elapsed = time.perf_counter() - started
    return {
        "rows": rows,
        "seconds": round(elapsed, 2),
        "rows_per_s": round(rows / elapsed) if elapsed else None,
        "first_batch_ms": round(batches[0], 1) if batches else None,
        "last_batch_ms": round(batches[-1], 1) if batches else None,
        "finished": time.perf_counter() - started < cap_s,
    }


async def _level(
    admin_url: str, finished: int, repeat: int, cap_s: float, say: Say
) -> dict[str, Any]:
    from aol.db import store
    from aol.db.connect import create_pool
    from aol.db.migrate import upgrade
    from aol.web import views
    from aol.worker.metrics import DatabaseGauges

    out: dict[str, Any] = {"finished": finished}
    async with db.fresh_database(admin_url, "aol", f"history{finished}") as url:
        await upgrade(url)
        conn = await db.connect(url)
        try:
            if finished:
                await conn.execute(FILL, finished)
            await conn.execute(FILL_LIVE)
            await conn.execute(FILL_LOGS)
            await conn.execute("VACUUM ANALYZE aol.actions")
            await conn.execute("VACUUM ANALYZE aol.execution_logs")
        finally:
            await conn.close()

        pool = await create_pool(url, min_size=1, max_size=5, custom_plans=True)
        slow = views.SlowReads.on(pool)
        try:
            started = time.perf_counter()
            await views.read_overview(pool, views.Filters(), slow)
            out["first_refresh_ms"] = round(1000 * (time.perf_counter() - started), 2)
            for label, status in VIEWS.items():

                async def refresh(s: str | None = status) -> None:
                    await views.read_overview(pool, views.Filters(status=s), slow)

                out[f"refresh_ms: {label}"] = await _median_ms(refresh, repeat)

                async def reads_now(s: str | None = status) -> None:
                    await slow.finished_counts.get()
                    await slow.action_types.get()
                    async with pool.acquire() as c:
                        await store.count_live(c)
                        await store.list_actions(c, status=s, limit=views.ACTIONS_SHOWN)

                async def reads_before(s: str | None = status) -> None:
                    async with pool.acquire() as c:
                        await store.count_by_status(c)
                        await store.list_action_types(c)
                        await c.fetch(FORMER_LIST, s, None, views.ACTIONS_SHOWN)

                out[f"reads_now_ms: {label}"] = await _median_ms(reads_now, repeat)
                out[f"reads_before_ms: {label}"] = await _median_ms(reads_before, repeat)
        finally:
            await slow.close()
            await pool.close()

        gauges = DatabaseGauges(url)
        try:
            await gauges.refresh()  # the first scrape counts the history
            out["metrics_read_ms"] = await _median_ms(gauges.refresh, repeat)
        finally:
            await gauges.close()

        if finished:
            half = finished * 5.0 / 2
            out["prune_with_index"] = await _prune(url, half, cap_s)
            conn = await db.connect(url)
            try:  # as many rows again to delete, and no index to find them by
                await conn.execute("DROP INDEX aol.actions_finished_idx")
                await conn.execute(
                    "UPDATE aol.actions SET finished_at = finished_at - interval '100 days' "
                    "WHERE finished_at IS NOT NULL AND status <> 'dead' AND id % 2 = 0"
                )
                await conn.execute("VACUUM ANALYZE aol.actions")
            finally:
                await conn.close()
            out["prune_without_index"] = await _prune(url, 90 * 86400.0, cap_s)
    say(f"  {finished:>9,} finished: {out}")
    return out


async def main(args: argparse.Namespace, say: Say) -> int:
    levels = [int(x) for x in args.finished.split(",") if x.strip()]
    say(f"# python -m bench history --finished {args.finished} (aol only)")
    results = [
        await _level(args.database_url, n, args.repeat, args.prune_seconds, say) for n in levels
    ]
    say("")
    say(
        "| finished | view | whole refresh (ms) | counts, types and list (ms) "
        "| the same, read as before (ms) |"
    )
    say("|--:|---|--:|--:|--:|")
    for r in results:
        for label in VIEWS:
            say(
                f"| {r['finished']:,} | {label} | {r[f'refresh_ms: {label}']} "
                f"| {r[f'reads_now_ms: {label}']} | {r[f'reads_before_ms: {label}']} |"
            )
    say("")
    say("| finished | first refresh (ms) | /metrics read (ms) | prune with index | without |")
    say("|--:|--:|--:|---|---|")
    for r in results:

        def fmt(p: dict[str, Any] | None) -> str:
            if not p:
                return "-"
            done = "" if p["finished"] else " (capped)"
            return (
                f"{p['rows_per_s']:,} rows/s{done}; batch {p['first_batch_ms']} -> "
                f"{p['last_batch_ms']} ms"
            )

        say(
            f"| {r['finished']:,} | {r['first_refresh_ms']} | {r['metrics_read_ms']} "
            f"| {fmt(r.get('prune_with_index'))} | {fmt(r.get('prune_without_index'))} |"
        )
    return 0
