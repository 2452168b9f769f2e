"""Helpers for real-process tests: start `python -m aol ...`, watch it, and clean up.

Every process gets its own environment (the test database, a private data folder,
`PYTHONPATH` = the repository root so `--handlers tests.process.handlers` imports, and a
short claim grace), and its stdout and stderr go to files under the test's tmp folder, so
a failing assertion can show what the process said. `Procs.close` kills whatever is
still running; the fixtures in the test modules call it in teardown.

Timing used throughout (the `run` flags in `FAST_RUN_FLAGS`, plus `AOL_CLAIM_GRACE`):
lease TTL 4 s, heartbeat 1 s, tick timeout 4 s, action timeout 3 s, claim grace 0.5 s, so
a claim stays valid for `CLAIM_TTL` = 4.5 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from aol.db.store import LEASE_LOCK_KEY, Executor
from tests.waiting import wait_for

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = socket.gethostname()
HANDLERS = "tests.process.handlers"

LEASE_TTL = 4.0
HEARTBEAT_INTERVAL = 1.0
TICK_TIMEOUT = 4.0
ACTION_TIMEOUT = 3.0
CLAIM_GRACE = 0.5
SHUTDOWN_GRACE = 5.0
CLAIM_TTL = TICK_TIMEOUT + CLAIM_GRACE

FAST_RUN_FLAGS: tuple[str, ...] = (
    "--handlers",
    HANDLERS,
    "--lease-ttl",
    f"{LEASE_TTL:g}",
    "--heartbeat-interval",
    f"{HEARTBEAT_INTERVAL:g}",
    "--tick-timeout",
    f"{TICK_TIMEOUT:g}",
    "--action-timeout",
    f"{ACTION_TIMEOUT:g}",
    "--shutdown-grace",
    f"{SHUTDOWN_GRACE:g}",
    "--scan-interval",
    "30",
)

EFFECTS_DDL = """
CREATE TABLE public.test_effects (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    action_id   bigint      NOT NULL,
    attempt     integer     NOT NULL,
    pid         integer     NOT NULL,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz
)
"""

# Advisory locks on the lease key in this database: (held, waiting). A bigint key shows in
# pg_locks as classid = high 32 bits, objid = low 32 bits, objsubid = 1.
LEASE_LOCKS_SQL = """
SELECT count(*) FILTER (WHERE granted) AS held, count(*) FILTER (WHERE NOT granted) AS waiting
  FROM pg_locks
 WHERE locktype = 'advisory'
   AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND classid = $1 AND objid = $2 AND objsubid = 1
"""


def owner_of(pid: int) -> str:
    """The lease owner name a worker with this pid writes (`host:pid`, the default)."""
    return f"{HOST}:{pid}"


def run_args(*extra: str) -> tuple[str, ...]:
    """`aol --log-format json run` with the fast test timings, then `extra` flags."""
    return ("--log-format", "json", "run", *FAST_RUN_FLAGS, *extra)


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Proc:
    """One `python -m aol` process started by a test."""

    name: str
    args: tuple[str, ...]
    process: asyncio.subprocess.Process
    stdout_path: Path
    stderr_path: Path
    started: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def owner(self) -> str:
        return owner_of(self.pid)

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    @property
    def running(self) -> bool:
        return self.process.returncode is None

    def stdout(self) -> str:
        return self.stdout_path.read_text(encoding="utf-8", errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def events(self) -> list[dict[str, Any]]:
        """The JSON log lines on stdout (lines that are not JSON objects are skipped)."""
        found: list[dict[str, Any]] = []
        for line in self.stdout().splitlines():
            with contextlib.suppress(ValueError):
                obj = json.loads(line)
                if isinstance(obj, dict):
                    found.append(obj)
        return found

    def event_names(self) -> list[str]:
        return [str(e.get("event")) for e in self.events()]

    def describe(self) -> str:
        """For assertion messages: who, how it was started, how it ended, what it said."""
        return (
            f"[{self.name} pid {self.pid} rc {self.returncode}] aol {' '.join(self.args)}\n"
            f"--- stdout (tail) ---\n{_tail(self.stdout())}\n"
            f"--- stderr (tail) ---\n{_tail(self.stderr())}"
        )

    def send(self, sig: signal.Signals) -> None:
        if self.running:
            os.kill(self.pid, sig)

    async def wait(self, timeout: float = 10.0) -> int:
        """Wait for the process to exit; fail with its output if it does not in time."""
        try:
            return await asyncio.wait_for(self.process.wait(), timeout=timeout)
        except TimeoutError:
            raise AssertionError(
                f"{self.name} did not exit within {timeout}s\n{self.describe()}"
            ) from None


class Procs:
    """Starts aol processes for one test and kills the leftovers at the end."""

    def __init__(self, db_url: str, root: Path, *, env: Mapping[str, str] | None = None) -> None:
        self.db_url = db_url
        self.root = root
        self.data_dir = root / "data"
        self.log_dir = root / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.extra_env = dict(env or {})
        self.started: list[Proc] = []

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The parent's environment without any aol setting, then the test's settings."""
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("AOL_") and k not in ("DATABASE_URL", "PYTHONPATH")
        }
        base.update(
            {
                "AOL_DATABASE_URL": self.db_url,
                "AOL_DATA_DIR": str(self.data_dir),
                "AOL_CLAIM_GRACE": f"{CLAIM_GRACE:g}",
                "PYTHONPATH": str(REPO_ROOT),
                "PYTHONUNBUFFERED": "1",
            }
        )
        base.update(self.extra_env)
        base.update(extra or {})
        return base

    async def start(
        self, *args: str, name: str | None = None, env: Mapping[str, str] | None = None
    ) -> Proc:
        """Start `python -m aol *args`; it runs until it exits or the test ends."""
        name = name or f"aol-{len(self.started) + 1}"
        stdout_path = self.log_dir / f"{len(self.started) + 1:02d}-{name}.stdout"
        stderr_path = self.log_dir / f"{len(self.started) + 1:02d}-{name}.stderr"
        with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "aol",
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=str(REPO_ROOT),
                env=self.env(env),
            )
        proc = Proc(name, args, process, stdout_path, stderr_path)
        self.started.append(proc)
        return proc

    async def worker(
        self, *extra: str, name: str | None = None, env: Mapping[str, str] | None = None
    ) -> Proc:
        """Start `aol --log-format json run` with the fast timings and the test handlers."""
        return await self.start(*run_args(*extra), name=name, env=env)

    async def run(
        self,
        *args: str,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 15.0,
    ) -> Proc:
        """Start `python -m aol *args` and wait for it to exit."""
        proc = await self.start(*args, name=name, env=env)
        await proc.wait(timeout)
        return proc

    async def close(self) -> None:
        """Kill every process still running and reap it."""
        for proc in self.started:
            if proc.running:
                with contextlib.suppress(ProcessLookupError):
                    proc.process.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.process.wait(), timeout=10)


