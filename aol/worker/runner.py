"""The run loop: hold the lease, tick on NOTIFY or on the safety-net scan, drain on signals.

Between ticks the worker sleeps until the earliest of: a notification, the next due
`not_before`, the next claim expiry to rescue, the scan interval, a stop signal or the
loss of the lease. With `ticks=N` it runs N ticks back to back and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from typing import Any

from aol import policy
from aol.actions.registry import Registry, default_registry, load_modules
from aol.db import store
from aol.db.connect import create_pool
from aol.db.listen import Listener
from aol.db.migrate import check_revision
from aol.logs import get_logger
from aol.model import TickOutcome
from aol.settings import Settings
from aol.worker import lease as lease_mod
from aol.worker.dispatch import WorkerContext
from aol.worker.tick import TickReport, run_tick

log = get_logger("aol.worker")

EXIT_OK = 0
EXIT_LEASE_LOST = 4
# When due actions exist but none could be claimed (rows locked elsewhere), wait this long
# instead of spinning.
UNCLAIMABLE_BACKOFF = 1.0
RESCUE_SLACK = 0.05


async def run_worker(
    settings: Settings,
    url: str,
    *,
    ticks: int | None = None,
    registry: Registry | None = None,
    stop: asyncio.Event | None = None,
) -> int:
    """Run until stopped, killed, or `ticks` ticks are done; returns the exit code."""
    registry = registry or default_registry
    if registry is default_registry:
        load_modules(settings.handlers)
    stop = stop or asyncio.Event()
    log.info(
        "worker_starting",
        owner=settings.owner,
        handlers=registry.names(),
        **{k: v for k, v in settings.masked().items() if k not in ("owner", "handlers")},
    )
    while True:
        lease = await _acquire(settings, url, stop)
        if lease is None:
            log.info("worker_stopped", owner=settings.owner, epoch=None, exit_code=EXIT_OK)
            return EXIT_OK
        lease.start_heartbeat()
        try:
            code = await _serve(settings, url, lease, registry, stop, ticks)
        finally:
            await lease.release()
        if code == EXIT_LEASE_LOST and settings.standby and not stop.is_set():
            log.info("lease_waiting", reason="lost the lease; waiting to take it again")
            continue
        log.info("worker_stopped", owner=settings.owner, epoch=lease.epoch, exit_code=code)
        return code


async def _acquire(settings: Settings, url: str, stop: asyncio.Event) -> lease_mod.Lease | None:
    """Take the lease; None when a stop signal ends the wait first (a standby blocked on the
    lock must still honour SIGTERM instead of hanging until the holder exits)."""
    acquiring = asyncio.create_task(
        lease_mod.acquire(settings, url, standby=settings.standby), name="aol-acquire"
    )
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({acquiring, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not acquiring.done():
            acquiring.cancel()  # closes the lock connection, which drops the wait
    try:
        return await acquiring
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
        return None


async def _serve(
    settings: Settings,
    url: str,
    lease: lease_mod.Lease,
    registry: Registry,
    stop: asyncio.Event,
    ticks: int | None,
) -> int:
    pool = await create_pool(url, min_size=1, max_size=settings.batch_size + 2)
    listener = Listener(url, store.WAKEUP_CHANNEL, application_name=f"aol-listen {lease.owner}")
    try:
        check_revision(await store.read_schema_revision(pool))
        await listener.start()
        ctx = WorkerContext(
            pool=pool,
            lease=lease,
            settings=settings,
            registry=registry,
            data_dir=settings.data_dir,
        )
        return await _loop(ctx, listener, stop, ticks)
    finally:
        await listener.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(pool.close(), timeout=10)


async def _loop(
    ctx: WorkerContext, listener: Listener, stop: asyncio.Event, ticks: int | None
) -> int:
    settings, lease = ctx.settings, ctx.lease
    tick_no = 0
    rechecked = False
    while not stop.is_set():
        if not lease.held:
            return EXIT_LEASE_LOST
        tick_no += 1
        listener.wake.clear()
        report = await _tick_with_grace(ctx, tick_no, stop)
        if report.outcome is TickOutcome.KILLED:
            log.warning("worker_killed", owner=lease.owner, epoch=lease.epoch, tick=tick_no)
            return EXIT_OK
        if ticks is not None:
            if tick_no >= ticks:
                break
            continue
        if report.claimed >= settings.batch_size and report.outcome is TickOutcome.OK:
            continue  # a full batch: more work is probably waiting
        delay = await _idle_delay(ctx, report, rechecked=rechecked)
        # An action that fell due between the claim and the look at the clock gets one
        # immediate tick; a second empty one in a row means the due rows are locked
        # elsewhere, and the worker backs off instead of spinning.
        rechecked = delay == 0 and report.claimed == 0
        if delay > 0:
            await _sleep(delay, listener.wake, stop, lease.lost)
    if stop.is_set():
        log.info("worker_stopping", owner=lease.owner, epoch=lease.epoch)
    return EXIT_OK if lease.held else EXIT_LEASE_LOST


async def _tick_with_grace(ctx: WorkerContext, tick_no: int, stop: asyncio.Event) -> TickReport:
    """Run a tick; on a stop signal let it finish within the shutdown grace, then cancel it."""
    task = asyncio.create_task(run_tick(ctx, tick_no), name=f"aol-tick-{tick_no}")
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            log.info(
                "worker_stopping",
                tick=tick_no,
                grace_s=ctx.settings.shutdown_grace,
                reason="waiting for in-flight actions",
            )
            done, _ = await asyncio.wait({task}, timeout=ctx.settings.shutdown_grace)
            if not done:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                return TickReport(
                    tick=tick_no, outcome=TickOutcome.ERROR, error="cancelled at shutdown"
                )
        return task.result()
    finally:
        stopper.cancel()


async def _idle_delay(ctx: WorkerContext, report: TickReport, *, rechecked: bool) -> float:
    scan = ctx.settings.scan_interval
    if report.outcome in (TickOutcome.PAUSED, TickOutcome.ERROR, TickOutcome.TIMEOUT):
        return scan if report.outcome is TickOutcome.PAUSED else UNCLAIMABLE_BACKOFF
    try:
        now, next_due, next_expiry = await store.next_wakeup(ctx.pool)
    except Exception:  # the database is away: back off, the next tick will report it
        return UNCLAIMABLE_BACKOFF
    if next_expiry is not None:
        next_expiry += timedelta(seconds=RESCUE_SLACK)
    candidates = [t for t in (next_due, next_expiry) if t is not None]
    delay = policy.sleep_seconds(
        now=now, next_due=min(candidates, default=None), scan_interval=scan
    )
    if delay == 0 and report.claimed == 0 and rechecked:
        return UNCLAIMABLE_BACKOFF
    return delay


async def _sleep(delay: float, *events: asyncio.Event) -> None:
    waiters: list[asyncio.Task[Any]] = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
