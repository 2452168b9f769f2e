"""Enqueue actions from Python: on a pool, an asyncpg connection, or a caller's AsyncSession.

Inside a caller's transaction the action is enqueued if and only if that transaction
commits. Every path goes through the SQL function `aol.enqueue`, so the database applies
the same rules to Python and to plain SQL; its refusals become `EnqueueRejected`.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any

import asyncpg

from aol.db import store
from aol.db.connect import create_pool
from aol.errors import EnqueueRejected
from aol.model import ActionId, JSONObject

# SQLSTATEs that mean "this input is bad", not "the database is broken".
_REJECTING_STATES = {
    "22023",  # invalid_parameter_value: raised by aol.enqueue with the field name
    "23514",  # check_violation: a table constraint (plain INSERT paths)
    "22P02",  # invalid_text_representation: malformed JSON
    "22P05",  # untranslatable_character: \u0000 in jsonb
    "22021",  # character_not_in_repertoire: invalid UTF-8
    "22001",  # string_data_right_truncation
    "22003",  # numeric_value_out_of_range
    "54000",  # program_limit_exceeded
}


async def _raw_connection(target: Any) -> store.Executor:
    """An asyncpg connection or pool behind `target` (a pool, connection or AsyncSession).

    SQLAlchemy is never imported here: a caller holding an AsyncSession has imported it
    already. (Importing it costs a third of a second, in every process that imports aol:
    workers, and the child process of every isolated handler.)"""
    if isinstance(target, asyncpg.Connection | asyncpg.Pool):
        return target
    sa: Any = sys.modules.get("sqlalchemy.ext.asyncio")
    if sa is not None and isinstance(target, sa.AsyncSession | sa.AsyncConnection):
        conn = await (target.connection() if isinstance(target, sa.AsyncSession) else _same(target))
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        if not isinstance(driver, asyncpg.Connection):
            raise TypeError(
                "aol needs SQLAlchemy's asyncpg driver (postgresql+asyncpg://), "
                f"got {type(driver).__name__}"
            )
        return driver
    raise TypeError(
        "connection must be an asyncpg Connection or Pool, or an SQLAlchemy AsyncSession, "
        f"got {type(target).__name__}"
    )


async def _same(conn: Any) -> Any:
    return conn


async def enqueue(
    target: Any,
    action_type: str,
    payload: JSONObject,
    *,
    idempotency_key: str,
    not_before: datetime | None = None,
    priority: int = 0,
    max_attempts: int = 3,
) -> ActionId:
    """Enqueue one action through `target`; returns its id (the existing id on a repeat key)."""
    _check(payload, not_before)
    db = await _raw_connection(target)
    try:
        return await store.enqueue_action(
            db,
            action_type=action_type,
            payload=payload,
            idempotency_key=idempotency_key,
            not_before=not_before,
            priority=priority,
            max_attempts=max_attempts,
        )
    except asyncpg.PostgresError as exc:
        raise _rejected(exc) from exc
    except (UnicodeEncodeError, asyncpg.DataError, OverflowError) as exc:
        raise EnqueueRejected(f"aol.enqueue refused the input: {exc}") from exc


@dataclass(frozen=True, slots=True)
class NewAction:
    """One action for `enqueue_many`."""

    action_type: str
    payload: JSONObject
    idempotency_key: str
    not_before: datetime | None = None
    priority: int = 0
    max_attempts: int = 3


async def enqueue_many(target: Any, actions: Sequence[NewAction]) -> list[ActionId]:
    """Enqueue many actions in one statement (one NOTIFY); ids in input order.

    The batch is stored entirely or not at all; a repeated key returns the id that holds it.
    """
    if not actions:
        return []
    for n, item in enumerate(actions):
        try:
            _check(item.payload, item.not_before)
        except EnqueueRejected as exc:
            raise EnqueueRejected(
                f"action {n} ({item.idempotency_key!r}): {exc}",
                field=exc.field,
                constraint=exc.constraint,
            ) from None
    db = await _raw_connection(target)
    try:
        return await store.enqueue_actions(
            db,
            action_types=[a.action_type for a in actions],
            payloads=[a.payload for a in actions],
            idempotency_keys=[a.idempotency_key for a in actions],
            not_befores=[a.not_before for a in actions],
            priorities=[a.priority for a in actions],
            max_attempts=[a.max_attempts for a in actions],
        )
    except asyncpg.PostgresError as exc:
        raise _rejected(exc) from exc
    except (UnicodeEncodeError, asyncpg.DataError, OverflowError) as exc:
        raise EnqueueRejected(f"aol.enqueue_many refused the input: {exc}") from exc


def _check(payload: Any, not_before: datetime | None) -> None:
    if not isinstance(payload, dict):
        raise EnqueueRejected(
            f"payload must be a JSON object (a dict), got {type(payload).__name__}",
            field="payload",
            constraint="actions_payload_is_object",
        )
    try:
        json.dumps(payload)
    except (TypeError, ValueError) as exc:
        raise EnqueueRejected(f"payload is not JSON-serialisable: {exc}", field="payload") from exc
    if not_before is not None and not_before.tzinfo is None:
        raise EnqueueRejected(
            "not_before must be timezone-aware (e.g. datetime.now(UTC)); got a naive datetime",
            field="not_before",
        )


# The parameters of enqueue_action / enqueue_actions, in order, to name a refused one.
_PARAMETERS = (
    "action_type",
    "payload",
    "idempotency_key",
    "not_before",
    "priority",
    "max_attempts",
)
_ARGUMENT = re.compile(r"query argument \$(\d+)")


def _rejected(exc: asyncpg.PostgresError) -> Exception:
    if isinstance(exc, asyncpg.DataError) and (found := _ARGUMENT.search(str(exc))):
        # Refused by the driver before it reached the server (e.g. text that has no UTF-8
        # form, such as a lone surrogate): name the parameter.
        index = int(found.group(1)) - 1
        field = _PARAMETERS[index] if 0 <= index < len(_PARAMETERS) else None
        return EnqueueRejected(f"{field or 'an argument'} cannot be sent: {exc}", field=field)
    state = getattr(exc, "sqlstate", None)
    if state not in _REJECTING_STATES:
        return exc
    return EnqueueRejected(
        str(getattr(exc, "message", None) or exc),
        field=getattr(exc, "column_name", None),
        constraint=getattr(exc, "constraint_name", None),
    )


class Client:
    """`async with Client(url) as client: await client.enqueue(...)`."""

    def __init__(self, database_url: str, *, max_size: int = 5) -> None:
        self.database_url = database_url
        self.max_size = max_size
        self._pool: asyncpg.Pool[Any] | None = None

    async def __aenter__(self) -> Client:
        self._pool = await create_pool(
            self.database_url, min_size=1, max_size=self.max_size, application_name="aol-client"
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @property
    def pool(self) -> asyncpg.Pool[Any]:
        if self._pool is None:
            raise RuntimeError("Client is not open: use `async with Client(url) as client:`")
        return self._pool

    async def enqueue_many(
        self, actions: Sequence[NewAction], *, connection: Any = None
    ) -> list[ActionId]:
        """Enqueue many actions in one statement; see `aol.client.enqueue_many`."""
        return await enqueue_many(self.pool if connection is None else connection, actions)

    async def enqueue(
        self,
        action_type: str,
        payload: JSONObject,
        *,
        idempotency_key: str,
        not_before: datetime | None = None,
        priority: int = 0,
        max_attempts: int = 3,
        connection: Any = None,
    ) -> ActionId:
        """Enqueue on the client's pool, or on `connection` (asyncpg or AsyncSession) so the
        action commits or rolls back with the caller's transaction."""
        return await enqueue(
            self.pool if connection is None else connection,
            action_type,
            payload,
            idempotency_key=idempotency_key,
            not_before=not_before,
            priority=priority,
            max_attempts=max_attempts,
        )
