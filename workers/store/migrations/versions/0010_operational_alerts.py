"""Operational alerts (``operational_alerts``): one row per firing of an alert on a
tier's, model's or agent's error rate, latency or cost per request, resolved in place.
The partial unique index keeps at most one firing row per kind, scope and target, so
beats racing (or restarted) fire each alert once.

Revision ID: 0010_operational_alerts
Revises: 0009_audit_log
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0010_operational_alerts"
down_revision = "0009_audit_log"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "operational_alerts",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("target", sa.String(200), nullable=False),
        sa.Column("threshold", sa.Float, nullable=False),
        sa.Column("resolve_below", sa.Float, nullable=False),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("jobs", sa.Integer, nullable=False),
        sa.Column("window_s", sa.Float, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("deliveries", postgresql.JSONB, nullable=False,
                  server_default=sa.text("'{}'::jsonb")),
        sa.Column("fired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolved_value", sa.Float, nullable=True),
        sa.Column("resolved_jobs", sa.Integer, nullable=True),
        sa.Column("resolve_message", sa.Text, nullable=True),
        sa.Column("resolve_deliveries", postgresql.JSONB, nullable=True),
        sa.CheckConstraint("scope IN ('tier', 'model', 'agent')",
                           name="ck_operational_alerts_scope"),
    )
    op.create_index("ix_operational_alerts_fired_at", "operational_alerts", ["fired_at"])
    op.create_index("uq_operational_alerts_firing", "operational_alerts",
                    ["kind", "scope", "target"], unique=True,
                    postgresql_where=sa.text("resolved_at IS NULL"))


def downgrade() -> None:
    op.drop_index("uq_operational_alerts_firing", table_name="operational_alerts")
    op.drop_index("ix_operational_alerts_fired_at", table_name="operational_alerts")
    op.drop_table("operational_alerts")
