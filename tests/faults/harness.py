"""Workers, probes and the history check shared by the fault scenarios and the soak.

Workers are real `python -m aol run` processes started through `tests.process.proc.Procs`
(own environment, logs in files, killed at teardown), with short timings:

    lease TTL 4 s, heartbeat 1 s, tick timeout 4 s, action timeout 3 s, scan interval 2 s,
    claim grace 0.5 s (AOL_CLAIM_GRACE, set by Procs), so a claim is valid for 4.5 s.

`Fleet` is the test's supervisor: it keeps N `--standby` workers alive, restarting any
that exits, and remembers when each one died (CLOCK_MONOTONIC, the clock of the journal
written by `tests.faults.handlers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from aol.db.connect import asyncpg_dsn
from tests.process.proc import CLAIM_GRACE, HOST, Proc, Procs
from tests.waiting import wait_for

T = TypeVar("T")

HANDLERS = ("tests.process.handlers", "tests.faults.handlers")
LEASE_TTL = 4.0
HEARTBEAT_INTERVAL = 1.0
TICK_TIMEOUT = 4.0
ACTION_TIMEOUT = 3.0
SCAN_INTERVAL = 2.0
SHUTDOWN_GRACE = 5.0
CLAIM_TTL = TICK_TIMEOUT + CLAIM_GRACE  # Procs puts CLAIM_GRACE (0.5 s) in AOL_CLAIM_GRACE

# Errors a probe may meet while the server restarts or a backend is terminated. asyncpg
# raises InternalClientError ("cannot switch to state ...; another operation is in
# progress") for a pooled connection that the server ended mid-protocol; the pool
# terminates that connection on release, so the next call gets a fresh one.
DB_GONE: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    TimeoutError,
)


def run_args(*extra: str, batch_size: int | None = None, standby: bool = True) -> tuple[str, ...]:
    """`aol --log-format json run` with the fault suite's timings and handlers."""
    args: list[str] = ["--log-format", "json", "run"]
    for module in HANDLERS:
        args += ["--handlers", module]
    args += [
        "--lease-ttl",
        f"{LEASE_TTL:g}",
        "--heartbeat-interval",
        f"{HEARTBEAT_INTERVAL:g}",
        "--tick-timeout",
        f"{TICK_TIMEOUT:g}",
        "--action-timeout",
        f"{ACTION_TIMEOUT:g}",
        "--scan-interval",
        f"{SCAN_INTERVAL:g}",
        "--shutdown-grace",
        f"{SHUTDOWN_GRACE:g}",
    ]
    if batch_size is not None:
        args += ["--batch-size", str(batch_size)]
    if standby:
        args.append("--standby")
    return (*args, *extra)


def pid_of_owner(owner: str | None) -> int | None:
    """The pid in a default lease owner name (`host:pid`)."""
    if not owner:
        return None
    host, _, pid = owner.rpartition(":")
    return int(pid) if host == HOST and pid.isdigit() else None


# --- probes that tolerate a server going away ------------------------------------------


async def connect(url: str, *, timeout: float = 3.0) -> asyncpg.Connection[Any]:
    conn: asyncpg.Connection[Any] = await asyncpg.connect(asyncpg_dsn(url), timeout=timeout)
    return conn


async def soft(probe: Callable[[], Awaitable[T]]) -> T | None:
    """`probe()`, or None when the database is away (restarting, backend terminated)."""
    try:
        return await probe()
    except DB_GONE:
        return None


async def wait_db(url: str, *, timeout: float = 60.0) -> float:
    """Wait until a new connection to `url` succeeds; returns time.monotonic() then."""

    async def probe() -> float | None:
        try:
            conn = await connect(url, timeout=1.0)
        except DB_GONE:
            return None
        await conn.close()
        return time.monotonic()

    back = await wait_for(probe, timeout=timeout, interval=0.05, what=f"the database at {url}")
    assert back is not None
    return back


async def db_now(pool: asyncpg.Pool[Any], *, timeout: float = 60.0) -> datetime:
    """The database clock, as soon as the database answers."""

    async def probe() -> datetime | None:
        value: datetime | None = await soft(lambda: pool.fetchval("SELECT now()"))
        return value

    found = await wait_for(probe, timeout=timeout, what="the database")
    assert found is not None
    return found


@dataclass
class Completion:
    seconds: float | None  # None: the queue was empty, nothing was left to complete