@contextlib.asynccontextmanager
async def open_procs(db_url: str, root: Path) -> AsyncIterator[Procs]:
    procs = Procs(db_url, root)
    try:
        yield procs
    finally:
        await procs.close()


async def until(
    probe: Callable[[], Awaitable[T | None]],
    *,
    what: str,
    timeout: float = 10.0,
    alive: Iterable[Proc] = (),
) -> T:
    """`wait_for(probe)`, failing at once (with its output) if a process in `alive` exits."""
    watched = list(alive)

    async def check() -> T | None:
        for proc in watched:
            if not proc.running:
                raise AssertionError(
                    f"{proc.name} exited while waiting for {what}\n{proc.describe()}"
                )
        return await probe()

    found = await wait_for(check, timeout=timeout, what=what)
    assert found is not None  # wait_for returns only a truthy value
    return found


# --- database probes ----------------------------------------------------------------------

Db = Executor  # an asyncpg Pool or Connection


async def create_effects_table(db: Db) -> None:
    await db.execute(EFFECTS_DDL)


async def effects(db: Db, action_id: int | None = None) -> list[asyncpg.Record]:
    """Rows of test_effects (for one action, or all), in the order the calls started."""
    if action_id is None:
        return list(await db.fetch("SELECT * FROM public.test_effects ORDER BY id"))
    return list(
        await db.fetch(
            "SELECT * FROM public.test_effects WHERE action_id = $1 ORDER BY id", action_id
        )
    )


async def lease_row(db: Db) -> asyncpg.Record:
    row: asyncpg.Record = await db.fetchrow("SELECT *, now() AS db_now FROM aol.lease WHERE id = 1")
    return row


async def lease_owner_is(db: Db, owner: str) -> asyncpg.Record | None:
    """The lease row once `owner` holds it (unreleased), else None."""
    row = await lease_row(db)
    if row["owner"] == owner and row["released_at"] is None:
        return row
    return None


async def lease_locks(db: Db) -> tuple[int, int]:
    """(sessions holding, sessions waiting for) the lease's advisory lock in this database."""
    high, low = divmod(LEASE_LOCK_KEY, 1 << 32)
    row = await db.fetchrow(LEASE_LOCKS_SQL, high, low)
    return int(row["held"]), int(row["waiting"])


async def action_row(db: Db, action_id: int) -> asyncpg.Record:
    row: asyncpg.Record = await db.fetchrow("SELECT * FROM aol.actions WHERE id = $1", action_id)
    return row


async def action_status_is(db: Db, action_id: int, *statuses: str) -> asyncpg.Record | None:
    row = await action_row(db, action_id)
    return row if row["status"] in statuses else None


async def action_events(db: Db, action_id: int) -> list[asyncpg.Record]:
    return list(
        await db.fetch(
            "SELECT attempt, epoch, event, message FROM aol.execution_logs "
            "WHERE action_id = $1 ORDER BY id",
            action_id,
        )
    )


async def db_clock(db: Db) -> Any:
    """The database's clock_timestamp(), the same clock the handler stamps rows with."""
    return await db.fetchval("SELECT clock_timestamp()")
