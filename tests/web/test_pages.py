"""Every page renders with actions in every state, and shows what the database holds."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
import pytest

from aol.model import ActionStatus
from tests.web.page import attr_text, attr_value, db_counts, row_ids
from tests.web.seed import LEASE_EPOCH, LEASE_OWNER, Seeded

STATUSES = [str(s) for s in ActionStatus]


async def test_every_page_renders_with_actions_in_every_state(
    client: httpx.AsyncClient, seeded: Seeded
) -> None:
    assert set(seeded.ids) == set(STATUSES)
    paths = ["/", "/live", "/?status=all", "/login", "/healthz"]
    paths += [f"/?status={s}" for s in STATUSES]
    for ids in seeded.ids.values():
        paths += [f"/actions/{i}" for i in ids] + [f"/actions/{i}/live" for i in ids]
    paths.append(f"/artifacts/{seeded.artifact_log_id}")
    for path in paths:
        answer = await client.get(path)
        assert answer.status_code == 200, (path, answer.text[:500])
        assert "Traceback" not in answer.text


async def test_the_figures_on_the_page_match_the_database(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any], seeded: Seeded
) -> None:
    page = (await client.get("/")).text
    counts = await db_counts(pool)

    for status in STATUSES:
        assert int(attr_text(page, f'data-count="{status}"')) == counts.get(status, 0), status
    assert int(attr_text(page, 'data-count="total"')) == sum(counts.values())

    assert attr_value(page, "data-lease-state") == "held"
    assert attr_text(page, "data-lease-owner") == LEASE_OWNER
    assert int(attr_text(page, "data-lease-epoch")) == LEASE_EPOCH

    flags = await pool.fetchrow("SELECT * FROM aol.control_flags")
    assert flags is not None
    for name in ("paused", "killed", "proof_mode"):
        assert attr_value(page, f'data-flag="{name}" data-value') == str(flags[name]).lower()
    assert attr_text(page, "data-changed-by") == flags["changed_by"]

    tick = await pool.fetchrow("SELECT * FROM aol.tick_ledger ORDER BY id DESC LIMIT 1")
    assert tick is not None
    assert attr_text(page, "data-tick-outcome") == tick["outcome"]
    for name in ("claimed", "succeeded", "retried", "dead"):
        assert int(attr_text(page, f'data-tick="{name}"')) == tick[name], name

    oldest = await pool.fetchrow(
        "SELECT id, extract(epoch FROM now() - not_before)::float8 AS lag FROM aol.actions "
        "WHERE status IN ('pending', 'retry') AND not_before <= now() "
        "ORDER BY not_before, id LIMIT 1"
    )
    assert oldest is not None
    assert oldest["id"] == seeded.first("retry")
    assert float(attr_value(page, "data-lag-s")) == pytest.approx(oldest["lag"], abs=2.0)

    # With no filter the list is the dead-letter queue, newest change first.
    dead = await pool.fetch(
        "SELECT id FROM aol.actions WHERE status = 'dead' "
        "ORDER BY coalesce(finished_at, updated_at) DESC, id DESC"
    )
    assert row_ids(page) == [r["id"] for r in dead]
    assert "SMTPRecipientsRefused: nobody@invalid" in page  # last error
    assert "nobody@invalid" in page  # payload


async def test_the_lease_is_held_stale_or_free_as_the_row_says(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any], seeded: Seeded
) -> None:
    assert attr_value((await client.get("/live")).text, "data-lease-state") == "held"

    await pool.execute("UPDATE aol.lease SET expires_at = now() - interval '3 s'")
    page = (await client.get("/live")).text
    assert attr_value(page, "data-lease-state") == "stale"
    assert "stopped renewing" in page

    await pool.execute("UPDATE aol.lease SET released_at = now(), expires_at = now()")
    page = (await client.get("/live")).text
    assert attr_value(page, "data-lease-state") == "free"
    assert "nobody holds it" in page


async def test_filters_by_status_and_type_list_exactly_those_actions(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any], seeded: Seeded
) -> None:
    for status in [*STATUSES, "all"]:
        for action_type in ("", "SEND_EMAIL", "POST_SOCIAL"):
            answer = await client.get("/live", params={"status": status, "type": action_type})
            expected = await pool.fetch(
                "SELECT id FROM aol.actions WHERE ($1 = 'all' OR status = $1) "
                "AND ($2 = '' OR action_type = $2) "
                "ORDER BY coalesce(finished_at, updated_at) DESC, id DESC",
                status,
                action_type,
            )
            assert row_ids(answer.text) == [r["id"] for r in expected], (status, action_type)


async def test_an_unknown_status_filter_is_refused_by_name(client: httpx.AsyncClient) -> None:
    answer = await client.get("/", params={"status": "zombie"})
    assert answer.status_code == 400
    assert "unknown status 'zombie'" in attr_text(answer.text, "data-error")


async def test_the_action_page_shows_its_whole_history(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any], seeded: Seeded
) -> None:
    action_id = seeded.first("dead")
    page = (await client.get(f"/actions/{action_id}")).text
    logs = await pool.fetch(
        "SELECT id FROM aol.execution_logs WHERE action_id = $1 ORDER BY id", action_id
    )
    assert logs
    for row in logs:
        assert f'data-log-id="{row["id"]}"' in page
    assert attr_text(page, "data-status") == "dead"
    assert attr_text(page, "data-attempts") == "3/3"
    assert "nobody@invalid" in attr_text(page, "data-payload")

    missing = await client.get("/actions/999999")
    assert missing.status_code == 404
    assert "no action 999999" in missing.text


async def test_recent_log_rows_link_their_artifact(
    client: httpx.AsyncClient, seeded: Seeded
) -> None:
    page = (await client.get("/")).text
    assert f'href="/artifacts/{seeded.artifact_log_id}"' in page
    assert seeded.artifact_sha256[:12] in page


async def test_the_charts_are_drawn_in_the_page_from_the_last_hour_of_ticks(
    client: httpx.AsyncClient, pool: asyncpg.Pool[Any], seeded: Seeded
) -> None:
    page = (await client.get("/")).text
    ticks = await pool.fetchval(
        "SELECT count(*) FROM aol.tick_ledger WHERE finished_at > now() - interval '1 hour'"
    )
    assert f"({ticks} ticks)" in page
    assert page.count("<svg") == 2
    assert '<rect class="ok"' in page
    assert "<polyline" in page
    assert "<script src=" in page
    assert "cdn" not in page.lower()


async def test_pages_are_never_cached_and_forbid_framing_and_foreign_scripts(
    client: httpx.AsyncClient,
) -> None:
    answer = await client.get("/")
    assert answer.headers["cache-control"] == "no-store"
    assert answer.headers["x-frame-options"] == "DENY"
    assert "script-src 'self'" in answer.headers["content-security-policy"]
    static = await client.get("/static/dashboard.js")
    assert static.status_code == 200
    assert len(static.content) < 8 * 1024
