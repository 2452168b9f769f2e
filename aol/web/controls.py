"""An operator's change, applied through the same store functions as the CLI.

Each function checks its input, changes the database in one statement, and returns a
sentence saying what happened; bad input or a change that does not apply raises
`ControlRefused` with an HTTP status and a message naming the problem, and changes nothing.
The worker sees every change at its next tick (flag changes and retries also wake it).
"""

from __future__ import annotations

from dataclasses import dataclass

from aol.db import store
from aol.db.store import Executor
from aol.errors import AolError

REASON_MAX_LENGTH = 500


class ControlRefused(AolError):
    """The change was refused; nothing was changed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class FlagChange:
    """One flag button: what it sets, and the sentence for its result."""

    paused: bool | None = None
    killed: bool | None = None
    proof_mode: bool | None = None
    done: str = ""


FLAG_CHANGES: dict[str, FlagChange] = {
    "pause": FlagChange(paused=True, done="paused: the worker claims nothing from its next tick"),
    "resume": FlagChange(paused=False, done="resumed: the worker claims again"),
    "kill": FlagChange(
        killed=True, done="killed: the worker stops and exits; restarted workers exit too"
    ),
    "unkill": FlagChange(killed=False, done="kill switch lifted: a worker may run again"),
    "proof-on": FlagChange(proof_mode=True, done="proof mode on: handlers write artifacts"),
    "proof-off": FlagChange(proof_mode=False, done="proof mode off: handlers act for real"),
}


def changed_by(operator: str) -> str:
    return f"{operator} (dashboard)"


def clean_reason(raw: str | None) -> str:
    """The reason as given, trimmed; refused when missing or too long."""
    reason = (raw or "").strip()
    if not reason:
        raise ControlRefused(400, "reason is required: say why you make this change")
    if len(reason) > REASON_MAX_LENGTH:
        raise ControlRefused(
            400, f"reason is {len(reason)} characters long; the limit is {REASON_MAX_LENGTH}"
        )
    return reason


async def change_flags(db: Executor, *, op: str, operator: str, reason: str) -> str:
    """Pause, resume, kill, lift the kill, proof on or off (`aol.set_control_flags`).

    The database records its login as `changed_by`; the operator's name goes into the
    recorded reason, as "<name> (dashboard): <reason>".
    """
    change = FLAG_CHANGES.get(op)
    if change is None:
        raise ControlRefused(
            404, f"no such control {op!r}; expected one of {', '.join(FLAG_CHANGES)}"
        )
    reason = clean_reason(reason)
    await store.set_flags(
        db,
        reason=f"{changed_by(operator)}: {reason}",
        paused=change.paused,
        killed=change.killed,
        proof_mode=change.proof_mode,
    )
    return change.done


async def retry_one(db: Executor, *, action_id: int, operator: str, reason: str) -> str:
    """A dead action goes back to retry (`aol dlq retry ID`)."""
    reason = clean_reason(reason)
    moved = await store.retry_dead(
        db, ids=[action_id], changed_by=changed_by(operator), reason=reason
    )
    if moved:
        return f"action {action_id} goes back to retry"
    row = await store.read_action(db, action_id=action_id)
    if row is None:
        raise ControlRefused(404, f"no action {action_id}")
    raise ControlRefused(
        409, f"action {action_id} is {row['status']}, not dead: only dead actions are retried"
    )


async def retry_all(db: Executor, *, operator: str, reason: str) -> str:
    """Every dead action goes back to retry (`aol dlq retry --all`)."""
    reason = clean_reason(reason)
    moved = await store.retry_dead(db, ids=None, changed_by=changed_by(operator), reason=reason)
    if not moved:
        raise ControlRefused(409, "no dead actions to retry")
    return f"{len(moved)} dead action(s) go back to retry"


async def cancel(db: Executor, *, action_id: int, operator: str, reason: str) -> str:
    """An action that has not started (pending or retry) is cancelled; never a running one."""
    reason = clean_reason(reason)
    before, cancelled = await store.cancel_waiting_action(
        db, action_id=action_id, changed_by=changed_by(operator), reason=reason
    )
    if cancelled:
        return f"action {action_id} is cancelled"
    if before is None:
        raise ControlRefused(404, f"no action {action_id}")
    now = await store.read_action(db, action_id=action_id)
    status = before if now is None else now["status"]
    raise ControlRefused(
        409,
        f"action {action_id} is {status}: only a pending or retry action can be cancelled",
    )
