"""enqueue_many: many actions in one call, idempotent per key, atomic per call

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29

Additive only. Frozen raw SQL: this file imports nothing from aol.
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

SIGNATURE = "aol.enqueue_many(text[], jsonb[], text[], timestamptz[], integer[], integer[])"

CREATE = r"""
CREATE FUNCTION aol.enqueue_many(
    action_types     text[],
    payloads         jsonb[],
    idempotency_keys text[],
    not_befores      timestamptz[] DEFAULT NULL,
    priorities       integer[]     DEFAULT NULL,
    max_attempts     integer[]     DEFAULT NULL
) RETURNS TABLE (ordinality bigint, id bigint)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, aol, pg_temp
AS $$
-- One INSERT for the whole batch: the statement-level trigger sends one NOTIFY. A key
-- already stored (or repeated in the batch) keeps its first action; every key gets back
-- the id that holds it, in input order. A bad element (the table's named check
-- constraints) fails the whole call, so a batch is stored entirely or not at all.
DECLARE
    n integer := coalesce(cardinality(enqueue_many.idempotency_keys), 0);
BEGIN
    IF coalesce(cardinality(enqueue_many.action_types), 0) <> n
       OR coalesce(cardinality(enqueue_many.payloads), 0) <> n
       OR (enqueue_many.not_befores IS NOT NULL AND cardinality(enqueue_many.not_befores) <> n)
       OR (enqueue_many.priorities IS NOT NULL AND cardinality(enqueue_many.priorities) <> n)
       OR (enqueue_many.max_attempts IS NOT NULL
           AND cardinality(enqueue_many.max_attempts) <> n) THEN
        RAISE EXCEPTION 'aol.enqueue_many: the arrays must have one element per action '
                        '(% idempotency keys, % action types, % payloads)',
            n, cardinality(enqueue_many.action_types), cardinality(enqueue_many.payloads)
            USING ERRCODE = '22023';
    END IF;
    INSERT INTO aol.actions AS a
        (action_type, payload, idempotency_key, not_before, priority, max_attempts)
    SELECT t.action_type, t.payload, t.idempotency_key, coalesce(t.not_before, now()),
           coalesce(t.priority, 0), coalesce(t.max_attempts, 3)
      FROM unnest(enqueue_many.action_types, enqueue_many.payloads,
                  enqueue_many.idempotency_keys,
                  coalesce(enqueue_many.not_befores, array_fill(NULL::timestamptz, ARRAY[n])),
                  coalesce(enqueue_many.priorities, array_fill(NULL::integer, ARRAY[n])),
                  coalesce(enqueue_many.max_attempts, array_fill(NULL::integer, ARRAY[n])))
           AS t(action_type, payload, idempotency_key, not_before, priority, max_attempts)
    ON CONFLICT ON CONSTRAINT actions_idempotency_key_unique DO NOTHING;
    -- A new statement, so keys committed meanwhile by others are visible here.
    RETURN QUERY
        SELECT k.n, x.id
          FROM unnest(enqueue_many.idempotency_keys) WITH ORDINALITY AS k(key, n)
          JOIN aol.actions x ON x.idempotency_key = k.key
         ORDER BY k.n;
END
$$
"""

UPGRADE = [
    CREATE,
    f"REVOKE EXECUTE ON FUNCTION {SIGNATURE} FROM PUBLIC",
]

DOWNGRADE = [f"DROP FUNCTION {SIGNATURE}"]


def upgrade() -> None:
    for statement in UPGRADE:
        op.get_bind().exec_driver_sql(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.get_bind().exec_driver_sql(statement)
