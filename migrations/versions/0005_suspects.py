"""suspects: an action whose worker died while it ran is retried alone

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29

Additive only (a column with a constant default, a small partial index).
Frozen raw SQL: this file imports nothing from aol.
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UPGRADE = [
    # How often the action's claim expired while it ran (its worker died or hung). Such an
    # action may be what kills workers, so it is claimed alone: a poison action cannot burn
    # the attempts of the actions it would otherwise share a batch with.
    "ALTER TABLE aol.actions ADD COLUMN rescues integer NOT NULL DEFAULT 0",
    "CREATE INDEX actions_suspect_idx ON aol.actions (not_before, id) "
    "WHERE status = 'retry' AND rescues > 0",
]

DOWNGRADE = [
    "DROP INDEX aol.actions_suspect_idx",
    "ALTER TABLE aol.actions DROP COLUMN rescues",
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.get_bind().exec_driver_sql(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.get_bind().exec_driver_sql(statement)
