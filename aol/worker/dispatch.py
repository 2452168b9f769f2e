"""Run one claimed action: find its handler, call it under its own timeout, write the result.

Results are fenced: each write names the claim's epoch and attempt, and a refused write
(or a lost lease) is logged as `action_result_discarded`, never retried.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from aol import policy
from aol.actions.context import HandlerContext
from aol.actions.registry import Registry
from aol.db import store
from aol.errors import AttemptInterrupted, HandlerTimeout, PermanentError, UnknownActionType
from aol.logs import get_logger
from aol.model import Action, AttemptResult, TickOutcome
from aol.settings import Settings
from aol.worker.isolated import run_isolated
from aol.worker.lease import Lease
from aol.worker.metrics import WorkerMetrics

log = get_logger("aol.dispatch")
ERROR_MAX_CHARS = 2000
# How long a cancelled handler gets to unwind before it is abandoned.
CANCEL_GRACE = 0.5
# Handlers that ignored cancellation: kept referenced so they are not garbage-collected mid-run.
_abandoned: set[asyncio.Task[Any]] = set()
_Call = Coroutine[Any, Any, str | None]


def abandoned_handlers() -> int:
    """How many abandoned handler tasks are still running (the process must not wait on them
    at exit: `asyncio.run` would, forever, for one that keeps ignoring cancellation)."""
    return len(_abandoned)


@dataclass(slots=True)
class Interrupt:
    """Why a running tick was cut short, and what becomes of its unfinished attempts."""

    reason: str = "worker stopped mid-attempt"
    cancel_actions: bool = False
    outcome: TickOutcome = TickOutcome.ERROR
    # Set by the tick once it has written its ledger row with this outcome.
    recorded: bool = False
    # Set by the tick whose own claim read the kill switch: it claimed nothing and is
    # recording the kill itself, so the notification of that kill must not cut it short.
    kill_seen: bool = False


@dataclass(slots=True)
class Housekeeping:
    """When the next tick looks for expired claims (monotonic clock), and the previous
    tick's results while they are still being written (see `tick.run_tick`)."""

    next_rescue: float = 0.0
    writing: asyncio.Task[None] | None = None
    # The write in flight holds failed attempts: retries whose due times the loop must see.
    writing_failures: bool = False


@dataclass(frozen=True, slots=True)
class WorkerContext:
    """What every tick and attempt needs: pool, lease, settings, handlers, data folder."""

    pool: store.Executor
    lease: Lease
    settings: Settings
    registry: Registry
    data_dir: Path
    interrupt: Interrupt = field(default_factory=Interrupt)
    housekeeping: Housekeeping = field(default_factory=Housekeeping)
    metrics: WorkerMetrics = field(default_factory=WorkerMetrics)


def describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text[:ERROR_MAX_CHARS]


@dataclass(slots=True)
class Outcome:
    """What one attempt came to, before it is written."""

    action: Action
    duration_ms: float
    error: BaseException | None = None
    message: str | None = None
    hctx: HandlerContext | None = None
    alog: Any = None
    isolated: bool = False


def _bound(ctx: WorkerContext, action: Action, tick: int) -> Any:
    return log.bind(
        action_id=action.id,
        action_type=action.action_type,
        attempt=action.attempts,
        epoch=ctx.lease.epoch,
        tick=tick,
    )


class _LazyLog:
    """An attempt's logger, bound on first use: most attempts of a busy worker log nothing
    of their own (with `success_log=tick`), and binding is a good part of their cost."""

    __slots__ = ("_action", "_bound", "_ctx", "_tick")

    def __init__(self, ctx: WorkerContext, action: Action, tick: int) -> None:
        self._ctx = ctx
        self._action = action
        self._tick = tick
        self._bound: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._bound is None:
            self._bound = _bound(self._ctx, self._action, self._tick)
        return getattr(self._bound, name)


