"""One tick: claim (reading the flags in the same statement), dispatch, rescue expired
claims, record the ledger row.

A tick runs under `asyncio.timeout(tick_timeout)`. Actions whose attempt was cut short by
the tick timeout (or by shutdown) are recorded as failed attempts, so nothing is left in
`running` by a live worker.

Write-behind: a tick that claimed work hands the writing of its results and ledger row to
a task and returns; the next tick claims and runs its handlers while that write runs, and
waits for it before writing its own. So at most one tick's results are in flight, ledger
rows stay in tick order, and neither the next claim nor the next handlers wait for the
previous write. Results are fenced as always. When the write holds failed attempts, the
next claim, and the run loop's last look for work ahead of a sleep, wait for it (so the
retries it schedules are seen); whoever ends the loop waits for the last write
(`settle_writes`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

from aol import policy
from aol.db import store
from aol.errors import AttemptInterrupted
from aol.logs import get_logger
from aol.model import Action, AttemptResult, TickOutcome
from aol.worker.dispatch import (
    Outcome,
    WorkerContext,
    record_failure,
    record_outcomes,
    run_batch,
)

log = get_logger("aol.tick")
CLEANUP_TIMEOUT = 5.0
RESCUE_INTERVAL = 1.0


@dataclass(frozen=True, slots=True)
class TickReport:
    tick: int
    outcome: TickOutcome
    claimed: int = 0
    succeeded: int = 0
    retried: int = 0
    dead: int = 0
    discarded: int = 0
    rescued: int = 0
    duration_ms: float = 0.0
    error: str | None = None
    # True when the results are still being written (write-behind): the counts above are
    # then only the claim's, and the ledger row follows.
    deferred: bool = False


async def run_tick(ctx: WorkerContext, tick: int) -> TickReport:
    started = time.monotonic()
    results: dict[int, AttemptResult] = {}
    outcomes: dict[int, Outcome] = {}
    claimed: list[Action] = []
    outcome: TickOutcome
    error: str | None = None
    rescued = 0
    timed_out = failed = False
    ctx.interrupt.kill_seen = False
    try:
        async with asyncio.timeout(ctx.settings.tick_timeout):
            if not ctx.lease.held:
                outcome = TickOutcome.ERROR
                error = "lease lost"
            else:
                if ctx.housekeeping.writing_failures:
                    # The retries the previous tick schedules may be due at once: this
                    # claim must see them, whichever way the loop came here.
                    await settle_writes(ctx)
                got = await store.claim(
                    ctx.pool,
                    owner=ctx.lease.owner,
                    epoch=ctx.lease.epoch,
                    limit=ctx.settings.batch_size,
                    claim_ttl=ctx.settings.claim_ttl,
                )
                claimed = got.actions
                ctx.interrupt.kill_seen = got.killed
                if got.killed:
                    outcome = TickOutcome.KILLED
                elif got.paused:
                    outcome = TickOutcome.PAUSED
                else:
                    await run_batch(
                        ctx, claimed, proof=got.proof_mode, tick=tick, outcomes=outcomes
                    )
                    rescued = await _rescue_when_due(ctx)
                    await settle_writes(ctx)  # the previous tick's results land before ours
                    if claimed and ctx.lease.held:
                        return _write_behind(ctx, tick, claimed, outcomes, rescued, started)
                    results.update(await record_outcomes(ctx, list(outcomes.values()), tick=tick))
                    outcome = policy.tick_outcome(
                        claimed=len(claimed), timed_out=False, failed=False
                    )
    except TimeoutError:
        timed_out = True
        error = f"tick exceeded its timeout of {ctx.settings.tick_timeout:g}s"
        log.error("tick_timeout", tick=tick, epoch=ctx.lease.epoch, error=error)
    except asyncio.CancelledError:
        # Cut short (shutdown past its grace, kill, lost lease): close the books on what was
        # claimed, so a live worker leaves nothing in `running`, then go.
        stop = ctx.interrupt
        await _fail_unfinished(
            ctx, claimed, outcomes, results, tick, stop.reason, cancel=stop.cancel_actions
        )
        with contextlib.suppress(Exception):
            await settle_writes(ctx)
        ctx.metrics.tick_done(stop.outcome, started, claimed, outcomes, results, rescued)
        await _record(
            ctx, _report(tick, stop.outcome, claimed, results, rescued, started, stop.reason)
        )
        stop.recorded = True
        raise
    except Exception as exc:  # the database went away, or a bug: the tick fails, not the worker
        failed = True
        error = _tick_failed(ctx, tick, exc)
    if timed_out or failed:
        await _fail_unfinished(ctx, claimed, outcomes, results, tick, error or "tick failed")
        outcome = policy.tick_outcome(claimed=len(claimed), timed_out=timed_out, failed=failed)

    ctx.metrics.tick_done(outcome, started, claimed, outcomes, results, rescued)
    report = _report(tick, outcome, claimed, results, rescued, started, error)
    with contextlib.suppress(Exception):
        await settle_writes(ctx)  # the previous tick's row first (paused, killed, failed ticks)
    await _record(ctx, report)
    return report


def _tick_failed(ctx: WorkerContext, tick: int, exc: Exception) -> str:
    error = f"{type(exc).__name__}: {exc}"
    log.error(
        "tick_failed", tick=tick, epoch=ctx.lease.epoch, error=error, error_type=type(exc).__name__
    )
    return error


async def settle_writes(ctx: WorkerContext) -> None:
    """Wait for the previous tick's write-behind, if any (it is never cancelled from here:
    results of attempts that ran must be written)."""
    writing = ctx.housekeeping.writing
    if writing is None:
        return
    if not writing.done():
        await asyncio.shield(writing)
    ctx.housekeeping.writing = None
    ctx.housekeeping.writing_failures = False


def _write_behind(
    ctx: WorkerContext,
    tick: int,
    claimed: list[Action],
    outcomes: dict[int, Outcome],
    rescued: int,
    started: float,
) -> TickReport:
    """Hand the tick's results to a task (see the module's docstring); its report says so."""
    ctx.housekeeping.writing_failures = len(outcomes) < len(claimed) or any(
        o.error is not None for o in outcomes.values()
    )
    ctx.housekeeping.writing = asyncio.get_running_loop().create_task(
        _write(ctx, tick, claimed, outcomes, rescued, started), name=f"aol-tick-{tick}-write"
    )
    return TickReport(tick=tick, outcome=TickOutcome.OK, claimed=len(claimed), deferred=True)


async def _write(
    ctx: WorkerContext,
    tick: int,
    claimed: list[Action],
    outcomes: dict[int, Outcome],
    rescued: int,
    started: float,
) -> None:
    """Write a tick's results and its ledger row, as `run_tick` would have."""
    results: dict[int, AttemptResult] = {}
    outcome, error = TickOutcome.OK, None
    try:
        async with asyncio.timeout(ctx.settings.tick_timeout):
            results.update(await record_outcomes(ctx, list(outcomes.values()), tick=tick))
    except Exception as exc:  # the database went away: the same as a tick that failed
        error = _tick_failed(ctx, tick, exc)
        await _fail_unfinished(ctx, claimed, outcomes, results, tick, error)
        outcome = policy.tick_outcome(claimed=len(claimed), timed_out=False, failed=True)
    ctx.metrics.tick_done(outcome, started, claimed, outcomes, results, rescued)
    await _record(ctx, _report(tick, outcome, claimed, results, rescued, started, error))


