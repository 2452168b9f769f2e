"""finished index: retention and the dashboard find finished actions without reading them all

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02

`aol prune` deletes finished actions oldest first, 1,000 per transaction. Without an index
on `finished_at` every batch read the whole table and sorted what it found (at 1,000,000
rows, about 270 ms and a sort spilled to disk per batch), so pruning a large history took
time quadratic in its size. This partial index holds finished rows only (live rows have no
`finished_at`): the claim path never touches it, and a finish adds one index entry. The
dashboard's action list reads the newest finished actions from it too.

Building it takes a SHARE lock on aol.actions, which holds up enqueues and the worker's
writes for the build (about a second per million rows). Where that pause is too long,
build the same index first with CREATE INDEX CONCURRENTLY under this name: the upgrade then
keeps it (IF NOT EXISTS), or builds it anew if that build failed.
Frozen raw SQL: this file imports nothing from aol.
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

UPGRADE = [
    # A concurrent build that failed leaves an invalid index behind: build that one anew.
    """DO $$
    BEGIN
        IF EXISTS (SELECT 1 FROM pg_index
                    WHERE indexrelid = to_regclass('aol.actions_finished_idx')
                      AND NOT indisvalid) THEN
            DROP INDEX aol.actions_finished_idx;
        END IF;
    END
    $$""",
    "CREATE INDEX IF NOT EXISTS actions_finished_idx ON aol.actions (finished_at) "
    "WHERE finished_at IS NOT NULL",
    # Empty unless SQL outside aol finishes an action without finished_at: lets the
    # dashboard's list find such rows without a full scan.
    "CREATE INDEX actions_unstamped_idx ON aol.actions (updated_at) "
    "WHERE finished_at IS NULL AND status IN ('succeeded', 'cancelled', 'dead')",
]

DOWNGRADE = [
    "DROP INDEX aol.actions_unstamped_idx",
    "DROP INDEX aol.actions_finished_idx",
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.get_bind().exec_driver_sql(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.get_bind().exec_driver_sql(statement)
