"""One typed async function per named SQL block in `queries.sql`: the only code that sends SQL.

Every function takes an `Executor` (an asyncpg Pool or Connection) and keyword arguments.
Writes about an action made by the worker carry the lease epoch and the attempt number,
and return False when the database refused them because the claim or the lease moved on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Any, Protocol

from aol.model import (
    Action,
    ActionId,
    ActionStatus,
    Epoch,
    Flags,
    JSONObject,
    Lease,
    MetricsSnapshot,
    TickOutcome,
    TickRecord,
)

# The one advisory lock key of the lease (per database; locks are scoped to a database).
LEASE_LOCK_KEY = 0x616F6C6C65617365  # "aollease"
# Held exclusively by a sleeping worker on its LISTEN connection; the insert trigger
# notifies only when it cannot take it shared (migration 0006 holds the same number).
IDLE_LOCK_KEY = 0x616F6C69646C6500  # "aolidle"
WAKEUP_CHANNEL = "aol_wakeup"


class Executor(Protocol):
    """What an asyncpg Pool and Connection both offer."""

    async def fetch(self, query: str, *args: Any, timeout: float | None = None) -> list[Any]: ...

    async def fetchrow(self, query: str, *args: Any, timeout: float | None = None) -> Any: ...

    async def fetchval(
        self, query: str, *args: Any, column: int = 0, timeout: float | None = None
    ) -> Any: ...

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str: ...


_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@cache
def queries() -> dict[str, str]:
    """The named blocks of queries.sql, loaded once."""
    text = resources.files("aol.db").joinpath("queries.sql").read_text(encoding="utf-8")
    parts = _NAME.split(text)
    blocks: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        sql = "\n".join(line for line in body.splitlines() if not line.startswith("--"))
        blocks[name] = sql.strip().rstrip(";")
    return blocks


def q(name: str) -> str:
    return queries()[name]


# --- schema ---------------------------------------------------------------------------


async def read_schema_revision(db: Executor) -> str | None:
    if await db.fetchval(q("schema_version_table")) is None:
        return None
    value = await db.fetchval(q("schema_revision"))
    return None if value is None else str(value)


# --- enqueue --------------------------------------------------------------------------


async def enqueue_action(
    db: Executor,
    *,
    action_type: str,
    payload: JSONObject,
    idempotency_key: str,
    not_before: datetime | None = None,
    priority: int = 0,
    max_attempts: int = 3,
) -> ActionId:
    value = await db.fetchval(
        q("enqueue_action"),
        action_type,
        json.dumps(payload, ensure_ascii=False, separators=(",", ":")),
        idempotency_key,
        not_before,
        priority,
        max_attempts,
    )
    return ActionId(int(value))


async def enqueue_actions(
    db: Executor,
    *,
    action_types: Sequence[str],
    payloads: Sequence[JSONObject],
    idempotency_keys: Sequence[str],
    not_befores: Sequence[datetime | None],
    priorities: Sequence[int],
    max_attempts: Sequence[int],
) -> list[ActionId]:
    """Enqueue many actions in one statement; ids in input order."""
    rows = await db.fetch(
        q("enqueue_actions"),
        list(action_types),
        [json.dumps(p, ensure_ascii=False, separators=(",", ":")) for p in payloads],
        list(idempotency_keys),
        list(not_befores),
        list(priorities),
        list(max_attempts),
    )
    return [ActionId(int(r["id"])) for r in rows]


# --- lease ----------------------------------------------------------------------------


async def try_advisory_lock(conn: Executor, *, key: int = LEASE_LOCK_KEY) -> bool:
    return bool(await conn.fetchval(q("try_advisory_lock"), key))


async def wait_advisory_lock(conn: Executor, *, key: int = LEASE_LOCK_KEY) -> None:
    await conn.execute(q("wait_advisory_lock"), key)


async def advisory_unlock(conn: Executor, *, key: int = LEASE_LOCK_KEY) -> bool:
    return bool(await conn.fetchval(q("advisory_unlock"), key))


async def acquire_lease(conn: Executor, *, owner: str, ttl: float) -> Epoch:
    return Epoch(int(await conn.fetchval(q("acquire_lease"), owner, ttl)))


async def renew_lease(
    conn: Executor, *, owner: str, epoch: Epoch, ttl: float, timeout: float | None = None
) -> datetime | None:
    value = await conn.fetchval(
        q("renew_lease"), owner, epoch, ttl, LEASE_LOCK_KEY, timeout=timeout
    )
    return value if isinstance(value, datetime) else None


async def release_lease(conn: Executor, *, owner: str, epoch: Epoch) -> None:
    await conn.execute(q("release_lease"), owner, epoch)


async def read_lease(db: Executor) -> Lease:
    row = await db.fetchrow(q("read_lease"))
    return Lease(
        owner=row["owner"],
        epoch=Epoch(row["epoch"]),
        acquired_at=row["acquired_at"],
        heartbeat_at=row["heartbeat_at"],
        expires_at=row["expires_at"],
        now=row["now"],
        holder_pid=row["holder_pid"],
        previous_expires_at=row["previous_expires_at"],
    )


async def lease_lock_holder(db: Executor) -> int | None:
    """The pid of the backend holding the lease lock, or None when it is free."""
    value = await db.fetchval(q("lease_lock_holder"), LEASE_LOCK_KEY)
    return None if value is None else int(value)


async def terminate_backend(db: Executor, *, pid: int, wait_ms: int) -> bool:
    return bool(await db.fetchval(q("terminate_backend"), pid, wait_ms))


async def set_lock_timeout(conn: Executor, *, seconds: float) -> None:
    await conn.fetchval(q("set_lock_timeout"), f"{max(0, round(seconds * 1000))}ms")


# --- control flags --------------------------------------------------------------------


def _flags(row: Any) -> Flags:
    return Flags(
        paused=row["paused"],
        killed=row["killed"],
        proof_mode=row["proof_mode"],
        changed_by=row["changed_by"],
        changed_at=row["changed_at"],
        reason=row["reason"],
        kill_cancels=bool(row.get("kill_cancels", False)),
    )


async def read_flags(db: Executor) -> Flags:
    return _flags(await db.fetchrow(q("read_flags")))


async def set_flags(
    db: Executor,
    *,
    reason: str,
    paused: bool | None = None,
    killed: bool | None = None,
    proof_mode: bool | None = None,
    kill_cancels: bool | None = None,
) -> Flags:
    """Change the flags through `aol.set_control_flags`; None leaves a flag as it is.

    The database records who (the login, `session_user`), when and why, and refuses an
    empty reason with SQLSTATE 22023.
    """
    row = await db.fetchrow(
        q("set_control_flags"), paused, killed, proof_mode, reason, kill_cancels
    )
    return _flags(row)


# --- claim and results ----------------------------------------------------------------


def _action(row: Any) -> Action:
    return Action(
        id=ActionId(row["id"]),
        idempotency_key=row["idempotency_key"],
        action_type=row["action_type"],
        payload=row["payload"],
        status=ActionStatus(row["status"]),
        priority=row["priority"],
        attempts=row["attempts"],
        max_attempts=row["max_attempts"],
        not_before=row["not_before"],
        claim_epoch=None if row["claim_epoch"] is None else Epoch(row["claim_epoch"]),
        created_at=row["created_at"],
    )


@dataclass(frozen=True, slots=True)
class Claim:
    """A claim and the control flags it was made under (one snapshot)."""

    paused: bool
    killed: bool
    proof_mode: bool
    actions: list[Action]


async def claim(db: Executor, *, owner: str, epoch: Epoch, limit: int, claim_ttl: float) -> Claim:
    """Read the flags and claim (nothing while paused or killed) in one statement."""
    rows = await db.fetch(q("claim_actions"), owner, epoch, limit, claim_ttl)
    if not rows:
        raise RuntimeError("aol.control_flags has no row 1: the schema is damaged")
    actions = [_action(r) for r in rows if r["id"] is not None]
    actions.sort(key=lambda a: (-a.priority, a.not_before, a.id))
    first = rows[0]
    return Claim(first["paused"], first["killed"], first["proof_mode"], actions)


async def finish_actions(
    db: Executor,
    *,
    epoch: Epoch,
    tick: int,
    action_ids: Sequence[ActionId],
    attempts: Sequence[int],
    durations_ms: Sequence[float],
    messages: Sequence[str | None],
    artifact_refs: Sequence[str | None],
    artifact_sha256s: Sequence[str | None],
) -> set[ActionId]:
    """Mark many attempts succeeded in one statement; returns the ids actually written."""
    shared = set(attempts)
    rows = await db.fetch(
        q("finish_actions"),
        list(action_ids),
        epoch,
        list(attempts),
        tick,
        list(durations_ms),
        list(messages),
        list(artifact_refs),
        list(artifact_sha256s),
        shared.pop() if len(shared) == 1 else None,
    )
    return {ActionId(r["action_id"]) for r in rows}


async def finish_action(
    db: Executor,
    *,
    action_id: ActionId,
    epoch: Epoch,
    attempt: int,
    tick: int,
    duration_ms: float,
    message: str | None,
    artifact_ref: str | None,
    artifact_sha256: str | None,
) -> bool:
    """Mark one attempt succeeded (fenced); False when the write was refused."""
    written = await finish_actions(
        db,
        epoch=epoch,
        tick=tick,
        action_ids=[action_id],
        attempts=[attempt],
        durations_ms=[duration_ms],
        messages=[message],
        artifact_refs=[artifact_ref],
        artifact_sha256s=[artifact_sha256],
    )
    return action_id in written


async def schedule_retry(
    db: Executor,
    *,
    action_id: ActionId,
    epoch: Epoch,
    attempt: int,
    tick: int,
    duration_ms: float,
    delay: float,
    error: str,
) -> bool:
    value = await db.fetchval(
        q("schedule_retry"), action_id, epoch, attempt, tick, duration_ms, delay, error
    )
    return value is not None


async def dead_letter_action(
    db: Executor,
    *,
    action_id: ActionId,
    epoch: Epoch,
    attempt: int,
    tick: int,
    duration_ms: float,
    error: str,
) -> bool:
    value = await db.fetchval(
        q("dead_letter_action"), action_id, epoch, attempt, tick, duration_ms, error
    )
    return value is not None


async def cancel_running_action(
    db: Executor, *, action_id: ActionId, epoch: Epoch, attempt: int, tick: int, reason: str
) -> bool:
    value = await db.fetchval(q("cancel_running_action"), action_id, epoch, attempt, tick, reason)
    return value is not None


async def rescue_expired_claims(
    db: Executor, *, epoch: Epoch, max_attempts: int | None = None
) -> list[tuple[ActionId, str]]:
    """Rescue expired claims; `max_attempts` caps every action's own (None: no cap)."""
    rows = await db.fetch(q("rescue_expired_claims"), epoch, max_attempts)
    return [(ActionId(r["id"]), str(r["status"])) for r in rows]