def _report(
    tick: int,
    outcome: TickOutcome,
    claimed: list[Action],
    results: dict[int, AttemptResult],
    rescued: int,
    started: float,
    error: str | None,
) -> TickReport:
    counts = list(results.values())
    return TickReport(
        tick=tick,
        outcome=outcome,
        claimed=len(claimed),
        succeeded=counts.count(AttemptResult.SUCCEEDED),
        retried=counts.count(AttemptResult.RETRY),
        dead=counts.count(AttemptResult.DEAD),
        discarded=counts.count(AttemptResult.DISCARDED),
        rescued=rescued,
        duration_ms=round((time.monotonic() - started) * 1000, 3),
        error=error,
    )


async def _rescue_when_due(ctx: WorkerContext) -> int:
    """Expired claims are rare: look for them at most once a second, not on the hot path of
    every tick (the sleep still wakes at each expiry). Their actions are claimed from the
    next tick on."""
    if time.monotonic() < ctx.housekeeping.next_rescue:
        return 0
    ctx.housekeeping.next_rescue = time.monotonic() + RESCUE_INTERVAL
    rescued = await store.rescue_expired_claims(
        ctx.pool, epoch=ctx.lease.epoch, max_attempts=ctx.settings.max_attempts
    )
    for action_id, status in rescued:
        log.warning("action_rescued", action_id=action_id, status=status, epoch=ctx.lease.epoch)
    return len(rescued)


