"""The dashboard in headless Chromium against a real database and a real worker: the
figures shown are the database's and follow it without a reload; Pause stops a running
worker from claiming; Retry on a dead action makes it run to succeeded."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest

from aol.settings import Settings
from tests.factory import insert_action
from tests.waiting import wait_for
from tests.web.live import CHROMIUM, HAVE_PLAYWRIGHT, SKIP_REASON, chromium, served
from tests.web.page import TOKEN, db_counts, db_flags
from tests.web.seed import Seeded
from tests.worker import handlers as h

if TYPE_CHECKING:
    from playwright.async_api import Page

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None or not HAVE_PLAYWRIGHT, reason=SKIP_REASON),
]

# Flag changes and retries wake the worker by NOTIFY; a long scan proves it.
IDLE_SCAN = 60.0


@pytest.fixture
async def base_url(web_settings: Settings, pool: asyncpg.Pool[Any]) -> AsyncIterator[str]:
    async with served(web_settings, pool) as url:
        yield url


@pytest.fixture
async def page(base_url: str) -> AsyncIterator[Page]:
    async with chromium() as browser:
        context = await browser.new_context(
            base_url=base_url, viewport={"width": 1400, "height": 1000}
        )
        tab: Page = await context.new_page()
        try:
            yield tab
        finally:
            await context.close()


async def log_in(page: Page, next_path: str = "/") -> None:
    await page.goto(f"/login?next={next_path}")
    await page.fill("input[name=name]", "alice")
    await page.fill("input[name=token]", TOKEN)
    await page.click("button[type=submit]")
    await page.wait_for_selector("[data-operator]")


async def test_the_page_shows_the_database_and_follows_it_without_a_reload(
    page: Page, pool: asyncpg.Pool[Any], seeded: Seeded
) -> None:
    from playwright.async_api import expect

    await page.goto("/")
    counts = await db_counts(pool)
    for status, n in counts.items():
        assert await page.inner_text(f'[data-count="{status}"]') == str(n)
    assert await page.inner_text('[data-count="total"]') == str(sum(counts.values()))
    assert await page.get_attribute("[data-lease-state]", "data-lease-state") == "held"
    dead_rows = page.locator("table[data-actions] tbody tr[data-status=dead]")
    await expect(dead_rows).to_have_count(counts["dead"])

    # The database changes; the page follows by itself.
    await insert_action(pool, status="dead", attempts=3, last_error="late failure")
    await pool.execute("UPDATE aol.lease SET expires_at = now() - interval '1 s'")
    await expect(page.locator('[data-count="dead"]')).to_have_text(
        str(counts["dead"] + 1), timeout=10_000
    )
    await expect(page.locator("[data-lease-state]")).to_have_attribute("data-lease-state", "stale")
    await expect(dead_rows).to_have_count(counts["dead"] + 1)


async def test_pause_from_the_page_stops_a_running_worker_claiming(
    page: Page, pool: asyncpg.Pool[Any], settings: Settings, db_url: str
) -> None:
    from playwright.async_api import expect

    # A paused worker is not woken by enqueues (it sleeps without the wake-up lock), so it
    # looks on its scan interval: short here, so that paused ticks follow the insert.
    async with h.background_worker(settings.with_(scan_interval=0.5), db_url, h.registry()):
        await h.wait_outcome(pool, "idle")
        await log_in(page)

        await page.fill("#controls input[name=reason]", "deploying the mail relay")
        await page.click("button[data-op=pause]")

        await expect(page.locator("#flash")).to_contain_text("paused")
        flags = await db_flags(pool)
        assert flags["paused"] is True
        assert flags["reason"] == "alice (dashboard): deploying the mail relay"
        await h.wait_outcome(pool, "paused")  # woken by the flag change: a paused tick
        await expect(page.locator('[data-flag="paused"]')).to_have_attribute("data-value", "true")

        paused_ticks = (await h.outcomes(pool)).count("paused")
        action_id = await insert_action(pool, action_type=h.OK)

        async def another_paused_tick() -> bool:
            return (await h.outcomes(pool)).count("paused") > paused_ticks

        await wait_for(another_paused_tick, what="a paused tick after the insert")
        row = await h.action(pool, action_id)
        assert (row["status"], row["attempts"], row["claim_epoch"]) == ("pending", 0, None)

        await page.fill("#controls input[name=reason]", "relay is back")
        await page.click("button[data-op=resume]")
        done = await h.wait_status(pool, action_id, "succeeded", timeout=10)
        assert done["attempts"] == 1


async def test_retry_on_a_dead_action_runs_it_to_succeeded(
    page: Page, pool: asyncpg.Pool[Any], settings: Settings, db_url: str
) -> None:
    from playwright.async_api import expect

    dead = await insert_action(
        pool,
        action_type=h.OK,
        status="dead",
        attempts=3,
        max_attempts=3,
        last_error="RuntimeError: partner was down",
        sql_finished_at="now()",
    )
    async with h.background_worker(settings.with_(scan_interval=IDLE_SCAN), db_url, h.registry()):
        await h.wait_outcome(pool, "idle")
        await log_in(page)

        await page.click(f'tr[data-action-id="{dead}"] button[data-post]')
        dialog = page.locator("#reason-dialog")
        await expect(dialog).to_be_visible()
        await dialog.locator("input[name=reason]").fill("partner is up again")
        await dialog.locator("button[type=submit]").click()

        await expect(page.locator("#flash")).to_contain_text(f"action {dead} goes back to retry")
        row = await h.wait_status(pool, dead, "succeeded", timeout=10)
        assert row["attempts"] == 4
        assert await h.events(pool, dead) == ["action_retried_by_operator", "action_succeeded"]
        message = await pool.fetchval(
            "SELECT message FROM aol.execution_logs WHERE action_id = $1 "
            "AND event = 'action_retried_by_operator'",
            dead,
        )
        assert message == "by alice (dashboard): partner is up again"
        # The page follows: the action has left the dead-letter list.
        await expect(page.locator(f'tr[data-action-id="{dead}"]')).to_have_count(0, timeout=10_000)


async def test_a_refused_control_shows_its_reason_and_changes_nothing(
    page: Page, pool: asyncpg.Pool[Any], seeded: Seeded
) -> None:
    from playwright.async_api import expect

    await log_in(page, next_path="/?status=pending")
    pending = seeded.first("pending")
    await page.click(f'tr[data-action-id="{pending}"] button[data-post]')
    # While the operator types the reason, the worker claims the action.
    await pool.execute(
        "UPDATE aol.actions SET status = 'running', attempts = 1, claim_epoch = 7, "
        "claim_expires_at = now() + interval '1 min' WHERE id = $1",
        pending,
    )
    await page.locator("#reason-dialog input[name=reason]").fill("not needed")
    await page.locator("#reason-dialog button[type=submit]").click()
    await expect(page.locator("#flash")).to_contain_text(
        f"action {pending} is running: only a pending or retry action can be cancelled"
    )
    assert await pool.fetchval("SELECT status FROM aol.actions WHERE id = $1", pending) == "running"
