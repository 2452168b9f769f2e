"""Seed a database with actions in every state, a lease, ticks, logs and artifacts.

Plain INSERTs and UPDATEs (tests may seed any state); shared by the web tests and by the
screenshot script, so the picture in the README shows what the tests check.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from aol.actions.artifacts import write_artifact
from tests.factory import insert_action

LEASE_OWNER = "worker-a:4242"
LEASE_EPOCH = 7


@dataclass
class Seeded:
    """Ids of what was seeded: one action per status at least, and the artifact rows."""

    ids: dict[str, list[int]] = field(default_factory=dict)
    artifact_log_id: int = 0
    artifact_path: Path = Path()
    artifact_sha256: str = ""

    def first(self, status: str) -> int:
        return self.ids[status][0]


async def log_row(db: asyncpg.Pool[Any], **values: Any) -> int:
    """One aol.execution_logs row; returns its id."""
    cols = list(values)
    placeholders = ", ".join(f"${i}" for i in range(1, len(cols) + 1))
    return int(
        await db.fetchval(
            f"INSERT INTO aol.execution_logs ({', '.join(cols)}) VALUES ({placeholders}) "
            "RETURNING id",
            *values.values(),
        )
    )


async def hold_lease(db: asyncpg.Pool[Any], *, expires_in: float = 25.0) -> None:
    """The lease row as a live holder leaves it (without taking the advisory lock)."""
    await db.execute(
        "UPDATE aol.lease SET owner = $1, epoch = $2, acquired_at = now() - interval '9 min', "
        "heartbeat_at = now() - interval '2 s', "
        "expires_at = now() + make_interval(secs => $3), released_at = NULL WHERE id = 1",
        LEASE_OWNER,
        LEASE_EPOCH,
        expires_in,
    )


async def add_ticks(db: asyncpg.Pool[Any], *, minutes: int = 50, epoch: int = LEASE_EPOCH) -> None:
    """A tick every 20 s over the last `minutes` minutes, with a realistic mix of outcomes."""
    await db.execute(
        """
        INSERT INTO aol.tick_ledger (owner, epoch, tick, started_at, finished_at, duration_ms,
                                     outcome, claimed, succeeded, retried, dead)
        SELECT $1, $2, g, at - make_interval(secs => d / 1000.0), at, d,
               CASE WHEN g % 7 = 0 THEN 'idle' ELSE 'ok' END,
               CASE WHEN g % 7 = 0 THEN 0 ELSE 3 END,
               CASE WHEN g % 7 = 0 THEN 0 WHEN g % 11 = 0 THEN 1 ELSE 3 END,
               CASE WHEN g % 11 = 0 AND g % 7 <> 0 THEN 1 ELSE 0 END,
               CASE WHEN g % 11 = 0 AND g % 7 <> 0 THEN 1 ELSE 0 END
          FROM generate_series(1, $3 * 3) g,
               LATERAL (SELECT now() - make_interval(secs => ($3 * 3 - g) * 20 + 5) AS at,
                               40 + (g % 13) * 9.5 AS d) x
        """,
        LEASE_OWNER,
        epoch,
        minutes,
    )


async def seed_every_state(pool: asyncpg.Pool[Any], data_dir: Path) -> Seeded:
    seeded = Seeded()

    def keep(status: str, action_id: int) -> int:
        seeded.ids.setdefault(status, []).append(action_id)
        return action_id

    post = {"platform": "mastodon", "content": "Release 1.4 is out", "audience": "public"}
    mail = {"to": "ops@example.org", "subject": "weekly report"}
    keep("pending", await insert_action(pool, payload=post))
    keep("pending", await insert_action(pool, action_type="SEND_EMAIL", payload=mail))
    keep(
        "running",
        await insert_action(
            pool,
            status="running",
            attempts=1,
            claimed_by=LEASE_OWNER,
            claim_epoch=LEASE_EPOCH,
            sql_claimed_at="now() - interval '1 s'",
            sql_claim_expires_at="now() + interval '30 s'",
        ),
    )
    succeeded = keep(
        "succeeded",
        await insert_action(
            pool, status="succeeded", attempts=1, sql_finished_at="now() - interval '1 min'"
        ),
    )
    keep(
        "retry",
        await insert_action(
            pool,
            action_type="CALL_PARTNER_API",
            payload={"endpoint": "/v1/orders", "order": 991},
            status="retry",
            attempts=1,
            last_error="TimeoutError: partner API did not answer within 15 s",
            sql_not_before="now() - interval '90 s'",
        ),
    )
    keep(
        "dead",
        await insert_action(
            pool,
            action_type="SEND_EMAIL",
            payload={"to": "nobody@invalid", "subject": "hi"},
            status="dead",
            attempts=3,
            max_attempts=3,
            last_error="SMTPRecipientsRefused: nobody@invalid",
            sql_finished_at="now() - interval '5 min'",
        ),
    )
    keep(
        "dead",
        await insert_action(
            pool,
            payload={"platform": "x"},
            status="dead",
            attempts=1,
            last_error="InvalidPayload: POST_SOCIAL payload field 'content' must be a "
            "non-empty string, got missing",
            sql_finished_at="now() - interval '3 min'",
        ),
    )
    keep(
        "cancelled",
        await insert_action(pool, status="cancelled", sql_finished_at="now() - interval '2 min'"),
    )

    content = b'{\n  "platform": "mastodon",\n  "content": "Release 1.4 is out"\n}\n'
    artifact = write_artifact(data_dir, idempotency_key="seed-artifact", attempt=1, content=content)
    seeded.artifact_path = artifact.path
    seeded.artifact_sha256 = hashlib.sha256(content).hexdigest()
    seeded.artifact_log_id = await log_row(
        pool,
        action_id=succeeded,
        attempt=1,
        epoch=LEASE_EPOCH,
        level="info",
        event="action_succeeded",
        message=f"proof: would post to mastodon (public); {artifact.path}",
        duration_ms=12.5,
        artifact_ref=str(artifact.path),
        artifact_sha256=artifact.sha256,
    )
    for action_id in seeded.ids["dead"]:
        await log_row(
            pool,
            action_id=action_id,
            attempt=1,
            epoch=LEASE_EPOCH,
            level="error",
            event="action_dead",
            message="dead after its last attempt",
        )
    await log_row(
        pool,
        action_id=seeded.first("retry"),
        attempt=1,
        epoch=LEASE_EPOCH,
        level="warning",
        event="action_retry_scheduled",
        message="TimeoutError: partner API did not answer within 15 s",
    )
    await hold_lease(pool)
    await add_ticks(pool)
    return seeded
