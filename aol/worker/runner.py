"""The run loop: hold the lease, tick on NOTIFY or on the safety-net scan, drain on signals.

Between ticks the worker sleeps until the earliest of: a notification, the next due
`not_before`, the next claim expiry to rescue, the scan interval, a stop signal or the
loss of the lease. With `ticks=N` it runs N ticks back to back and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from datetime import timedelta
from typing import Any

import asyncpg

from aol import policy
from aol.actions.registry import Registry, default_registry, load_modules
from aol.db import store
from aol.db.connect import create_pool
from aol.db.listen import Listener, Quiet
from aol.db.revisions import check_revision
from aol.errors import DatabaseUnavailable
from aol.eventloop import running_loop_name
from aol.logs import get_logger
from aol.model import TickOutcome
from aol.settings import Settings
from aol.worker import lease as lease_mod
from aol.worker.dispatch import Interrupt, WorkerContext
from aol.worker.health import HealthServer, Readiness
from aol.worker.metrics import WorkerMetrics
from aol.worker.tick import TickReport, record_interrupt, run_tick, settle_writes
from aol.worker.watchdog import Watchdog

log = get_logger("aol.worker")

EXIT_OK = 0
EXIT_LEASE_LOST = 4
# When due actions exist but none could be claimed (rows locked elsewhere), wait this long
# instead of spinning.
UNCLAIMABLE_BACKOFF = 1.0
RESCUE_SLACK = 0.05
# Results are written in one statement per tick; failures queue for a pooled connection
# rather than opening one each, so a large batch cannot exhaust the server's connections.
POOL_MAX_SIZE = 10
# A standby whose database is away tries again this often.
STANDBY_RETRY = 1.0
_DATABASE_ERRORS = (DatabaseUnavailable, asyncpg.PostgresError, asyncpg.InterfaceError, OSError)


async def run_worker(
    settings: Settings,
    url: str,
    *,
    ticks: int | None = None,
    registry: Registry | None = None,
    stop: asyncio.Event | None = None,
    freeze_heap: bool = False,
) -> int:
    """Run until stopped, killed, or `ticks` ticks are done; returns the exit code.

    `freeze_heap` (for a process that runs one worker, as `aol run` is): once the handler
    modules are loaded, what the process holds moves to the collector's permanent
    generation (`gc.freeze`). A full collection otherwise walks every object of every
    imported module, 30 to 40 ms at a time, every few ticks of a busy worker.
    """
    registry = registry or default_registry
    if registry is default_registry:
        load_modules(settings.handlers)
    if freeze_heap:
        gc.collect()
        gc.freeze()
    stop = stop or asyncio.Event()
    log.info(
        "worker_starting",
        owner=settings.owner,
        handlers=registry.names(),
        **{
            k: v
            for k, v in settings.masked().items()
            if k not in ("owner", "handlers", "event_loop")
        },
        event_loop=running_loop_name(),  # the loop it runs on, not only the one asked for
        frozen_objects=gc.get_freeze_count(),
    )
    guard: contextlib.AbstractAsyncContextManager[Any] = (
        Watchdog(settings.lease_ttl / 2) if settings.watchdog else contextlib.nullcontext()
    )
    readiness = Readiness(owner=settings.owner)
    health: contextlib.AbstractAsyncContextManager[Any] = (
        HealthServer(settings.health_host, settings.health_port, readiness, url)
        if settings.health_port is not None
        else contextlib.nullcontext()
    )
    async with guard, health:
        return await _hold_and_serve(settings, url, registry, stop, ticks, readiness)


async def _hold_and_serve(
    settings: Settings,
    url: str,
    registry: Registry,
    stop: asyncio.Event,
    ticks: int | None,
    readiness: Readiness,
) -> int:
    while True:
        readiness.role, readiness.epoch = ("standby" if settings.standby else "starting"), None
        try:
            lease = await _acquire(settings, url, stop)
        except _DATABASE_ERRORS as exc:
            if not settings.standby:
                raise
            # A standby outlives its database: wait for it to come back.
            log.warning("lease_waiting", reason="database unavailable", error=str(exc))
            await _sleep(STANDBY_RETRY, stop)
            if stop.is_set():
                return EXIT_OK
            continue
        if lease is None:
            log.info("worker_stopped", owner=settings.owner, epoch=None, exit_code=EXIT_OK)
            return EXIT_OK
        lease.start_heartbeat()
        readiness.role, readiness.epoch = "holding", lease.epoch
        readiness.metrics.lease = lease
        try:
            code = await _serve(settings, url, lease, registry, stop, ticks, readiness.metrics)
        except _DATABASE_ERRORS as exc:
            if not settings.standby:
                raise
            log.warning(
                "lease_lost", epoch=lease.epoch, reason="database unavailable", error=str(exc)
            )
            code = EXIT_LEASE_LOST
        finally:
            readiness.role = "lost"
            await lease.release()
        log.info("lease_summary", epoch=lease.epoch, refused_writes=lease.refused_writes)
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
    metrics: WorkerMetrics,
) -> int:
    # Nothing on the worker's pool leaves session state (the locks and LISTEN have their own
    # connections), so releases skip asyncpg's reset query: one round trip less a statement.
    pool = await create_pool(
        url,
        min_size=1,
        max_size=min(settings.batch_size + 2, POOL_MAX_SIZE),
        application_name=f"aol-worker {lease.owner}",
        reset_session=False,
    )
    listener: Listener | Quiet = (
        Listener(url, store.WAKEUP_CHANNEL, application_name=f"aol-listen {lease.owner}")
        if settings.listen
        else Quiet()
    )
    prober: asyncio.Task[None] | None = None
    try:
        check_revision(await store.read_schema_revision(pool))
        await listener.start()
        prober = asyncio.create_task(
            listener.probe_forever(pool, interval=settings.listen_probe_interval),
            name="aol-listen-probe",
        )
        ctx = WorkerContext(
            pool=pool,
            lease=lease,
            settings=settings,
            registry=registry,
            data_dir=settings.data_dir,
            metrics=metrics,
        )
        return await _loop(ctx, listener, stop, ticks)
    finally:
        if prober is not None:
            prober.cancel()
        await listener.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(pool.close(), timeout=10)


async def _loop(
    ctx: WorkerContext, listener: Listener | Quiet, stop: asyncio.Event, ticks: int | None
) -> int:
    try:
        return await _ticks(ctx, listener, stop, ticks)
    finally:
        with contextlib.suppress(Exception):  # the last tick's results, if still in flight
            await asyncio.wait_for(settle_writes(ctx), timeout=ctx.settings.tick_timeout)


async def _ticks(
    ctx: WorkerContext, listener: Listener | Quiet, stop: asyncio.Event, ticks: int | None
) -> int:
    settings, lease = ctx.settings, ctx.lease
    tick_no = 0
    rechecked = False
    while not stop.is_set():
        if not lease.held:
            return EXIT_LEASE_LOST
        tick_no += 1
        listener.wake.clear()
        report = await _tick_with_grace(ctx, tick_no, stop, listener.flags)
        if report.outcome is TickOutcome.KILLED:
            log.warning("worker_killed", owner=lease.owner, epoch=lease.epoch, tick=tick_no)
            return EXIT_OK
        if ticks is not None:
            if tick_no >= ticks:
                break
            continue
        if report.claimed >= settings.batch_size and report.outcome is TickOutcome.OK:
            continue  # a full batch: more work is probably waiting
        if _busy(report, settings):
            rechecked = False
            await _sleep(settings.busy_poll, listener.wake, stop, lease.lost)
            continue
        delay = await _go_idle(ctx, listener, report, rechecked, stop)
        # An action that fell due between the claim and the look at the clock gets one
        # immediate tick; a second empty one in a row means the due rows are locked
        # elsewhere, and the worker backs off instead of spinning.
        rechecked = delay == 0 and report.claimed == 0
        if delay > 0:
            await _sleep(delay, listener.wake, stop, lease.lost)
        listener.leave_idle()
    if stop.is_set():
        log.info("worker_stopping", owner=lease.owner, epoch=lease.epoch)
    return EXIT_OK if lease.held else EXIT_LEASE_LOST


def _busy(report: TickReport, settings: Settings) -> bool:
    """More than one action found waiting: they arrive faster than the worker ticks. Then
    it claims again after `busy_poll` instead of sleeping on the wake-up lock, so that the
    enqueuers of a busy queue do not notify (every notifying commit takes the notification
    queue's lock, which serialises committers); the first claim that finds at most one
    action sends it back to sleeping until notified."""
    return (
        settings.busy_poll > 0
        and report.outcome is TickOutcome.OK
        and 1 < report.claimed < settings.batch_size
    )


async def _tick_with_grace(
    ctx: WorkerContext, tick_no: int, stop: asyncio.Event, flags_changed: asyncio.Event
) -> TickReport:
    """Run a tick, watching what may cut it short while it runs.

    * a stop signal: in-flight actions get the shutdown grace, then the tick is cancelled;
    * the kill switch (a flag change is notified): the tick is cancelled at once, and its
      unfinished actions go back to retry, or to cancelled when the kill says so;
    * a lost lease: the tick is cancelled at once; nothing more is written under its epoch.
    """
    task = asyncio.create_task(run_tick(ctx, tick_no), name=f"aol-tick-{tick_no}")
    deadline: float | None = None
    loop = asyncio.get_running_loop()
    while not task.done():
        watched = {"lost": ctx.lease.lost, "flags": flags_changed}
        if deadline is None:
            watched["stop"] = stop
        waiters: dict[asyncio.Task[Any], str] = {
            asyncio.create_task(ev.wait()): name for name, ev in watched.items()
        }
        timeout = None if deadline is None else max(0.0, deadline - loop.time())
        try:
            done, _ = await asyncio.wait(
                {task, *waiters}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in waiters:
                waiter.cancel()
        if task.done():
            break
        fired = {name for w, name in waiters.items() if w in done}
        if "lost" in fired:
            return await _interrupt(ctx, task, tick_no, Interrupt(reason="lease lost mid-attempt"))
        if "flags" in fired:
            flags_changed.clear()
            flags = await store.read_flags(ctx.pool)
            if task.done():
                # The tick ended (its ledger row written, or on its way) while the flags
                # were read: keep its report. The notification also set the wake-up event,
                # so the next tick starts at once and its claim reads the kill (and records
                # it).
                break
            if flags.killed and ctx.interrupt.kill_seen:
                # The tick's own claim read the kill: nothing runs, and it is writing its
                # ledger row. Cancelling it there would leave that row half-known and make
                # a second one for the same kill.
                continue
            if flags.killed:
                verdict = "cancelled" if flags.kill_cancels else "retried"
                log.warning(
                    "worker_interrupted", tick=tick_no, reason="kill switch", in_flight=verdict
                )
                return await _interrupt(
                    ctx,
                    task,
                    tick_no,
                    Interrupt(
                        reason=f"killed by operator ({flags.changed_by}: {flags.reason or '-'})",
                        cancel_actions=flags.kill_cancels,
                        outcome=TickOutcome.KILLED,
                    ),
                )
        if "stop" in fired:
            deadline = loop.time() + ctx.settings.shutdown_grace
            log.info(
                "worker_stopping",
                tick=tick_no,
                grace_s=ctx.settings.shutdown_grace,
                reason="waiting for in-flight actions",
            )
        elif deadline is not None and loop.time() >= deadline:
            return await _interrupt(
                ctx, task, tick_no, Interrupt(reason="worker stopped mid-attempt")
            )
    return task.result()


async def _interrupt(
    ctx: WorkerContext, task: asyncio.Task[TickReport], tick_no: int, why: Interrupt
) -> TickReport:
    ctx.interrupt.reason = why.reason
    ctx.interrupt.cancel_actions = why.cancel_actions
    ctx.interrupt.outcome = why.outcome
    ctx.interrupt.recorded = False
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    if not ctx.interrupt.recorded:
        # The tick ended before the cancellation reached it, or it was cut short while
        # writing its own ledger row: the interruption gets a row of its own, under the
        # next tick number (the loop ends after an interruption, so no tick takes it).
        await record_interrupt(ctx, tick_no + 1)
    return TickReport(tick=0, outcome=why.outcome, error=why.reason)


async def _go_idle(
    ctx: WorkerContext,
    listener: Listener | Quiet,
    report: TickReport,
    rechecked: bool,
    stop: asyncio.Event,
) -> float:
    """How long to sleep, decided after taking the wake-up lock (so that every enqueuer
    that did not notify has committed, and the last look sees its rows). A paused or
    failing worker sleeps without the lock: enqueuers need not wake it."""
    if ctx.housekeeping.writing_failures:
        await settle_writes(ctx)  # the retries the last tick schedules: their due times count
    if report.outcome not in (TickOutcome.OK, TickOutcome.IDLE):
        return await _idle_delay(ctx, report, rechecked=rechecked)
    while True:
        idle = await listener.enter_idle()
        delay = await _idle_delay(ctx, report, rechecked=rechecked)
        if idle or delay == 0 or listener.wake.is_set() or stop.is_set() or not ctx.lease.held:
            return delay
        # An enqueuer is still in its transaction and will not notify: look again. (Also
        # the case while a frozen former holder's LISTEN session keeps the lock; enqueuers
        # then notify everyone, and the wake-up event ends this loop.)


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
