"""The lease: one worker per database executes actions.

Protocol
--------
States: ``waiting`` (standby) -> ``held`` -> ``released`` | ``lost``.

* Acquire. On a dedicated connection that never enters a pool, the worker calls
  ``pg_try_advisory_lock(LEASE_LOCK_KEY)``. If it gets the lock it bumps ``aol.lease.epoch``
  (the fencing token) and writes its owner (``host:pid``), heartbeat and expiry, all on the
  database clock. If not, it refuses to start (``LeaseHeld`` names the holder) or, as a
  standby, blocks in ``pg_advisory_lock`` until the holder's session ends.
* Hold. A heartbeat task renews the row every ``heartbeat_interval`` seconds through the
  lock connection itself, so a successful renewal proves the lock session is alive.
  The row's ``expires_at`` (now + TTL) tells observers how fresh the lease is.
* Lose. If a renewal fails, times out, finds the row moved to another epoch, or no renewal
  has succeeded for ``lease_ttl - heartbeat_interval`` seconds, the lease is *lost*: the
  worker stops claiming at once and drops results instead of writing them. Every write
  about an action also names the epoch in its WHERE clause and checks the lease row, so a
  stale holder's late writes change nothing even if it has not noticed yet.
* Release. On shutdown the worker marks the row released and unlocks; closing the
  connection would release the lock too (a crashed process releases it when PostgreSQL
  sees its connection close), and the next holder rescues claims that outlived their
  validity.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from aol.db import store
from aol.db.connect import connect
from aol.errors import LeaseHeld
from aol.logs import get_logger
from aol.model import Epoch
from aol.settings import Settings

log = get_logger("aol.lease")
# How long a standby waits for a terminated holder's session to end before it looks again.
TERMINATE_WAIT_MS = 2000


@dataclass(slots=True)
class Lease:
    """A held lease: the lock connection, the epoch, and the lost signal."""

    conn: asyncpg.Connection[Any]
    owner: str
    epoch: Epoch
    settings: Settings
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    lost_reason: str | None = None
    refused_writes: int = 0
    last_renewed: float = field(default_factory=time.monotonic)
    _task: asyncio.Task[None] | None = None

    def start_heartbeat(self) -> None:
        self._task = asyncio.create_task(self._heartbeat(), name="aol-heartbeat")

    def mark_lost(self, reason: str) -> None:
        if not self.lost.is_set():
            self.lost_reason = reason
            self.lost.set()
            log.error("lease_lost", owner=self.owner, epoch=self.epoch, reason=reason)

    @property
    def held(self) -> bool:
        return not self.lost.is_set()

    async def _heartbeat(self) -> None:
        s = self.settings
        # Renewals must succeed within this budget, or the worker treats the lease as lost
        # before its row expires and a standby could act on it.
        budget = max(s.lease_ttl - s.heartbeat_interval, s.heartbeat_interval)
        while not self.lost.is_set():
            await asyncio.sleep(s.heartbeat_interval)
            try:
                renewed = await store.renew_lease(
                    self.conn,
                    owner=self.owner,
                    epoch=self.epoch,
                    ttl=s.lease_ttl,
                    timeout=s.heartbeat_interval,
                )
            except (asyncpg.PostgresError, OSError, TimeoutError, asyncpg.InterfaceError) as exc:
                log.warning(
                    "heartbeat_failed",
                    epoch=self.epoch,
                    error=str(exc),
                    error_type=type(exc).__name__,
                )
                if self.conn.is_closed() or time.monotonic() - self.last_renewed > budget:
                    self.mark_lost(f"lock connection failed: {type(exc).__name__}: {exc}")
                continue
            if renewed is None:
                self.mark_lost("the lease row has moved to another owner or epoch")
            else:
                self.last_renewed = time.monotonic()

    async def release(self) -> None:
        """Stop the heartbeat, mark the row released and unlock (best effort)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        held = self.held
        self.lost_reason = self.lost_reason or "released"
        self.lost.set()  # nothing may write under this epoch from now on
        try:
            if held and not self.conn.is_closed():
                await store.release_lease(self.conn, owner=self.owner, epoch=self.epoch)
                await store.advisory_unlock(self.conn)
                log.info("lease_released", owner=self.owner, epoch=self.epoch)
        except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as exc:
            log.warning("lease_release_failed", error=str(exc))
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.conn.close(), timeout=5)


async def acquire(settings: Settings, url: str, *, standby: bool) -> Lease:
    """Take the lease or raise `LeaseHeld`; as a standby, wait until it is free."""
    conn = await connect(url, application_name=f"aol-lease {settings.owner}")
    try:
        got = await store.try_advisory_lock(conn)
        if not got:
            holder = await store.read_lease(conn)
            if not standby:
                raise LeaseHeld(holder.owner, holder.epoch)
            log.info("lease_waiting", holder=holder.owner, holder_epoch=holder.epoch)
            await _wait_for_lock(conn, settings)
        epoch = await store.acquire_lease(conn, owner=settings.owner, ttl=settings.lease_ttl)
    except BaseException:
        with contextlib.suppress(Exception):
            await conn.close()
        raise
    lease = Lease(conn=conn, owner=settings.owner, epoch=epoch, settings=settings)
    # The lock lives and dies with this session: if it closes, the lease is gone at once.
    conn.add_termination_listener(lambda _c: lease.mark_lost("lock connection closed"))
    log.info("lease_acquired", owner=settings.owner, epoch=epoch, ttl=settings.lease_ttl)
    return lease


async def _wait_for_lock(conn: asyncpg.Connection[Any], settings: Settings) -> None:
    """Standby: block on the lock, looking at the lease row every heartbeat interval.

    The lock frees the moment the holder's session ends (exit, crash, kill -9), and the wait
    returns at once. A frozen holder (SIGSTOP, a blocked event loop) keeps its session and so
    its lock; once its lease row has expired on the database clock, the standby terminates
    the holder's backend, which frees the lock.
    """
    await store.set_lock_timeout(conn, seconds=settings.heartbeat_interval)
    while True:
        try:
            await store.wait_advisory_lock(conn)
            break
        except asyncpg.LockNotAvailableError:
            pass
        holder = await store.read_lease(conn)
        if holder.expires_at is None or holder.expires_at >= holder.now:
            continue
        pid = await store.lease_lock_holder(conn)
        if pid is None:
            continue
        overdue = (holder.now - holder.expires_at).total_seconds()
        log.warning(
            "lease_holder_terminated",
            holder=holder.owner,
            holder_epoch=holder.epoch,
            pid=pid,
            overdue_s=round(overdue, 3),
        )
        try:
            await store.terminate_backend(conn, pid=pid, wait_ms=TERMINATE_WAIT_MS)
        except asyncpg.InsufficientPrivilegeError as exc:
            log.error(
                "lease_takeover_refused",
                holder=holder.owner,
                pid=pid,
                error=str(exc),
                hint="grant pg_signal_backend to the worker role (aol roles create "
                "--allow-terminate); a superuser's backend cannot be terminated by others",
            )
    await store.set_lock_timeout(conn, seconds=0)
