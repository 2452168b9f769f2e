"""`aol demo`: enqueue a few POST_SOCIAL actions, one of them bad, and run the worker until
every one of them is final, then print what happened and where the artifacts are."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

import click

from aol.client import enqueue
from aol.db import store
from aol.db.connect import ResolvedDatabase, connect
from aol.model import FINAL_STATUSES, ActionId
from aol.settings import Settings
from aol.worker.runner import run_worker

POLL = 0.2
DEMO_POSTS = (
    {
        "platform": "mastodon",
        "content": "Hello from aol: proof mode leaves evidence.",
        "audience": "public",
    },
    {
        "platform": "bluesky",
        "content": "Every action runs once, or not at all.",
        "audience": "followers",
    },
    {
        "platform": "linkedin",
        "content": "Paused, killed or rehearsed with one switch.",
        "audience": "private",
    },
    {"platform": "x", "content": "This one has a typo in its audience.", "audience": "pubic"},
)


async def run_demo(settings: Settings, db: ResolvedDatabase, *, timeout: float) -> int:
    conn = await connect(db.url, application_name="aol-demo")
    try:
        flags = await store.read_flags(conn)
        if flags.killed or flags.paused or not flags.proof_mode:
            click.echo(
                f"aol demo: refusing to run with paused={flags.paused} killed={flags.killed} "
                f"proof_mode={flags.proof_mode}; the demo needs `aol resume`, "
                "`aol kill --clear` and `aol proof on`",
                err=True,
            )
            return 1
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        ids: list[ActionId] = []
        for n, post in enumerate(DEMO_POSTS, start=1):
            ids.append(
                await enqueue(conn, "POST_SOCIAL", dict(post), idempotency_key=f"demo-{stamp}-{n}")
            )
        # Enqueue the first one again: same key, same id, nothing inserted.
        again = await enqueue(
            conn, "POST_SOCIAL", dict(DEMO_POSTS[0]), idempotency_key=f"demo-{stamp}-1"
        )
        click.echo(
            f"enqueued actions {', '.join(map(str, ids))} "
            f"(re-enqueueing demo-{stamp}-1 returned id {again} again)"
        )

        stop = asyncio.Event()
        worker = asyncio.create_task(
            run_worker(
                settings.with_(scan_interval=min(settings.scan_interval, 5.0)), db.url, stop=stop
            )
        )
        try:
            async with asyncio.timeout(timeout):
                while not worker.done():
                    rows = [await store.read_action(conn, action_id=i) for i in ids]
                    if all(r is not None and r["status"] in FINAL_STATUSES for r in rows):
                        break
                    await asyncio.sleep(POLL)
        except TimeoutError:
            click.echo(f"aol demo: actions not final after {timeout:g}s", err=True)
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await worker
        return await _report(conn, ids, db, settings)
    finally:
        await conn.close()


async def _report(
    conn: store.Executor, ids: list[ActionId], db: ResolvedDatabase, settings: Settings
) -> int:
    click.echo("")
    click.echo("result:")
    ok = True
    for action_id in ids:
        row = await store.read_action(conn, action_id=action_id)
        assert row is not None
        logs = await store.list_action_logs(conn, action_id=action_id)
        artifact = next((r for r in logs if r["artifact_ref"]), None)
        line = (
            f"  #{row['id']} {row['idempotency_key']}: {row['status']} "
            f"after {row['attempts']} attempt(s)"
        )
        click.echo(line)
        if artifact:
            click.echo(f"      artifact {artifact['artifact_ref']}")
            click.echo(f"      sha256   {artifact['artifact_sha256']}")
        if row["last_error"]:
            click.echo(f"      error    {row['last_error']}")
        ok = ok and row["status"] in FINAL_STATUSES
    click.echo("")
    click.echo(f"artifacts live under {settings.data_dir / 'artifacts'}")
    if db.embedded_root is not None:
        click.echo(f"the embedded PostgreSQL lives in {db.embedded_root}")
    click.echo("see it all with: aol status; aol dlq list")
    return 0 if ok else 1
