"""Web fixtures: the dashboard app on the test database, an HTTP client, a seeded state.

The client speaks to the ASGI app in-process (httpx's ASGITransport) from a loopback
address; `login` goes through the real login form.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from aol.settings import Settings
from aol.web.app import create_app
from tests.web.page import ORIGIN, TOKEN, csrf_of, field_value
from tests.web.seed import Seeded, seed_every_state


@pytest.fixture
def web_settings(settings: Settings) -> Settings:
    return settings.with_(dashboard_token=TOKEN)


def client_for(
    settings: Settings, pool: asyncpg.Pool[Any], *, client_host: str = "127.0.0.1"
) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_app(settings, pool), client=(client_host, 50123))
    return httpx.AsyncClient(transport=transport, base_url=ORIGIN)


@pytest.fixture
async def client(
    web_settings: Settings, pool: asyncpg.Pool[Any]
) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(web_settings, pool) as c:
        yield c


@pytest.fixture
async def seeded(pool: asyncpg.Pool[Any], data_dir: Path) -> Seeded:
    return await seed_every_state(pool, data_dir)


async def login(client: httpx.AsyncClient, name: str = "alice") -> str:
    """Log in through the form; returns the session's CSRF token."""
    form = await client.get("/login")
    assert form.status_code == 200, form.text
    answer = await client.post(
        "/login",
        data={"name": name, "token": TOKEN, "csrf": field_value(form.text, "csrf"), "next": "/"},
        headers={"Origin": ORIGIN},
    )
    assert answer.status_code == 303, answer.text
    page = await client.get("/")
    return csrf_of(page.text)


@pytest.fixture
async def csrf(client: httpx.AsyncClient) -> str:
    return await login(client)


async def post(
    client: httpx.AsyncClient,
    path: str,
    *,
    csrf: str | None,
    reason: str | None = "test reason",
    origin: str | None = ORIGIN,
    json_answer: bool = False,
) -> httpx.Response:
    data: dict[str, str] = {}
    if csrf is not None:
        data["csrf"] = csrf
    if reason is not None:
        data["reason"] = reason
    headers: dict[str, str] = {}
    if origin is not None:
        headers["Origin"] = origin
    if json_answer:
        headers["Accept"] = "application/json"
    return await client.post(path, data=data, headers=headers)
