"""Take docs/dashboard.png: the dashboard over realistic data, in headless Chromium.

    AOL_TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
        python -m tests.web.screenshot [--out docs/dashboard.png]

Makes a scratch database on that server, migrates it, enqueues a mix of action types
(some fail, one for good), keeps an hour of earlier ticks, and runs a real worker in this
process while the picture is taken, so the lease is held and the recent ticks are real.
The scratch database is dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import asyncpg

from aol.actions import post_social
from aol.actions.context import HandlerContext
from aol.actions.registry import Registry
from aol.db import store
from aol.db.connect import create_pool
from aol.db.migrate import upgrade
from aol.errors import InvalidPayload
from aol.settings import Settings
from aol.worker.runner import run_worker
from tests.conftest import scratch_database
from tests.factory import insert_action
from tests.waiting import wait_for
from tests.web.live import chromium, served
from tests.web.page import TOKEN
from tests.web.seed import add_ticks

ROOT = Path(__file__).resolve().parents[2]


async def send_email(ctx: HandlerContext) -> str:
    to = ctx.payload.get("to")
    if not isinstance(to, str) or not to.endswith(".org"):
        raise InvalidPayload(f"SEND_EMAIL: recipient {to!r} is refused by the relay")
    artifact = ctx.write_artifact({"would_send_to": to, "subject": ctx.payload.get("subject")})
    return f"proof: would send to {to}; {artifact.path}"


async def call_partner_api(ctx: HandlerContext) -> str:
    if ctx.attempt == 1:
        raise TimeoutError("partner API did not answer within 15 s")
    return "HTTP 201 from partner"


async def render_video(ctx: HandlerContext) -> str:
    await asyncio.sleep(12)
    return "rendered"


def registry() -> Registry:
    reg = Registry()
    reg.register(post_social.ACTION_TYPE, post_social.post_social)
    reg.register("SEND_EMAIL", send_email)
    reg.register("CALL_PARTNER_API", call_partner_api)
    reg.register("RENDER_VIDEO", render_video)
    return reg


async def seed(pool: asyncpg.Pool[Any]) -> None:
    # An earlier worker held the lease for the past hour; its ticks fill the charts.
    await pool.execute(
        "UPDATE aol.lease SET owner = 'worker-b:311', epoch = 6, released_at = now() - "
        "interval '1 min', expires_at = now() - interval '1 min' WHERE id = 1"
    )
    await add_ticks(pool, minutes=58, epoch=6)
    topics = ["Release 1.4 is out", "Maintenance tonight 22:00 UTC", "We are hiring", "Q3 notes"]
    for i, topic in enumerate(topics * 2):
        await insert_action(
            pool,
            idempotency_key=f"post-{i}",
            payload={"platform": ["mastodon", "x"][i % 2], "content": topic, "audience": "public"},
        )
    await insert_action(pool, idempotency_key="post-bad", payload={"platform": "x"})
    for i, to in enumerate(["ops@example.org", "board@example.org", "nobody@invalid"]):
        await insert_action(
            pool,
            action_type="SEND_EMAIL",
            idempotency_key=f"mail-{i}",
            payload={"to": to, "subject": "weekly report"},
        )
    for i in range(2):
        await insert_action(
            pool,
            action_type="CALL_PARTNER_API",
            idempotency_key=f"order-{i}",
            payload={"endpoint": "/v1/orders", "order": 990 + i},
        )
    await insert_action(
        pool,
        action_type="SEND_EMAIL",
        idempotency_key="mail-later",
        payload={"to": "team@example.org", "subject": "reminder"},
        sql_not_before="now() + interval '2 hours'",
    )
    dup = await insert_action(
        pool,
        idempotency_key="post-dup",
        payload={"platform": "x", "content": "duplicate", "audience": "public"},
        sql_not_before="now() + interval '1 hour'",
    )
    await store.cancel_waiting_action(
        pool, action_id=dup, changed_by="alice (dashboard)", reason="duplicate of post-0"
    )


async def take(admin_url: str, out: Path) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="aol-shot-"))
    async with scratch_database(admin_url, "aol_shot") as url:
        await upgrade(url)
        pool = await create_pool(url, application_name="aol-screenshot")
        try:
            await seed(pool)
            settings = Settings(
                database_url=url,
                data_dir=data_dir,
                owner="worker-a:4242",
                scan_interval=1.0,
                backoff_base=2.0,
                dashboard_token=TOKEN,
            )
            stop = asyncio.Event()
            worker = asyncio.create_task(run_worker(settings, url, registry=registry(), stop=stop))

            async def settled() -> bool:
                counts = await store.count_by_status(pool)
                return counts["pending"] == 1 and counts["retry"] == 0 and counts["running"] == 0

            await wait_for(settled, timeout=30, what="the seeded actions to finish")
            await store.set_flags(
                pool, proof_mode=True, reason="alice (dashboard): dry run until launch day"
            )
            await insert_action(
                pool, action_type="RENDER_VIDEO", idempotency_key="video-1", payload={"id": 7}
            )

            async def running() -> bool:
                return (await store.count_by_status(pool))["running"] == 1

            await wait_for(running, timeout=5, what="the worker to claim the video")
            async with served(settings, pool) as base, chromium() as browser:
                page = await browser.new_page(
                    base_url=base, viewport={"width": 1400, "height": 1300}
                )
                await page.goto("/login?next=/")
                await page.fill("input[name=name]", "alice")
                await page.fill("input[name=token]", TOKEN)
                await page.click("button[type=submit]")
                await page.wait_for_selector("[data-operator]")
                out.parent.mkdir(parents=True, exist_ok=True)
                await page.screenshot(path=str(out))
            stop.set()
            await asyncio.wait_for(worker, timeout=30)
        finally:
            await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    args = parser.parse_args()
    admin_url = os.environ.get("AOL_TEST_DATABASE_URL")
    if not admin_url:
        sys.exit("set AOL_TEST_DATABASE_URL to a PostgreSQL URL whose user may CREATE DATABASE")
    asyncio.run(take(admin_url, args.out))
    print(f"wrote {args.out}")  # noqa: T201


if __name__ == "__main__":
    main()
