"""The dashboard served by a real uvicorn server inside the test's event loop, and a
headless Chromium to look at it (Playwright, with the system's Chromium)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import shutil
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import uvicorn

from aol.settings import Settings
from aol.web.app import create_app
from tests.waiting import wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
HAVE_PLAYWRIGHT = importlib.util.find_spec("playwright") is not None
SKIP_REASON = (
    "browser tests need Playwright (pip install -e '.[dev]') and a Chromium on PATH "
    "(apt-get install chromium); found: "
    f"playwright={'yes' if HAVE_PLAYWRIGHT else 'no'}, chromium={CHROMIUM or 'no'}"
)


@contextlib.asynccontextmanager
async def served(settings: Settings, pool: asyncpg.Pool[Any]) -> AsyncIterator[str]:
    """Serve the dashboard on a free loopback port; yields its base URL."""
    config = uvicorn.Config(
        create_app(settings, pool),
        host="127.0.0.1",
        port=0,
        log_config=None,
        access_log=False,
        lifespan="off",
        log_level="warning",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(), name="dashboard")
    try:
        await wait_for(
            lambda: asyncio.sleep(0, result=server.started or task.done()),
            timeout=10,
            what="the dashboard to listen",
        )
        if task.done():
            task.result()
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=10)


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    """A headless Chromium browser (Playwright's Browser)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            await browser.close()
