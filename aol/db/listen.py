"""The LISTEN connection: wake-up events, reconnection, and a full scan after each reconnect.

It lives on a dedicated connection (a pooled one would be UNLISTENed on release).
Notifications sent while it is disconnected are lost, so every reconnect sets the wake-up
event: the worker then scans as if it had been notified.

The same connection holds the wake-up lock while the worker sleeps (migration 0006):
enqueuers notify only while it is held, so a busy worker does not make every committing
enqueuer take the notification queue's lock. `enter_idle` takes it (waiting for enqueuers
that skipped their notification to commit, so the worker's last look sees their rows);
`leave_idle` lets it go when the worker wakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from typing import Any

import asyncpg

from aol.db import store
from aol.db.connect import connect
from aol.errors import DatabaseUnavailable
from aol.logs import get_logger

log = get_logger("aol.listen")
RECONNECT_MIN = 0.1
RECONNECT_MAX = 5.0
PROBE_PREFIX = "probe:"
PROBE_TIMEOUT = 5.0
FLAGS_PAYLOAD = "flags"
# How long a worker going to sleep waits for enqueuers still in their transactions.
IDLE_LOCK_WAIT = 0.2


class Listener:
    """Keeps one LISTEN alive on `channel`; `wake` is set on every notification."""

    def __init__(self, url: str, channel: str, *, application_name: str = "aol-listen") -> None:
        self.url = url
        self.channel = channel
        self.application_name = application_name
        self.wake = asyncio.Event()
        self.flags = asyncio.Event()  # set when a control flag changed
        self.last_payload: str | None = None
        self._probes: dict[str, asyncio.Future[None]] = {}
        self._conn: asyncpg.Connection[Any] | None = None
        self._closing = False
        self._reconnect: asyncio.Task[None] | None = None
        self.reconnects = 0
        self._idle_on: asyncpg.Connection[Any] | None = None  # the connection holding it
        self._leaving: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def start(self) -> None:
        await self._open()
        log.info("listener_started", channel=self.channel)

    async def _open(self) -> None:
        conn = await connect(self.url, application_name=self.application_name)
        await conn.add_listener(self.channel, self._on_notify)
        conn.add_termination_listener(self._on_terminated)
        await store.set_lock_timeout(conn, seconds=IDLE_LOCK_WAIT)
        self._conn = conn

    async def enter_idle(self) -> bool:
        """Take the wake-up lock before the worker's last look and its sleep.

        True when the worker may sleep until notified: the lock is held, or the connection
        is down (its reconnect wakes the worker anyway). False when enqueuers kept it
        for longer than `IDLE_LOCK_WAIT` (a long transaction after an enqueue): they will
        not notify, so the worker must look again soon instead of sleeping.
        """
        await self._settle_leave()
        conn = self._conn
        if conn is None or conn.is_closed():
            return True
        if self._idle_on is conn:
            return True
        try:
            await store.wait_advisory_lock(conn, key=store.IDLE_LOCK_KEY)
        except asyncpg.LockNotAvailableError:
            return False
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            return True  # the connection is going: its reconnect wakes the worker
        self._idle_on = conn
        return True

    def leave_idle(self) -> None:
        """Release the wake-up lock, beside the tick that follows (not before it)."""
        conn, self._idle_on = self._idle_on, None
        if conn is None or conn.is_closed():
            return
        self._leaving = asyncio.get_running_loop().create_task(
            self._unlock(conn), name="aol-listen-leave-idle"
        )

    async def _unlock(self, conn: asyncpg.Connection[Any]) -> None:
        with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            await store.advisory_unlock(conn, key=store.IDLE_LOCK_KEY)

    async def _settle_leave(self) -> None:
        if self._leaving is not None:
            leaving, self._leaving = self._leaving, None
            await leaving

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        text = str(payload)
        if text.startswith(PROBE_PREFIX):
            waiter = self._probes.get(text[len(PROBE_PREFIX) :])
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            return  # a probe is not work: it must not wake the worker
        self.last_payload = text
        if text == FLAGS_PAYLOAD:
            self.flags.set()
        self.wake.set()

    async def probe(self, db: store.Executor, *, timeout: float) -> bool:
        """Send a NOTIFY to ourselves and wait for it: proof the LISTEN session still hears.

        A listener can die silently (a half-open TCP connection); on a failed probe the
        connection is dropped, which reconnects and triggers a full scan.
        """
        if not self.connected:
            return False
        token = secrets.token_hex(8)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._probes[token] = waiter
        try:
            await store.notify(db, channel=self.channel, payload=PROBE_PREFIX + token)
            await asyncio.wait_for(waiter, timeout=timeout)
            return True
        except TimeoutError:
            log.warning("listener_probe_failed", channel=self.channel, timeout_s=timeout)
            if self._conn is not None and not self._conn.is_closed():
                self._conn.terminate()  # runs the termination listener: reconnect + scan
            return False
        finally:
            self._probes.pop(token, None)

    async def probe_forever(self, db: store.Executor, *, interval: float) -> None:
        while not self._closing:
            await asyncio.sleep(interval)
            with contextlib.suppress(Exception):  # a dead database shows up elsewhere
                await self.probe(db, timeout=min(interval, PROBE_TIMEOUT))

    def _on_terminated(self, _conn: Any) -> None:
        if self._closing:
            return
        log.warning("listener_lost", channel=self.channel)
        self._conn = None
        self._idle_on = None  # its session, and so the lock, is gone
        if self._reconnect is None or self._reconnect.done():
            self._reconnect = asyncio.get_running_loop().create_task(
                self._reconnect_loop(), name="aol-listen-reconnect"
            )

    async def _reconnect_loop(self) -> None:
        delay = RECONNECT_MIN
        while not self._closing:
            try:
                await self._open()
            except (DatabaseUnavailable, asyncpg.PostgresError, OSError) as exc:
                log.warning("listener_lost", channel=self.channel, error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(RECONNECT_MAX, delay * 2)
                continue
            self.reconnects += 1
            log.info("listener_reconnected", channel=self.channel, reconnects=self.reconnects)
            self.wake.set()  # notifications may have been missed: scan everything
            return

    async def close(self) -> None:
        self._closing = True
        with contextlib.suppress(Exception):
            await self._settle_leave()
        if self._reconnect is not None:
            self._reconnect.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnect
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._conn.close(), timeout=5)
            self._conn = None


class Quiet:
    """Poll-only mode (for poolers that do not carry LISTEN): events that never fire, so
    the worker wakes on its scan interval and on due times only."""

    def __init__(self) -> None:
        self.wake = asyncio.Event()
        self.flags = asyncio.Event()
        self.connected = False

    async def start(self) -> None:
        log.info("listener_started", channel=None, mode="poll-only")

    async def enter_idle(self) -> bool:
        return True  # nothing is notified without a listener: the worker polls

    def leave_idle(self) -> None:
        return None

    async def probe_forever(self, db: store.Executor, *, interval: float) -> None:
        return None

    async def close(self) -> None:
        return None
