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

Two small partial indexes come with it, for the action list: cancelled actions by
finished_at, and finished statuses without finished_at (which only SQL outside aol writes).

Building them takes a SHARE lock on aol.actions, which holds up enqueues and the worker's
writes while each build reads the table (about a second per million rows in all). Where
that pause is too long, build them first with CREATE INDEX CONCURRENTLY, with the names
and definitions of INDEXES below: the upgrade keeps an index that exists (IF NOT EXISTS),
and builds anew one that such a build left invalid.
Frozen raw SQL: this file imports nothing from aol.
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# name -> definition. Built in this order; dropped in the reverse one.
INDEXES = {
    # Finished rows only (live rows have no finished_at): retention and the action list.
    "actions_finished_idx": "(finished_at) WHERE finished_at IS NOT NULL",
    # Cancelled rows are few among the finished: the list of cancelled actions.
    "actions_cancelled_idx": "(finished_at) WHERE status = 'cancelled'",
    # Empty unless SQL outside aol finishes an action without finished_at: lets the
    # action list find such rows without a full scan.
    "actions_unstamped_idx": "(updated_at) "
    "WHERE finished_at IS NULL AND status IN ('succeeded', 'cancelled', 'dead')",
}

# A concurrent build that failed leaves an invalid index behind: build that one anew.
DROP_IF_INVALID = """DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_index
                WHERE indexrelid = to_regclass('aol.{name}') AND NOT indisvalid) THEN
        DROP INDEX aol.{name};
    END IF;
END
$$"""

UPGRADE = [
    statement
    for name, definition in INDEXES.items()
    for statement in (
        DROP_IF_INVALID.format(name=name),
        f"CREATE INDEX IF NOT EXISTS {name} ON aol.actions {definition}",
    )
]

DOWNGRADE = [f"DROP INDEX aol.{name}" for name in reversed(INDEXES)]


def upgrade() -> None:
    for statement in UPGRADE:
        op.get_bind().exec_driver_sql(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.get_bind().exec_driver_sql(statement)