async def _fail_unfinished(
    ctx: WorkerContext,
    claimed: list[Action],
    outcomes: dict[int, Outcome],
    results: dict[int, AttemptResult],
    tick: int,
    reason: str,
    *,
    cancel: bool = False,
) -> None:
    """Close the books on a tick cut short: write the attempts that did finish (a finished
    side effect must not be run again), then record a failed (or, with `cancel`, cancelled)
    attempt for every claimed action that has no result yet."""
    finished = [o for i, o in outcomes.items() if i not in results]
    if finished:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLEANUP_TIMEOUT):
                results.update(await record_outcomes(ctx, finished, tick=tick))
    pending = [a for a in claimed if a.id not in results]
    if not pending:
        return
    with contextlib.suppress(Exception):
        async with asyncio.timeout(CLEANUP_TIMEOUT):
            for action in pending:
                if cancel and ctx.lease.held:
                    written = await store.cancel_running_action(
                        ctx.pool,
                        action_id=action.id,
                        epoch=ctx.lease.epoch,
                        attempt=action.attempts,
                        tick=tick,
                        reason=reason,
                    )
                    if written:
                        log.warning("action_cancelled", action_id=action.id, reason=reason)
                        results[action.id] = AttemptResult.CANCELLED
                        continue
                results[action.id] = await record_failure(
                    ctx, action, tick=tick, duration_ms=0.0, error=AttemptInterrupted(reason)
                )


async def record_interrupt(ctx: WorkerContext, tick: int) -> None:
    """A ledger row for an interruption that no tick recorded: the tick had ended, or was
    cut short while writing its own row (`tick` is a number no tick of this epoch used)."""
    stop = ctx.interrupt
    await _record(ctx, TickReport(tick=tick, outcome=stop.outcome, error=stop.reason))


async def _record(ctx: WorkerContext, report: TickReport) -> None:
    fields = {
        "tick": report.tick,
        "epoch": ctx.lease.epoch,
        "owner": ctx.lease.owner,
        "outcome": str(report.outcome),
        "claimed": report.claimed,
        "succeeded": report.succeeded,
        "retried": report.retried,
        "dead": report.dead,
        "duration_ms": report.duration_ms,
    }
    if report.discarded:
        fields["discarded"] = report.discarded
    if report.rescued:
        fields["rescued"] = report.rescued
    if report.error:
        fields["error"] = report.error
    try:
        async with asyncio.timeout(CLEANUP_TIMEOUT):
            await store.record_tick(
                ctx.pool,
                owner=ctx.lease.owner,
                epoch=ctx.lease.epoch,
                tick=report.tick,
                duration_ms=report.duration_ms,
                outcome=report.outcome,
                claimed=report.claimed,
                succeeded=report.succeeded,
                retried=report.retried,
                dead=report.dead,
                error=report.error,
            )
    except Exception as exc:  # the ledger is best effort when the database is gone
        fields["ledger_error"] = f"{type(exc).__name__}: {exc}"
    log.info("tick_finished", **fields)
