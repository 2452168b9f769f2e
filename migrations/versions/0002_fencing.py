"""fencing: lease remembers the lock holder's backend and the previous holder's expiry

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29

Additive only, so a worker of revision 0001 keeps running while this is applied.
Frozen raw SQL: this file imports nothing from aol.
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UPGRADE = [
    # The backend pid of the session holding the advisory lock: a standby that finds the
    # lease expired while the lock is still held terminates exactly this backend.
    "ALTER TABLE aol.lease ADD COLUMN holder_pid integer",
    # When a holder takes over, the previous holder's expiry: claims of older epochs may be
    # rescued once it has passed, because a holder that cannot renew stops on its own by then.
    "ALTER TABLE aol.lease ADD COLUMN previous_expires_at timestamptz",
    # What `kill` does to in-flight actions: back to retry (default) or cancelled.
    "ALTER TABLE aol.control_flags ADD COLUMN kill_cancels boolean NOT NULL DEFAULT false",
]

DOWNGRADE = [
    "ALTER TABLE aol.control_flags DROP COLUMN kill_cancels",
    "ALTER TABLE aol.lease DROP COLUMN previous_expires_at",
    "ALTER TABLE aol.lease DROP COLUMN holder_pid",
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.get_bind().exec_driver_sql(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.get_bind().exec_driver_sql(statement)
