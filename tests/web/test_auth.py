"""Refusals: no session, a wrong or missing CSRF token, a foreign origin, a wrong token,
a public address without a token. Each is refused and changes nothing in the database."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
import pytest

from aol.errors import ConfigError
from aol.settings import Settings
from aol.web import auth
from aol.web.app import create_app
from tests.web.conftest import client_for, login, post
from tests.web.page import ORIGIN, TOKEN, attr_text, db_flags, db_log_count, db_status, field_value
from tests.web.seed import Seeded


async def assert_nothing_changed(
    pool: asyncpg.Pool[Any], flags: dict[str, Any], logs: int, dead_id: int
) -> None:
    assert await db_flags(pool) == flags
    assert await db_log_count(pool) == logs
    assert await db_status(pool, dead_id) == "dead"


@pytest.mark.parametrize(
    "path", ["/control/pause", "/control/kill", "/control/retry-all", "/actions/{dead}/retry"]
)
async def test_a_control_without_a_session_is_refused_with_401(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any], seeded: Seeded, path: str
) -> None:
    dead = seeded.first("dead")
    flags, logs = await db_flags(pool), await db_log_count(pool)

    answer = await post(client, path.format(dead=dead), csrf="anything")

    assert answer.status_code == 401
    assert "log in first" in attr_text(answer.text, "data-error")
    await assert_nothing_changed(pool, flags, logs, dead)


@pytest.mark.parametrize("csrf_value", [None, "", "wrong-token"])
async def test_a_missing_or_wrong_csrf_token_is_refused_with_403(
    client: httpx.AsyncClient,
    pool: asyncpg.Pool[Any],
    seeded: Seeded,
    csrf: str,
    csrf_value: str | None,
) -> None:
    dead = seeded.first("dead")
    flags, logs = await db_flags(pool), await db_log_count(pool)

    for path in ("/control/pause", f"/actions/{dead}/retry", "/control/retry-all"):
        answer = await post(client, path, csrf=csrf_value)
        assert answer.status_code == 403, path
        assert "CSRF" in attr_text(answer.text, "data-error")
    await assert_nothing_changed(pool, flags, logs, dead)


@pytest.mark.parametrize("origin", [None, "http://evil.example", "null", "http://127.0.0.1:9999"])
async def test_a_control_from_another_origin_is_refused_with_403(
    client: httpx.AsyncClient,
    pool: asyncpg.Pool[Any],
    seeded: Seeded,
    csrf: str,
    origin: str | None,
) -> None:
    dead = seeded.first("dead")
    flags, logs = await db_flags(pool), await db_log_count(pool)

    answer = await post(client, "/control/pause", csrf=csrf, origin=origin)

    assert answer.status_code == 403
    assert "cross-origin" in attr_text(answer.text, "data-error")
    await assert_nothing_changed(pool, flags, logs, dead)


async def test_the_csrf_token_may_come_in_a_header_and_a_referer_stands_for_origin(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any], csrf: str
) -> None:
    answer = await client.post(
        "/control/pause",
        data={"reason": "header token"},
        headers={"X-CSRF-Token": csrf, "Referer": f"{ORIGIN}/actions/1"},
    )
    assert answer.status_code == 303, answer.text
    assert (await db_flags(pool))["paused"] is True


async def test_a_wrong_token_logs_nobody_in(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any]
) -> None:
    form = await client.get("/login")
    answer = await client.post(
        "/login",
        data={"name": "mallory", "token": TOKEN + "x", "csrf": field_value(form.text, "csrf")},
        headers={"Origin": ORIGIN},
    )
    assert answer.status_code == 401
    assert "wrong token" in answer.text
    assert auth.SESSION_COOKIE not in answer.cookies
    flags = await db_flags(pool)
    refused = await post(client, "/control/pause", csrf="x")
    assert refused.status_code == 401
    assert await db_flags(pool) == flags


async def test_the_login_form_needs_its_own_csrf_cookie_and_a_name(
    client: httpx.AsyncClient,
) -> None:
    # No GET /login first: no login cookie, so the form is refused.
    answer = await client.post(
        "/login", data={"name": "a", "token": TOKEN, "csrf": "x"}, headers={"Origin": ORIGIN}
    )
    assert answer.status_code == 403
    form = await client.get("/login")
    nameless = await client.post(
        "/login",
        data={"name": "  ", "token": TOKEN, "csrf": field_value(form.text, "csrf")},
        headers={"Origin": ORIGIN},
    )
    assert nameless.status_code == 400
    assert "give your name" in nameless.text


async def test_the_session_cookie_is_httponly_and_samesite_strict(
    client: httpx.AsyncClient,
) -> None:
    form = await client.get("/login")
    answer = await client.post(
        "/login",
        data={"name": "alice", "token": TOKEN, "csrf": field_value(form.text, "csrf")},
        headers={"Origin": ORIGIN},
    )
    cookie = next(
        v for k, v in answer.headers.multi_items() if k == "set-cookie" and "aol_session" in v
    )
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie


async def test_after_logout_the_session_acts_no_more(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any], csrf: str
) -> None:
    cookie = client.cookies.get(auth.SESSION_COOKIE)
    answer = await post(client, "/logout", csrf=csrf, reason=None)
    assert answer.status_code == 303
    client.cookies.set(auth.SESSION_COOKIE, cookie or "")  # a copy kept by an attacker
    flags = await db_flags(pool)
    assert (await post(client, "/control/pause", csrf=csrf)).status_code == 401
    assert await db_flags(pool) == flags


async def test_viewing_without_a_session_is_for_loopback_clients_only(
    web_settings: Settings, pool: asyncpg.Pool[Any]
) -> None:
    async with client_for(web_settings, pool, client_host="127.0.0.1") as local:
        assert (await local.get("/")).status_code == 200
    async with client_for(web_settings, pool, client_host="203.0.113.9") as remote:
        page = await remote.get("/")
        assert page.status_code == 303
        assert page.headers["location"].startswith("/login")
        assert (await remote.get("/live")).status_code == 401
        assert (await remote.get("/actions/1")).status_code == 303
        assert (await remote.get("/healthz")).status_code == 200
        await login(remote)
        assert (await remote.get("/")).status_code == 200


async def test_served_beyond_loopback_even_local_viewers_log_in(
    web_settings: Settings, pool: asyncpg.Pool[Any]
) -> None:
    public = web_settings.with_(dashboard_host="0.0.0.0")
    async with client_for(public, pool, client_host="127.0.0.1") as c:
        assert (await c.get("/")).status_code == 303


async def test_without_a_token_the_dashboard_is_read_only(
    settings: Settings, pool: asyncpg.Pool[Any], seeded: Seeded
) -> None:
    assert settings.dashboard_token is None
    async with client_for(settings, pool) as c:
        page = await c.get("/")
        assert page.status_code == 200
        assert "controls are off" in page.text
        assert "data-post" not in page.text  # no retry or cancel buttons
        flags = await db_flags(pool)
        answer = await post(c, "/control/pause", csrf="")
        assert answer.status_code == 403
        assert "no AOL_DASHBOARD_TOKEN" in answer.text
        assert await db_flags(pool) == flags
    async with client_for(settings, pool, client_host="203.0.113.9") as remote:
        assert (await remote.get("/")).status_code == 403


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "dashboard.example"])
def test_a_public_address_without_a_token_is_refused_naming_the_setting(
    settings: Settings, host: str
) -> None:
    with pytest.raises(ConfigError, match="AOL_DASHBOARD_TOKEN") as refused:
        create_app(settings.with_(dashboard_host=host), pool=None)  # type: ignore[arg-type]
    assert host in str(refused.value)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.8.9.10"])
def test_loopback_addresses_need_no_token(host: str) -> None:
    auth.check_bind(host, None)


def test_token_comparison_is_exact() -> None:
    assert auth.token_matches(TOKEN, TOKEN)
    assert not auth.token_matches(TOKEN, TOKEN[:-1])
    assert not auth.token_matches(TOKEN, "")
    assert not auth.same_secret(TOKEN, None)
