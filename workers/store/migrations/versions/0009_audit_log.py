"""The audit log: every administrative action, append-only.

A trigger refuses every UPDATE and DELETE of a row, and a statement trigger refuses
TRUNCATE. The retention purge (``workers.store.audit.purge``) has its own way through:
its transaction sets ``llmfleet.audit_purge = on`` with ``SET LOCAL`` (``set_config(...,
true)``), which lapses when that transaction ends, and the trigger lets a DELETE pass
only then. UPDATE never passes.

Why a session setting rather than a SECURITY DEFINER purge function: the fleet runs
with one database role, which owns its tables (the migrations create them). A SECURITY
DEFINER function only helps when the role that writes the log is not the one that owns
it, so that UPDATE and DELETE can be revoked from the writer; with one role it adds a
function and protects nothing more. The trigger guards against what happens with one
role: a query, a tool or an operator's slip in psql changing or deleting rows. It does
not stop that role from dropping the trigger (nor could anything inside the database);
a deployment that needs that runs the API and workers as a role that does not own
``audit_log``, with INSERT and SELECT granted, and ships the rows off the host.

Revision ID: 0009_audit_log
Revises: 0008_key_limits
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0009_audit_log"
down_revision = "0008_key_limits"
branch_labels = None
depends_on = None

_FUNCTION = """
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE' AND current_setting('llmfleet.audit_purge', true) = 'on' THEN
    RETURN OLD;  -- the retention purge (workers.store.audit.purge)
  END IF;
  RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP
    USING ERRCODE = 'insufficient_privilege',
          HINT = 'only the retention purge deletes rows (llmfleet.audit_purge)';
END
$$
"""


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.text("now()")),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("resource", sa.Text(), nullable=False),
        sa.Column("before", JSONB(), nullable=True),
        sa.Column("after", JSONB(), nullable=True),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("address", sa.Text(), nullable=True),
        sa.CheckConstraint("outcome IN ('ok', 'refused', 'error')",
                           name="ck_audit_log_outcome"),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])
    op.create_index("ix_audit_log_action_at", "audit_log", ["action", "at"])
    op.create_index("ix_audit_log_actor_at", "audit_log", ["actor", "at"])
    op.create_index("ix_audit_log_resource_at", "audit_log", ["resource", "at"])
    op.execute(_FUNCTION)
    op.execute("CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
               "FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()")
    op.execute("CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log "
               "FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()")


def downgrade() -> None:
    op.drop_table("audit_log")  # its triggers go with it
    op.execute("DROP FUNCTION audit_log_append_only()")
