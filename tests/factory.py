"""Rows for tests, with overrides: plain INSERTs, so tests can seed any state."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime
from typing import Any

import asyncpg

from aol.model import Action, ActionId, ActionStatus

_keys = itertools.count()
_claimed_ids = itertools.count(1)


def claimed_action(action_type: str, *, action_id: int | None = None) -> Action:
    """An action as a claim hands it to the worker (no row behind it): for code that runs
    handlers or counts outcomes without a database."""
    now = datetime.now(UTC)
    number = next(_claimed_ids) if action_id is None else action_id
    return Action(
        id=ActionId(number),
        idempotency_key=f"k{number}",
        action_type=action_type,
        payload={},
        status=ActionStatus.RUNNING,
        priority=0,
        attempts=1,
        max_attempts=3,
        not_before=now,
        claim_epoch=None,
        created_at=now,
    )


async def insert_action(db: asyncpg.Pool[Any] | asyncpg.Connection[Any], **overrides: Any) -> int:
    """Insert one action with defaults; any column may be overridden (SQL expressions via
    `sql_<column>`, e.g. sql_not_before="now() - interval '1 hour'")."""
    row: dict[str, Any] = {
        "idempotency_key": f"test-{next(_keys)}",
        "action_type": "POST_SOCIAL",
        "payload": {"platform": "x", "content": "hello", "audience": "public"},
    }
    exprs: dict[str, str] = {}
    for key, value in overrides.items():
        if key.startswith("sql_"):
            exprs[key[4:]] = value
        else:
            row[key] = value
    cols = list(row) + list(exprs)
    params = [
        json.dumps(v) if k == "payload" and not isinstance(v, str) else v for k, v in row.items()
    ]
    placeholders = [
        f"${i}" + ("::jsonb" if k == "payload" else "") for i, k in enumerate(row, start=1)
    ]
    placeholders += list(exprs.values())
    sql = (
        f"INSERT INTO aol.actions ({', '.join(cols)}) VALUES ({', '.join(placeholders)}) "
        "RETURNING id"
    )
    # The pool's codec encodes jsonb itself; pass the payload as text to be codec-neutral.
    sql = sql.replace("::jsonb", "::text::jsonb")
    return int(await db.fetchval(sql, *params))
