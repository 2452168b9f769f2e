"""Leaf types shared by every layer: statuses, outcomes, ids and frozen row records.

Nothing here imports from the rest of aol, so any module may depend on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, NewType, TypeAlias

JSONObject: TypeAlias = dict[str, Any]
ActionId = NewType("ActionId", int)
Epoch = NewType("Epoch", int)


class ActionStatus(StrEnum):
    """The state of an action; the same strings live in SQL, logs and the CLI.

    pending -> running -> succeeded
                       -> retry -> running ...
                       -> dead  (last attempt failed, or a permanent error)
    pending/retry -> cancelled (operator)
    dead -> retry (operator: `aol dlq retry`)
    """

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    RETRY = "retry"
    DEAD = "dead"
    CANCELLED = "cancelled"


RUNNABLE_STATUSES: tuple[ActionStatus, ...] = (ActionStatus.PENDING, ActionStatus.RETRY)
FINAL_STATUSES: tuple[ActionStatus, ...] = (
    ActionStatus.SUCCEEDED,
    ActionStatus.DEAD,
    ActionStatus.CANCELLED,
)


class TickOutcome(StrEnum):
    """How one tick of the worker ended; stored in `aol.tick_ledger.outcome`."""

    OK = "ok"
    IDLE = "idle"
    PAUSED = "paused"
    KILLED = "killed"
    TIMEOUT = "timeout"
    ERROR = "error"


class AttemptResult(StrEnum):
    """What became of one attempt of one action."""

    SUCCEEDED = "succeeded"
    RETRY = "retry"
    DEAD = "dead"
    CANCELLED = "cancelled"
    DISCARDED = "discarded"


@dataclass(frozen=True, slots=True)
class Action:
    """One claimed row of `aol.actions`, as a handler sees it."""

    id: ActionId
    idempotency_key: str
    action_type: str
    payload: JSONObject
    status: ActionStatus
    priority: int
    attempts: int
    max_attempts: int
    not_before: datetime
    claim_epoch: Epoch | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Lease:
    """The visible record of who holds the advisory lock."""

    owner: str | None
    epoch: Epoch
    acquired_at: datetime | None
    heartbeat_at: datetime | None
    expires_at: datetime | None
    now: datetime
    holder_pid: int | None = None
    previous_expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Flags:
    """The global control flags, one row in `aol.control_flags`."""

    paused: bool
    killed: bool
    proof_mode: bool
    changed_by: str | None
    changed_at: datetime | None
    reason: str | None
    kill_cancels: bool = False


@dataclass(frozen=True, slots=True)
class TickRecord:
    """One row of `aol.tick_ledger`."""

    id: int
    owner: str
    epoch: Epoch
    tick: int
    started_at: datetime
    finished_at: datetime
    duration_ms: float
    outcome: TickOutcome
    claimed: int
    succeeded: int
    retried: int
    dead: int
    error: str | None


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """What `GET /metrics` reads from the database at scrape time (database clock)."""

    by_status: dict[str, int]
    queue_lag_s: float
    lease_heartbeat_age_s: float | None
    # Age of the succeeded and cancelled counts in `by_status` (kept between scrapes, see
    # aol/db/slowread.py); None while they are not counted yet (they are then left out).
    finished_age_s: float | None = None
