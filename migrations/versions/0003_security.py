"""security: pinned search_path, an audited flag function, no rights for PUBLIC

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29

Additive only: a worker or CLI of revision 0002 connected as the schema owner keeps working
while this is applied (the owner keeps every right; the old direct UPDATE of control_flags
still works for it).

* `aol.enqueue` becomes SECURITY DEFINER with a pinned search_path, so a role holding only
  EXECUTE on it (`aol roles create`: <prefix>_enqueuer) can enqueue without any right on the
  tables. Its body names every table with its schema; the trigger functions get the same pin.
  `pg_temp` is named last on purpose: left out, it would be searched first for relations.
* `aol.set_control_flags(...)` is the audited way to change the flags: it records the login
  (`session_user`, not the definer), refuses a change without a reason, and logs one
  `flags_changed` row. Roles that may change flags get EXECUTE on it, not UPDATE on the table.
* PUBLIC loses EXECUTE on these functions (PostgreSQL grants it by default), and any right it
  may hold on the schema, its tables and sequences (0001 granted none, but default privileges
  of the cluster could have). Downgrade gives back PostgreSQL's default EXECUTE for PUBLIC on
  the 0001 functions; it grants nothing on the schema or tables, as 0001 never did.

Frozen raw SQL: this file imports nothing from aol.
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

ENQUEUE = "aol.enqueue(text, jsonb, text, timestamptz, integer, integer)"
SET_FLAGS = "aol.set_control_flags(boolean, boolean, boolean, text, boolean)"
PATH = "pg_catalog, aol, pg_temp"

SET_CONTROL_FLAGS = r"""
CREATE FUNCTION aol.set_control_flags(
    paused       boolean,
    killed       boolean,
    proof_mode   boolean,
    reason       text,
    kill_cancels boolean DEFAULT NULL
) RETURNS aol.control_flags
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, aol, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
    v_before  aol.control_flags;
    v_after   aol.control_flags;
    v_changes text[] := ARRAY[]::text[];
BEGIN
    IF reason IS NULL OR length(btrim(reason)) = 0 THEN
        RAISE EXCEPTION 'aol.set_control_flags: reason must not be empty'
            USING ERRCODE = '22023', COLUMN = 'reason',
                  HINT = 'Say why the flags change; the reason is kept in the audit trail.';
    END IF;

    SELECT f.* INTO v_before FROM aol.control_flags f WHERE f.id = 1 FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'aol.set_control_flags: aol.control_flags has no row; run aol migrate'
            USING ERRCODE = 'P0002';
    END IF;

    UPDATE aol.control_flags f
       SET paused       = coalesce(paused, f.paused),
           killed       = coalesce(killed, f.killed),
           proof_mode   = coalesce(proof_mode, f.proof_mode),
           kill_cancels = coalesce(kill_cancels, f.kill_cancels),
           changed_by   = session_user,
           changed_at   = now(),
           reason       = reason
     WHERE f.id = 1
    RETURNING f.* INTO v_after;

    -- Booleans as true/false (format's %s would print t/f).
    IF v_after.paused IS DISTINCT FROM v_before.paused THEN
        v_changes := v_changes
            || format('paused %s -> %s', v_before.paused::text, v_after.paused::text);
    END IF;
    IF v_after.killed IS DISTINCT FROM v_before.killed THEN
        v_changes := v_changes
            || format('killed %s -> %s', v_before.killed::text, v_after.killed::text);
    END IF;
    IF v_after.proof_mode IS DISTINCT FROM v_before.proof_mode THEN
        v_changes := v_changes
            || format('proof_mode %s -> %s', v_before.proof_mode::text, v_after.proof_mode::text);
    END IF;
    IF v_after.kill_cancels IS DISTINCT FROM v_before.kill_cancels THEN
        v_changes := v_changes
            || format('kill_cancels %s -> %s', v_before.kill_cancels::text,
                      v_after.kill_cancels::text);
    END IF;

    INSERT INTO aol.execution_logs (level, event, message)
    VALUES ('warning', 'flags_changed',
            format('paused=%s killed=%s proof_mode=%s kill_cancels=%s (%s) by %s: %s',
                   v_after.paused::text, v_after.killed::text, v_after.proof_mode::text,
                   v_after.kill_cancels::text,
                   coalesce(nullif(array_to_string(v_changes, ', '), ''), 'no flag changed'),
                   session_user, reason));
    RETURN v_after;
END
$$;
"""

UPGRADE = [
    f"ALTER FUNCTION {ENQUEUE} SECURITY DEFINER SET search_path = {PATH}",
    f"ALTER FUNCTION aol.notify_runnable() SET search_path = {PATH}",
    f"ALTER FUNCTION aol.notify_flags() SET search_path = {PATH}",
    SET_CONTROL_FLAGS,
    f"COMMENT ON FUNCTION {SET_FLAGS} IS "
    "'The audited way to change aol.control_flags: NULL leaves a flag as it is; the reason "
    "is required; changed_by records the login (session_user).'",
    f"REVOKE EXECUTE ON FUNCTION {ENQUEUE} FROM PUBLIC",
    "REVOKE EXECUTE ON FUNCTION aol.notify_runnable() FROM PUBLIC",
    "REVOKE EXECUTE ON FUNCTION aol.notify_flags() FROM PUBLIC",
    f"REVOKE EXECUTE ON FUNCTION {SET_FLAGS} FROM PUBLIC",
    "REVOKE ALL ON SCHEMA aol FROM PUBLIC",
    "REVOKE ALL ON ALL TABLES IN SCHEMA aol FROM PUBLIC",
    "REVOKE ALL ON ALL SEQUENCES IN SCHEMA aol FROM PUBLIC",
]

DOWNGRADE = [
    "GRANT EXECUTE ON FUNCTION aol.notify_flags() TO PUBLIC",
    "GRANT EXECUTE ON FUNCTION aol.notify_runnable() TO PUBLIC",
    f"GRANT EXECUTE ON FUNCTION {ENQUEUE} TO PUBLIC",
    f"DROP FUNCTION {SET_FLAGS}",
    "ALTER FUNCTION aol.notify_flags() RESET search_path",
    "ALTER FUNCTION aol.notify_runnable() RESET search_path",
    f"ALTER FUNCTION {ENQUEUE} SECURITY INVOKER RESET search_path",
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.get_bind().exec_driver_sql(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.get_bind().exec_driver_sql(statement)
