"""gated wake-up: enqueuers notify only while a worker sleeps

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

`pg_notify` makes every committing transaction take the notification queue's global lock
through its commit, so concurrent enqueuers that would share a WAL flush are serialised.
A notification is only useful to a worker that sleeps; a busy worker claims again anyway.

The protocol (lock key 0x616F6C69646C6500, "aolidle", session level, one per database):
* a worker about to sleep takes the lock exclusively on its LISTEN connection (waiting for
  every enqueuer that holds it shared to commit or roll back), then looks for runnable
  rows one last time, then sleeps; on waking it releases the lock;
* the insert trigger tries the lock shared for its transaction: if that fails, a worker
  sleeps (or is about to), so it notifies; if it succeeds, no worker sleeps, and the shared
  lock, held to commit, makes the next worker that goes to sleep wait for this row.

So no row is left unseen by a sleeping worker, and while the worker works (or none runs)
enqueuers do not notify. Replacing a function body is compatible with an older worker: it
never takes the lock, so enqueuers stop notifying it while it sleeps, and it finds their
rows on its safety-net scan (upgrade the worker soon after this migration).
Frozen raw SQL: this file imports nothing from aol.
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

GATED = """
CREATE OR REPLACE FUNCTION aol.notify_runnable() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, aol, pg_temp AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_rows WHERE status IN ('pending', 'retry')) THEN
        -- Held (or wanted) exclusively by a worker going to sleep: wake it. Otherwise
        -- keep it shared until commit, so a worker going to sleep waits for this row.
        IF NOT pg_try_advisory_xact_lock_shared(7020949544006083840) THEN
            PERFORM pg_notify('aol_wakeup', TG_OP);
        END IF;
    END IF;
    RETURN NULL;
END
$$
"""

UNGATED = """
CREATE OR REPLACE FUNCTION aol.notify_runnable() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, aol, pg_temp AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_rows WHERE status IN ('pending', 'retry')) THEN
        PERFORM pg_notify('aol_wakeup', TG_OP);
    END IF;
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    op.get_bind().exec_driver_sql(GATED)


def downgrade() -> None:
    op.get_bind().exec_driver_sql(UNGATED)
