"""Read the figures a dashboard page shows, by the data-* attributes the templates put
on them, and what the database says they should be."""

from __future__ import annotations

import html
import re
from typing import Any

import asyncpg

ORIGIN = "http://127.0.0.1:8080"
TOKEN = "correct-horse-battery-staple-42"


def attr_text(page: str, attr: str) -> str:
    """The text of the first element carrying `attr` (e.g. 'data-count="dead"')."""
    match = re.search(rf"<[^>]*\b{attr}[^>]*>([^<]*)<", page)
    assert match, f"no element with {attr} on the page"
    return html.unescape(match.group(1)).strip()


def attr_value(page: str, name: str) -> str:
    """The value of the first attribute `name` (e.g. data-lease-state)."""
    match = re.search(rf'\b{name}="([^"]*)"', page)
    assert match, f"no attribute {name} on the page"
    return html.unescape(match.group(1))


def row_ids(page: str) -> list[int]:
    """The action ids listed in the actions table, in page order."""
    table = page.split("data-actions", 1)[1].split("</table>", 1)[0]
    return [int(v) for v in re.findall(r'data-action-id="(\d+)"', table)]


def csrf_of(page: str) -> str:
    return attr_value(page, 'name="csrf-token" content')


def field_value(page: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert match, f"no field {name} on the page"
    return html.unescape(match.group(1))


async def db_counts(db: asyncpg.Pool[Any]) -> dict[str, int]:
    rows = await db.fetch("SELECT status, count(*) AS n FROM aol.actions GROUP BY status")
    return {str(r["status"]): int(r["n"]) for r in rows}


async def db_flags(db: asyncpg.Pool[Any]) -> dict[str, Any]:
    row = await db.fetchrow("SELECT * FROM aol.control_flags WHERE id = 1")
    assert row is not None
    return dict(row)


async def db_log_count(db: asyncpg.Pool[Any]) -> int:
    return int(await db.fetchval("SELECT count(*) FROM aol.execution_logs"))


async def db_status(db: asyncpg.Pool[Any], action_id: int) -> str:
    return str(await db.fetchval("SELECT status FROM aol.actions WHERE id = $1", action_id))