async def run_batch(
    ctx: WorkerContext,
    actions: list[Action],
    *,
    proof: bool,
    tick: int,
    outcomes: dict[int, Outcome],
) -> None:
    """Run a tick's attempts concurrently under one deadline, whether or not they cooperate.

    Each handler runs in its own task and its outcome lands in `outcomes` the moment it
    ends (so a tick cut short still knows which attempts finished). At the deadline the
    stragglers are cancelled; one that swallows the cancellation is left behind (logged as
    `handler_abandoned`) and recorded as timed out all the same, so the tick ends on time.
    An isolated handler's child process is killed when its task is cancelled. A handler that
    blocks the event loop cannot be bounded here: the watchdog ends the process instead.
    """
    timeout = ctx.settings.action_timeout
    loop = asyncio.get_running_loop()
    batch = _Batch(loop, outcomes, timeout)
    settle = batch.settle
    registry = ctx.registry
    data_dir = ctx.data_dir
    for action in actions:
        alog = _LazyLog(ctx, action, tick)
        hctx = HandlerContext(action=action, proof=proof, log=alog, data_dir=data_dir)
        pending = Outcome(action=action, duration_ms=0.0, hctx=hctx, alog=alog)
        try:
            fn = registry.get(action.action_type)
        except UnknownActionType as exc:
            pending.error = exc
            outcomes[action.id] = pending
            continue
        pending.isolated = registry.is_isolated(action.action_type)
        try:
            call = run_isolated(fn, hctx, timeout=timeout) if pending.isolated else fn(hctx)
            # Registration admits only async functions, so `call` is a coroutine.
            task: asyncio.Task[str | None] = loop.create_task(cast(_Call, call))
        except Exception as exc:  # defensive: one broken handler fails its own attempt
            pending.error = exc
            outcomes[action.id] = pending
            continue
        batch.tasks[task] = pending
        task.add_done_callback(settle)
    tasks = batch.tasks
    if not tasks:
        return
    batch.left = len(tasks)
    # Resolved by the last handler to end, or by the deadline, whichever comes first.
    deadline = loop.call_later(timeout, _wake, batch.all_done)
    try:
        await batch.all_done
    except asyncio.CancelledError:
        batch.cut = True
        for task in tasks:
            task.cancel()  # the tick was cut short: the handlers go with it
        raise
    finally:
        deadline.cancel()
    late = [task for task in tasks if not task.done()]
    for task in tasks:
        if task.done():
            settle(task)  # ended on the deadline's turn: its callback may not have run yet
        elif not tasks[task].isolated:  # an isolated one kills its own child at the deadline
            batch.timed_out.add(task)
            task.cancel()
    if not late:
        return
    _, stubborn = await asyncio.wait(late, timeout=CANCEL_GRACE)
    for task in stubborn:
        pending = tasks[task]
        _abandoned.add(task)
        task.add_done_callback(_abandoned.discard)
        pending.alog.error("handler_abandoned", timeout_s=timeout, grace_s=CANCEL_GRACE)
        pending.error = HandlerTimeout(
            f"handler timed out after {timeout:g}s and ignored cancellation; it was abandoned"
        )
        pending.duration_ms = (time.monotonic() - batch.started) * 1000
        outcomes[pending.action.id] = pending


