"""What the payload's size costs aol's claim and finish, schema against schema.

`python -m bench payload` migrates a fresh database to each schema revision named (by
default 0006, where the payload checks were table constraints evaluated on every UPDATE,
and head, where they belong to the payload's domain), enqueues `--n` actions with
payloads of each size, then claims and finishes them in batches of `--batch-size` with
aol's own statements, timing each statement from the client. No worker, no handlers: the
statements alone, so the figures isolate what the database does per batch.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

from bench import db

OWNER = "bench-payload"
SIZES = (8, 1000, 4000, 16000)


def payload_of(size: int) -> str:
    """A JSON object of about `size` bytes of text, mostly a short-word string (so it is
    not trivially compressible, like the text of a post)."""
    words = " ".join(f"w{i % 997}" for i in range(max(0, size // 5)))
    return '{"text": "' + words[: max(0, size - 12)] + '"}'


async def _measure(url: str, size: int, n: int, batch: int) -> dict[str, float]:
    from aol.db.store import q

    conn = await db.connect(url)
    try:
        await conn.execute("TRUNCATE aol.actions CASCADE")
        await conn.execute(
            "INSERT INTO aol.actions (idempotency_key, action_type, payload) "
            "SELECT 'p' || g, 'NOOP', $1::jsonb FROM generate_series(1, $2::int) g",
            payload_of(size),
            n,
        )
        await conn.execute("VACUUM ANALYZE aol.actions")
        await conn.execute("CHECKPOINT")
        epoch = await conn.fetchval(
            "UPDATE aol.lease SET owner = $1, epoch = epoch + 1 WHERE id = 1 RETURNING epoch",
            OWNER,
        )
        claims: list[float] = []
        finishes: list[float] = []
        while True:
            started = time.perf_counter()
            rows = await conn.fetch(q("claim_actions"), OWNER, epoch, batch, 60.0)
            rows = [r for r in rows if r["id"] is not None]
            if not rows:
                break
            claims.append(time.perf_counter() - started)
            ids = [r["id"] for r in rows]
            k = len(ids)
            started = time.perf_counter()
            done = await conn.fetch(
                q("finish_actions"),
                ids,
                epoch,
                [r["attempts"] for r in rows],
                1,
                [0.0] * k,
                [None] * k,
                [None] * k,
                [None] * k,
                1,  # the attempt number every row shares: all are fresh
            )
            finishes.append(time.perf_counter() - started)
            if len(done) != k:
                raise RuntimeError(f"finish wrote {len(done)} of {k} rows")
        return {
            "claim_ms": round(statistics.median(claims) * 1000, 2),
            "finish_ms": round(statistics.median(finishes) * 1000, 2),
            "batches": len(claims),
        }
    finally:
        await conn.close()


async def main(args: argparse.Namespace, say: Callable[[str], None]) -> int:
    from aol.db.migrate import upgrade

    rows: list[dict[str, Any]] = []
    for revision in args.revisions:
        async with db.fresh_database(args.database_url, "aol", "payload") as url:
            await upgrade(url, revision)
            for size in args.sizes:
                figures = await _measure(url, size, args.n, args.batch_size)
                rows.append({"revision": revision, "payload_bytes": size, **figures})
                say(f"schema {revision}, payload {size} B: {figures}")
    say("")
    say(f"claim and finish of {args.batch_size} actions, median ms over {args.n} actions")
    say("")
    say("| schema | payload bytes | claim ms | finish ms |")
    say("|---|--:|--:|--:|")
    for row in rows:
        say(
            f"| {row['revision']} | {row['payload_bytes']:,} | {row['claim_ms']} "
            f"| {row['finish_ms']} |"
        )
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument(
        "--sizes",
        type=lambda v: [int(x) for x in v.split(",")],
        default=list(SIZES),
        help="payload sizes in bytes of JSON text (8,1000,4000,16000)",
    )
    p.add_argument(
        "--revisions",
        type=lambda v: v.split(","),
        default=["0006", "head"],
        help="schema revisions to compare (0006,head)",
    )