async def next_completion(
    pool: asyncpg.Pool[Any], since: datetime, timeout: float
) -> Completion | None:
    """Seconds from `since` (database clock) to the end of the first tick that recorded a
    success after it (Completion(None) if the queue ran dry first); None if neither
    happened within `timeout`."""

    async def query() -> Completion | None:
        row = await pool.fetchrow(
            "SELECT (SELECT min(finished_at) FROM aol.tick_ledger "
            "         WHERE finished_at > $1 AND succeeded > 0) AS done, "
            "       (SELECT count(*) FROM aol.actions "
            "         WHERE status IN ('pending', 'retry', 'running')) AS open",
            since,
        )
        if row is None:
            return None
        if row["done"] is not None:
            return Completion((row["done"] - since).total_seconds())
        return None if row["open"] else Completion(None)

    async def probe() -> Completion | None:
        return await soft(query)

    try:
        return await wait_for(probe, timeout=timeout, interval=0.05, what="a completion")
    except AssertionError:
        return None


async def lease(pool: asyncpg.Pool[Any]) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await soft(
        lambda: pool.fetchrow("SELECT *, now() AS db_now FROM aol.lease WHERE id = 1")
    )
    return row


async def listener_backends(pool: asyncpg.Pool[Any]) -> list[asyncpg.Record]:
    """Backends of this database whose application_name starts with 'aol-listen'."""
    rows = await pool.fetch(
        "SELECT pid, application_name, backend_start FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name LIKE 'aol-listen%' "
        "ORDER BY backend_start"
    )
    return list(rows)


async def statuses(pool: asyncpg.Pool[Any]) -> dict[str, int]:
    rows = await pool.fetch("SELECT status, count(*) AS n FROM aol.actions GROUP BY status")
    return {str(r["status"]): int(r["n"]) for r in rows}


# --- the supervisor --------------------------------------------------------------------


@dataclass
class Death:
    pid: int
    returncode: int
    at: float  # time.monotonic() once reaped
    killed_by_test: bool
    while_stopping: bool
    lifetime: float = 0.0


class Fleet:
    """Keeps `size` workers alive: a holder and standbys (all started with `--standby`)."""

    def __init__(
        self,
        procs: Procs,
        *,
        size: int = 2,
        args: tuple[str, ...] | None = None,
        restart: bool = True,
        env: Mapping[str, str] | None = None,
        max_restarts: int = 100,
    ) -> None:
        self.procs = procs
        self.size = size
        self.args = args or run_args()
        self.restart = restart
        self.max_restarts = max_restarts
        self.env = dict(env or {})
        self.alive: list[Proc] = []
        self.deaths: list[Death] = []
        self.started = 0
        self._killed: set[int] = set()
        self._watchers: set[asyncio.Task[None]] = set()
        self._stopping = False
        self.gave_up = False

    async def start(self) -> None:
        for _ in range(self.size - len(self.alive)):
            await self._spawn()

    async def _spawn(self) -> Proc:
        self.started += 1
        proc = await self.procs.start(*self.args, name=f"w{self.started}", env=self.env)
        self.alive.append(proc)
        task = asyncio.create_task(self._watch(proc), name=f"watch-{proc.pid}")
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)
        return proc

    async def _watch(self, proc: Proc) -> None:
        code = await proc.process.wait()
        self.deaths.append(
            Death(
                proc.pid,
                code,
                time.monotonic(),
                proc.pid in self._killed,
                self._stopping,
                time.monotonic() - proc.started,
            )
        )
        with contextlib.suppress(ValueError):
            self.alive.remove(proc)
        if not self.restart or self._stopping:
            return
        if self.started - self.size >= self.max_restarts:
            # A supervisor must not spin: a worker that dies at once, every time, is a bug
            # for the test to report, not to paper over.
            self.gave_up = True
            return
        if time.monotonic() - proc.started < 1.0:
            await asyncio.sleep(0.5)  # like a supervisor's restart delay: no hot loop
        await self._spawn()

    def by_pid(self, pid: int | None) -> Proc | None:
        return next((p for p in self.alive if p.pid == pid), None)

    async def holder(self, pool: asyncpg.Pool[Any]) -> Proc | None:
        """The live worker that holds the lease now (by the lease row and its pid)."""
        row = await lease(pool)
        if row is None or row["released_at"] is not None:
            return None
        return self.by_pid(pid_of_owner(row["owner"]))

    async def kill(self, proc: Proc) -> float:
        """SIGKILL `proc` and reap it; returns time.monotonic() once it is dead."""
        self._killed.add(proc.pid)
        proc.send(signal.SIGKILL)
        await proc.wait(10)
        return time.monotonic()

    def death_of(self, pid: int) -> Death | None:
        return next((d for d in self.deaths if d.pid == pid), None)

    def unexpected_exits(self) -> list[Death]:
        """Exits the test did not cause (neither its SIGKILL nor its final SIGTERM)."""
        return [d for d in self.deaths if not d.killed_by_test and not d.while_stopping]

    def halt(self) -> None:
        """Restart nothing from now on (call before killing the workers at teardown, or
        every kill would start a replacement)."""
        self._stopping = True

    async def stop(self, timeout: float = 15.0) -> list[int | None]:
        """SIGTERM every worker and wait for it; no more restarts. Returns the exit codes."""
        self._stopping = True
        procs = list(self.alive)
        for proc in procs:
            proc.send(signal.SIGTERM)
        codes: list[int | None] = []
        for proc in procs:
            try:
                codes.append(await proc.wait(timeout))
            except AssertionError:
                proc.send(signal.SIGKILL)
                codes.append(None)
        for task in list(self._watchers):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, timeout=5)
        return codes

    def describe(self) -> str:
        return "\n".join(p.describe() for p in self.procs.started[-6:])


