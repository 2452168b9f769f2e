"""Pure decisions, no I/O: backoff, retry or dead, and the outcome of a tick.

Functions that depend on time take `now` as an argument, so tests pass the clock in.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from aol.model import AttemptResult, TickOutcome


def backoff_delay(attempt: int, *, base: float, cap: float) -> float:
    """Seconds to wait before the next attempt after `attempt` failed (1-based).

    Exponential: base, 2*base, 4*base, ... capped at `cap`.
    """
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    return float(min(cap, base * (2 ** min(attempt - 1, 30))))


def next_run_at(now: datetime, attempt: int, *, base: float, cap: float) -> datetime:
    return now + timedelta(seconds=backoff_delay(attempt, base=base, cap=cap))


def after_failure(
    *, attempt: int, max_attempts: int, permanent: bool, cap: int | None = None
) -> AttemptResult:
    """A failed attempt becomes `dead` when it is permanent or the last one (by the action's
    own `max_attempts`, or the worker's `cap` when lower), else `retry`."""
    if cap is not None:
        max_attempts = min(max_attempts, cap)
    if permanent or attempt >= max_attempts:
        return AttemptResult.DEAD
    return AttemptResult.RETRY


def tick_outcome(*, claimed: int, timed_out: bool, failed: bool) -> TickOutcome:
    """The ledger outcome of a tick that was neither paused nor killed."""
    if timed_out:
        return TickOutcome.TIMEOUT
    if failed:
        return TickOutcome.ERROR
    return TickOutcome.OK if claimed else TickOutcome.IDLE


def sleep_seconds(*, now: datetime, next_due: datetime | None, scan_interval: float) -> float:
    """How long an idle worker sleeps: until the next scheduled action or the safety-net scan."""
    if next_due is None:
        return scan_interval
    return max(0.0, min(scan_interval, (next_due - now).total_seconds()))