def _wake(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


class _Batch:
    """A tick's handler tasks, and the callback that notes each one's outcome as it ends
    (one callback for the batch, and one future to wait on, rather than a wait that adds
    and removes a callback on every task)."""

    __slots__ = (
        "all_done",
        "cut",
        "left",
        "outcomes",
        "settled",
        "started",
        "tasks",
        "timed_out",
        "timeout",
    )

    def __init__(
        self, loop: asyncio.AbstractEventLoop, outcomes: dict[int, Outcome], timeout: float
    ) -> None:
        self.outcomes = outcomes
        self.timeout = timeout
        self.started = time.monotonic()
        self.tasks: dict[asyncio.Task[str | None], Outcome] = {}
        self.all_done: asyncio.Future[None] = loop.create_future()
        self.left = 0
        self.settled: set[asyncio.Task[str | None]] = set()
        # Cancelled by the deadline; `cut`: every task cancelled because the tick was.
        self.timed_out: set[asyncio.Task[str | None]] = set()
        self.cut = False

    def settle(self, task: asyncio.Task[str | None]) -> None:
        """A handler task ended: note its outcome (once, and unless already decided)."""
        if task in self.settled:
            return
        self.settled.add(task)
        self.left -= 1
        if self.left <= 0:
            _wake(self.all_done)
        pending = self.tasks[task]
        if pending.action.id in self.outcomes:
            return  # abandoned at the deadline, and recorded as timed out then
        pending.duration_ms = (time.monotonic() - self.started) * 1000
        if task.cancelled():
            if task in self.timed_out:
                pending.error = HandlerTimeout(f"handler timed out after {self.timeout:g}s")
            elif self.cut:
                return  # the tick itself was cut short: the tick decides what this attempt was
            else:  # the handler let a cancellation out that was not the worker's
                pending.error = AttemptInterrupted(
                    "the handler's task was cancelled, neither by its deadline nor by the worker"
                )
        elif (exc := task.exception()) is not None:
            pending.error = exc
        else:
            message = task.result()
            if message is not None and not isinstance(message, str):
                pending.error = TypeError(
                    f"handler returned {type(message).__name__}; a handler returns a str or None"
                )
            else:
                pending.message = message
        self.outcomes[pending.action.id] = pending


async def record_outcomes(
    ctx: WorkerContext, outcomes: list[Outcome], *, tick: int
) -> dict[int, AttemptResult]:
    """Write a tick's outcomes: every success in one statement, each failure on its own.

    All writes are fenced by epoch and attempt; refused ones are logged and counted.
    """
    results: dict[int, AttemptResult] = {}
    if not ctx.lease.held:
        for o in outcomes:
            outcome = "error" if o.error else "succeeded"
            alog = o.alog or _bound(ctx, o.action, tick)
            results[o.action.id] = _discard(ctx, alog, reason="lease lost", outcome=outcome)
        return results
    successes = [o for o in outcomes if o.error is None]
    if successes:
        refs = [_artifact(o) for o in successes]
        written = await store.finish_actions(
            ctx.pool,
            epoch=ctx.lease.epoch,
            tick=tick,
            action_ids=[o.action.id for o in successes],
            attempts=[o.action.attempts for o in successes],
            durations_ms=[round(o.duration_ms, 3) for o in successes],
            messages=[o.message for o in successes],
            artifact_refs=[r[0] for r in refs],
            artifact_sha256s=[r[1] for r in refs],
        )
        each = ctx.settings.success_log == "each"
        for o, (ref, sha) in zip(successes, refs, strict=True):
            alog = o.alog or _bound(ctx, o.action, tick)
            if o.action.id in written:
                if each or ref:  # an artifact is always worth its own line
                    extra = {"artifact_ref": ref, "artifact_sha256": sha} if ref else {}
                    alog.info("action_succeeded", duration_ms=round(o.duration_ms, 3), **extra)
                results[o.action.id] = AttemptResult.SUCCEEDED
            else:
                results[o.action.id] = _discard(
                    ctx, alog, reason="claim no longer held at this epoch", outcome="succeeded"
                )
        if not each and written:
            log.info(
                "actions_succeeded",
                tick=tick,
                epoch=ctx.lease.epoch,
                count=len(written),
                action_ids=sorted(written),
            )
    for o in outcomes:
        if o.error is not None:
            results[o.action.id] = await record_failure(
                ctx, o.action, tick=tick, duration_ms=o.duration_ms, error=o.error, alog=o.alog
            )
    return results


def _artifact(outcome: Outcome) -> tuple[str | None, str | None]:
    hctx = outcome.hctx
    if hctx is None or not hctx.artifacts:
        return None, None
    first = hctx.artifacts[0]
    return str(first.path), first.sha256


async def record_failure(
    ctx: WorkerContext,
    action: Action,
    *,
    tick: int,
    duration_ms: float,
    error: BaseException,
    alog: Any = None,
) -> AttemptResult:
    """Write a failed attempt (retry or dead) under the claim's epoch, or discard it if
    fenced out. Successes are written in batches by `record_outcomes`."""
    alog = alog or _bound(ctx, action, tick)
    if not ctx.lease.held:
        return _discard(ctx, alog, reason="lease lost", outcome="error")
    common: dict[str, Any] = {
        "action_id": action.id,
        "epoch": ctx.lease.epoch,
        "attempt": action.attempts,
        "tick": tick,
        "duration_ms": round(duration_ms, 3),
    }
    text = describe(error)
    extra: dict[str, Any] = {"error_type": type(error).__name__, "error": text}
    verdict = policy.after_failure(
        attempt=action.attempts,
        max_attempts=action.max_attempts,
        permanent=isinstance(error, PermanentError),
        cap=ctx.settings.max_attempts,
    )
    result = AttemptResult.DEAD if verdict is AttemptResult.DEAD else AttemptResult.RETRY
    try:
        if result is AttemptResult.DEAD:
            written = await store.dead_letter_action(ctx.pool, **common, error=text)
            event, level = "action_dead", "error"
        else:
            s = ctx.settings
            delay = policy.backoff_delay(action.attempts, base=s.backoff_base, cap=s.backoff_max)
            written = await store.schedule_retry(ctx.pool, **common, delay=delay, error=text)
            event, level = "action_retry_scheduled", "warning"
            extra["retry_in_s"] = delay
    except asyncio.CancelledError:
        if not ctx.lease.held:  # cut short because the lease was lost: fenced out anyway
            _discard(ctx, alog, reason="lease lost while writing", outcome=str(result))
        raise
    if not written:
        return _discard(ctx, alog, reason="claim no longer held at this epoch", outcome=str(result))
    getattr(alog, level)(event, duration_ms=round(duration_ms, 3), **extra)
    return result


def _discard(ctx: WorkerContext, alog: Any, *, reason: str, outcome: str) -> AttemptResult:
    """A result that may not be written: log it, count it, drop it."""
    ctx.lease.refused_writes += 1
    alog.warning("action_result_discarded", reason=reason, outcome=outcome)
    return AttemptResult.DISCARDED