async def record_tick(
    db: Executor,
    *,
    owner: str,
    epoch: Epoch,
    tick: int,
    duration_ms: float,
    outcome: TickOutcome,
    claimed: int = 0,
    succeeded: int = 0,
    retried: int = 0,
    dead: int = 0,
    error: str | None = None,
) -> None:
    await db.execute(
        q("record_tick"),
        owner,
        epoch,
        tick,
        duration_ms,
        str(outcome),
        claimed,
        succeeded,
        retried,
        dead,
        error,
    )


async def record_event(
    db: Executor,
    *,
    event: str,
    message: str,
    level: str = "info",
    action_id: ActionId | None = None,
    epoch: Epoch | None = None,
    tick: int | None = None,
) -> None:
    await db.execute(q("record_event"), action_id, epoch, tick, level, event, message)


async def next_wakeup(db: Executor) -> tuple[datetime, datetime | None, datetime | None]:
    """(database now, earliest due runnable action, earliest claim expiry)."""
    row = await db.fetchrow(q("next_wakeup"))
    return row["now"], row["next_due"], row["next_expiry"]


# --- operator views -------------------------------------------------------------------


async def count_by_status(db: Executor) -> dict[str, int]:
    return _counts(tuple(ActionStatus), await db.fetch(q("count_by_status")))