# --- the journal and the history check -------------------------------------------------


@dataclass
class Attempt:
    """One handler call as the journal saw it (times: CLOCK_MONOTONIC, seconds)."""

    pid: int
    action_id: int
    attempt: int
    epoch: int
    start: float
    end: float | None = None
    how: str | None = None


def read_journal(folder: Path) -> list[Attempt]:
    """Every attempt recorded in `folder/effects-*.log`, in start order."""
    open_: dict[tuple[int, int, int], Attempt] = {}
    done: list[Attempt] = []
    for path in sorted(folder.glob("effects-*.log")):
        for line in path.read_text(encoding="utf-8").splitlines():
            parts = line.split()
            if len(parts) < 6:
                continue  # a torn last line cannot happen with O_APPEND writes; be safe
            kind, pid, action_id, attempt, epoch, t_ns = parts[:6]
            key = (int(pid), int(action_id), int(attempt))
            if kind == "S":
                open_[key] = Attempt(
                    int(pid), int(action_id), int(attempt), int(epoch), int(t_ns) / 1e9
                )
            elif kind == "E" and key in open_:
                found = open_.pop(key)
                found.end = int(t_ns) / 1e9
                found.how = parts[6] if len(parts) > 6 else None
                done.append(found)
    return sorted([*done, *open_.values()], key=lambda a: a.start)


@dataclass
class History:
    """What the journal proves about every action."""

    attempts: int = 0
    actions: int = 0
    overlaps: list[tuple[Attempt, Attempt]] = field(default_factory=list)
    reexecutions: int = 0  # attempts beyond the first of an action
    completed_more_than_once: int = 0  # actions whose effect completed twice or more
    unfinished: int = 0  # attempts whose process died in the middle
    unaccounted: list[Attempt] = field(default_factory=list)  # no end, process still alive


def check_history(attempts: list[Attempt], deaths: Mapping[int, float]) -> History:
    """No two attempts of one action may overlap.

    An attempt ends at its `E` line, or, if its process died in the middle, when the test
    reaped that process (`deaths`: pid -> time.monotonic()). An attempt with neither is
    still running (or hung): it counts as overlapping whatever came after it.
    """
    history = History(attempts=len(attempts))
    by_action: dict[int, list[Attempt]] = defaultdict(list)
    for a in attempts:
        by_action[a.action_id].append(a)
    history.actions = len(by_action)
    for runs in by_action.values():
        runs.sort(key=lambda a: a.start)
        history.reexecutions += len(runs) - 1
        if sum(1 for a in runs if a.how == "ok") > 1:
            history.completed_more_than_once += 1
        latest_end: float = float("-inf")
        latest: Attempt | None = None
        for run in runs:
            if latest is not None and run.start < latest_end:
                history.overlaps.append((latest, run))
            end = run.end
            if end is None:
                died = deaths.get(run.pid)
                if died is None:
                    history.unaccounted.append(run)
                    end = float("inf")
                else:
                    history.unfinished += 1
                    end = died
            if end > latest_end:
                latest_end, latest = end, run
    return history
