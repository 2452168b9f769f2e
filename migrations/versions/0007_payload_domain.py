"""payload domain: the payload's checks run when a payload is written, not on every update

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02

PostgreSQL evaluates every CHECK constraint of a table on every UPDATE of a row, whichever
columns change. `actions_payload_too_large` (`octet_length(payload::text)`) and
`actions_payload_is_object` (`jsonb_typeof(payload)`) read the whole payload, detoasting and
printing it, so each claim and each finish paid for them: with 3.4 KB payloads a claim of
1,000 took 50 ms instead of 31, and their finish 41 ms instead of 23. As constraints of a
domain over jsonb, with the same names, they run where a payload value is stored (INSERT,
or an UPDATE that sets the payload), and a refusal is the same SQLSTATE (23514, check
violation) naming the same constraint.

No table rewrite: the column first becomes a domain without constraints (binary
coercible), then the constraints are added NOT VALID and validated by a scan (every stored
payload already passed the table's checks). Frozen raw SQL: this file imports nothing from
aol.
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

IS_OBJECT = "jsonb_typeof({}) = 'object'"
SIZE = "octet_length({}::text) <= 65536"

UPGRADE = [
    "CREATE DOMAIN aol.action_payload AS jsonb",
    "ALTER TABLE aol.actions DROP CONSTRAINT actions_payload_is_object, "
    "DROP CONSTRAINT actions_payload_too_large",
    "ALTER TABLE aol.actions ALTER COLUMN payload TYPE aol.action_payload",
    "ALTER DOMAIN aol.action_payload ADD CONSTRAINT actions_payload_is_object "
    f"CHECK ({IS_OBJECT.format('VALUE')}) NOT VALID",
    "ALTER DOMAIN aol.action_payload ADD CONSTRAINT actions_payload_too_large "
    f"CHECK ({SIZE.format('VALUE')}) NOT VALID",
    "ALTER DOMAIN aol.action_payload VALIDATE CONSTRAINT actions_payload_is_object",
    "ALTER DOMAIN aol.action_payload VALIDATE CONSTRAINT actions_payload_too_large",
]

DOWNGRADE = [
    "ALTER TABLE aol.actions ALTER COLUMN payload TYPE jsonb",
    "DROP DOMAIN aol.action_payload",
    "ALTER TABLE aol.actions "
    f"ADD CONSTRAINT actions_payload_is_object CHECK ({IS_OBJECT.format('payload')}) NOT VALID, "
    f"ADD CONSTRAINT actions_payload_too_large CHECK ({SIZE.format('payload')}) NOT VALID",
    "ALTER TABLE aol.actions VALIDATE CONSTRAINT actions_payload_is_object",
    "ALTER TABLE aol.actions VALIDATE CONSTRAINT actions_payload_too_large",
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.get_bind().exec_driver_sql(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.get_bind().exec_driver_sql(statement)
