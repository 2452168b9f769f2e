"""The page model: everything the dashboard shows, read fresh from the database.

Each page load (and each refresh) reads in one read-only REPEATABLE READ transaction, so
the numbers on a page agree with each other and with the database at one instant, the
database's `now()`. Two reads are the exception, because their cost grows with the history
rather than with the queue: the succeeded and cancelled counts and the list of action
types. They are kept between requests in `SlowReads` (see `aol.db.slowread`: on a small
table they are read again at every request; on a large one at most every 20 times as long
as they take, in the background), and the page says how old the counts are.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import asyncpg

from aol.db import store
from aol.db.slowread import SlowRead
from aol.model import ActionStatus, Flags, TickRecord
from aol.web.charts import Chart, duration_chart, throughput_chart

CHART_WINDOW_S = 3600.0
RECENT_LOGS = 30
ACTIONS_SHOWN = 50


class LeaseState(StrEnum):
    """held: a worker renews the lease; stale: its heartbeat stopped before a release;
    free: released or never taken."""

    HELD = "held"
    STALE = "stale"
    FREE = "free"


@dataclass(frozen=True, slots=True)
class LeaseView:
    state: LeaseState
    owner: str | None
    epoch: int
    acquired_at: datetime | None
    heartbeat_at: datetime | None
    expires_at: datetime | None
    released_at: datetime | None
    since_heartbeat_s: float | None
    until_expiry_s: float | None
    lock_pid: int | None
    holder_pid: int | None

    @property
    def summary(self) -> str:
        if self.state is LeaseState.HELD:
            return f"held by {self.owner} (epoch {self.epoch})"
        if self.state is LeaseState.STALE:
            return f"stale: {self.owner} (epoch {self.epoch}) stopped renewing"
        last = f"; last holder {self.owner} (epoch {self.epoch})" if self.owner else ""
        return f"nobody holds it{last}"


def lease_view(row: dict[str, Any]) -> LeaseView:
    """Classify the lease row (as `store.read_lease_state` returns it)."""
    until = row["until_expiry_s"]
    if row["owner"] is None or row["released_at"] is not None or row["expires_at"] is None:
        state = LeaseState.FREE
    elif until is not None and until > 0:
        state = LeaseState.HELD
    else:
        state = LeaseState.STALE
    return LeaseView(
        state=state,
        owner=row["owner"],
        epoch=int(row["epoch"]),
        acquired_at=row["acquired_at"],
        heartbeat_at=row["heartbeat_at"],
        expires_at=row["expires_at"],
        released_at=row["released_at"],
        since_heartbeat_s=row["since_heartbeat_s"],
        until_expiry_s=until,
        lock_pid=row["lock_pid"],
        holder_pid=row["holder_pid"],
    )


ANY = "all"


@dataclass(frozen=True, slots=True)
class Filters:
    """The action list's filters; None means any. With no status asked for, the list is
    the dead-letter queue."""

    status: str | None = str(ActionStatus.DEAD)
    action_type: str | None = None

    @classmethod
    def parse(cls, status: str | None, action_type: str | None) -> Filters:
        """Query parameters as given: no status means dead, `all` (or empty) means any; an
        unknown status is refused by the caller (`valid`)."""
        if status is None:
            status = str(ActionStatus.DEAD)
        status = status.strip()
        return cls(
            status=None if status in ("", ANY) else status,
            action_type=(action_type or "").strip() or None,
        )

    @property
    def valid(self) -> bool:
        return self.status is None or self.status in {str(s) for s in ActionStatus}


@dataclass(frozen=True, slots=True)
class SlowReads:
    """The overview's reads whose cost grows with the history, kept between requests."""

    finished_counts: SlowRead[dict[str, int]]
    action_types: SlowRead[list[str]]

    @classmethod
    def on(cls, pool: asyncpg.Pool[Any]) -> SlowReads:
        async def finished_counts() -> dict[str, int]:
            async with pool.acquire() as conn:
                return await store.count_finished(conn)

        async def action_types() -> list[str]:
            async with pool.acquire() as conn:
                return await store.list_action_types(conn)

        return cls(
            finished_counts=SlowRead(finished_counts, name="finished_counts"),
            action_types=SlowRead(action_types, name="action_types"),
        )

    async def close(self) -> None:
        await self.finished_counts.close()
        await self.action_types.close()


@dataclass(frozen=True, slots=True)
class Overview:
    now: datetime
    lease: LeaseView
    flags: Flags
    last_tick: TickRecord | None
    counts: dict[str, int]
    # How old the succeeded and cancelled counts are (the others are read with the page).
    finished_counts_age_s: float
    lag: dict[str, Any] | None
    throughput: Chart
    duration: Chart
    ticks_last_hour: int
    logs: list[dict[str, Any]]
    actions: list[dict[str, Any]]
    action_types: list[str]
    filters: Filters

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True, slots=True)
class ActionPage:
    now: datetime
    action: dict[str, Any]
    logs: list[dict[str, Any]]


async def read_overview(pool: asyncpg.Pool[Any], filters: Filters, slow: SlowReads) -> Overview:
    finished, finished_age = await slow.finished_counts.get()
    action_types, _ = await slow.action_types.get()
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        lease_row = await store.read_lease_state(conn)
        history = await store.tick_history(conn, window_s=CHART_WINDOW_S)
        now: datetime = lease_row["now"]
        return Overview(
            now=now,
            lease=lease_view(lease_row),
            flags=await store.read_flags(conn),
            last_tick=await store.last_tick(conn),
            counts={**await store.count_live(conn), **finished},
            finished_counts_age_s=finished_age,
            lag=await store.queue_lag(conn),
            throughput=throughput_chart(history, now),
            duration=duration_chart(history, now),
            ticks_last_hour=sum(int(b["ticks"]) for b in history),
            logs=await store.list_recent_logs(conn, limit=RECENT_LOGS),
            actions=await store.list_actions(
                conn,
                status=filters.status,
                action_type=filters.action_type,
                limit=ACTIONS_SHOWN,
            ),
            action_types=action_types,
            filters=filters,
        )


async def read_action_page(pool: asyncpg.Pool[Any], action_id: int) -> ActionPage | None:
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        action = await store.read_action_detail(conn, action_id=action_id)
        if action is None:
            return None
        lease_row = await store.read_lease_state(conn)
        return ActionPage(
            now=lease_row["now"],
            action=action,
            logs=await store.list_action_logs(conn, action_id=action_id),
        )