LIVE_STATUSES = (
    ActionStatus.PENDING,
    ActionStatus.RETRY,
    ActionStatus.RUNNING,
    ActionStatus.DEAD,
)
FINISHED_STATUSES = (ActionStatus.SUCCEEDED, ActionStatus.CANCELLED)


async def count_live(db: Executor) -> dict[str, int]:
    """Pending, retry, running and dead actions (through partial indexes: cheap while the
    queues are short, however long the history)."""
    return _counts(LIVE_STATUSES, await db.fetch(q("count_live")))


async def count_finished(db: Executor) -> dict[str, int]:
    """Succeeded and cancelled actions: reads the whole history (see aol/db/slowread.py)."""
    return _counts(FINISHED_STATUSES, await db.fetch(q("count_finished")))


def _counts(statuses: tuple[ActionStatus, ...], rows: list[Any]) -> dict[str, int]:
    counts = {str(s): 0 for s in statuses}
    for row in rows:
        counts[str(row["status"])] = int(row["n"])
    return counts


async def last_tick(db: Executor) -> TickRecord | None:
    row = await db.fetchrow(q("last_tick"))
    if row is None:
        return None
    return TickRecord(
        id=row["id"],
        owner=row["owner"],
        epoch=Epoch(row["epoch"]),
        tick=row["tick"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        duration_ms=row["duration_ms"],
        outcome=TickOutcome(row["outcome"]),
        claimed=row["claimed"],
        succeeded=row["succeeded"],
        retried=row["retried"],
        dead=row["dead"],
        error=row["error"],
    )


async def list_dead(db: Executor, *, limit: int = 50) -> list[dict[str, Any]]:
    return [dict(r) for r in await db.fetch(q("list_dead"), limit)]


async def retry_dead(
    db: Executor, *, ids: Sequence[int] | None, changed_by: str, reason: str | None
) -> list[ActionId]:
    rows = await db.fetch(q("retry_dead"), None if ids is None else list(ids), changed_by, reason)
    return [ActionId(r["id"]) for r in rows]


async def read_action(db: Executor, *, action_id: int) -> dict[str, Any] | None:
    row = await db.fetchrow(q("read_action"), action_id)
    return None if row is None else dict(row)


async def list_action_logs(db: Executor, *, action_id: int) -> list[dict[str, Any]]:
    return [dict(r) for r in await db.fetch(q("list_action_logs"), action_id)]


async def count_other_clients(db: Executor) -> int:
    return int(await db.fetchval(q("count_other_clients")))


async def notify(db: Executor, *, channel: str, payload: str) -> None:
    await db.fetchval(q("notify"), channel, payload)


# --- roles (aol roles create / drop) --------------------------------------------------


async def set_role_parameters(
    conn: Executor,
    *,
    prefix: str,
    verifiers: dict[str, str],
    terminate: str,
) -> None:
    """Hand the inputs to `create_roles`/`drop_roles`, for the current transaction only.

    `verifiers` maps a role suffix (enqueuer, worker, operator) to a SCRAM-SHA-256 verifier,
    never a plain password; `terminate` is 'grant', 'revoke' or ''.
    """
    await conn.fetchval(
        q("roles_parameters"),
        prefix,
        verifiers.get("enqueuer", ""),
        verifiers.get("worker", ""),
        verifiers.get("operator", ""),
        terminate,
    )


async def create_roles(conn: Executor) -> None:
    """Create and grant the roles described by `set_role_parameters` (same transaction)."""
    await conn.execute(q("roles_create"))


async def drop_roles(conn: Executor) -> None:
    """Revoke and drop the roles of the prefix given to `set_role_parameters`."""
    await conn.execute(q("roles_drop"))


async def describe_roles(db: Executor, *, prefix: str) -> list[dict[str, Any]]:
    """suffix, role, exists, can_login, can_terminate for each of the three roles."""
    return [dict(r) for r in await db.fetch(q("roles_describe"), prefix)]


# --- metrics (GET /metrics) -------------------------------------------------------------


async def set_statement_timeout(conn: Executor, *, seconds: float) -> None:
    """For a dedicated connection: every later statement on it gives up after `seconds`."""
    await conn.fetchval(q("set_statement_timeout"), f"{max(1, round(seconds * 1000))}ms")


async def read_metrics(db: Executor, *, timeout: float | None = None) -> MetricsSnapshot:
    """Live actions by status (`LIVE_STATUSES`, 0 for none), queue lag and lease heartbeat;
    succeeded and cancelled are counted apart (`count_finished`)."""
    row = await db.fetchrow(q("read_metrics"), timeout=timeout)
    by_status = {str(s): 0 for s in LIVE_STATUSES}
    for status, n in zip(row["statuses"], row["counts"], strict=True):
        by_status[str(status)] = int(n)
    age = row["lease_heartbeat_age_s"]
    return MetricsSnapshot(
        by_status=by_status,
        queue_lag_s=float(row["queue_lag_s"]),
        lease_heartbeat_age_s=None if age is None else float(age),
    )


# --- the operator's dashboard (aol/web) -----------------------------------------------


async def read_lease_state(db: Executor) -> dict[str, Any]:
    """The lease row, times since heartbeat and until expiry on the database clock, and the
    pid of the backend holding the advisory lock now (None when nobody holds it)."""
    return dict(await db.fetchrow(q("read_lease_state"), LEASE_LOCK_KEY))


async def tick_history(
    db: Executor, *, window_s: float, max_rows: int = 20000
) -> list[dict[str, Any]]:
    """Ticks of the last `window_s` seconds in one-minute buckets (counts, durations)."""
    return [dict(r) for r in await db.fetch(q("tick_history"), window_s, max_rows)]


async def queue_lag(db: Executor) -> dict[str, Any] | None:
    """The oldest due runnable action and how long it has waited, or None."""
    row = await db.fetchrow(q("queue_lag"))
    return None if row is None else dict(row)


async def list_recent_logs(db: Executor, *, limit: int = 50) -> list[dict[str, Any]]:
    return [dict(r) for r in await db.fetch(q("list_recent_logs"), limit)]


async def list_actions(
    db: Executor, *, status: str | None = None, action_type: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """Actions, most recently changed first; None in a filter means any."""
    return [dict(r) for r in await db.fetch(q("list_actions"), status, action_type, limit)]


async def list_action_types(db: Executor) -> list[str]:
    return [str(r["action_type"]) for r in await db.fetch(q("list_action_types"))]


async def read_action_detail(db: Executor, *, action_id: int) -> dict[str, Any] | None:
    row = await db.fetchrow(q("read_action_detail"), action_id)
    return None if row is None else dict(row)


async def read_log_artifact(db: Executor, *, log_id: int) -> dict[str, Any] | None:
    """The artifact reference and recorded SHA-256 of one execution log row, or None."""
    row = await db.fetchrow(q("read_log_artifact"), log_id)
    return None if row is None else dict(row)


async def cancel_waiting_action(
    db: Executor, *, action_id: int, changed_by: str, reason: str
) -> tuple[str | None, bool]:
    """Cancel an action that is pending or retry (not running, not finished).

    Returns (status before, cancelled); status None means there is no such action. A
    concurrent claim wins: the action is then running and left alone.
    """
    row = await db.fetchrow(q("cancel_waiting_action"), action_id, changed_by, reason)
    before = row["status_before"]
    return (None if before is None else str(before)), bool(row["cancelled"])


# --- retention (aol prune) ------------------------------------------------------------


async def prune_actions(
    db: Executor, *, statuses: Sequence[str], older_than_s: float, batch: int
) -> int:
    """Delete one batch of finished actions (and their log rows); returns how many."""
    rows = await db.fetch(q("prune_actions"), list(statuses), older_than_s, batch)
    return len(rows)


async def count_prunable(
    db: Executor, *, statuses: Sequence[str], older_than_s: float
) -> dict[str, int]:
    rows = await db.fetch(q("count_prunable"), list(statuses), older_than_s)
    return {str(r["status"]): int(r["n"]) for r in rows}


async def prune_ticks(db: Executor, *, older_than_s: float, batch: int) -> int:
    """Delete one batch of tick ledger rows; returns how many."""
    return len(await db.fetch(q("prune_ticks"), older_than_s, batch))
