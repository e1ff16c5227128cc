"""Jobs that can wait: batches sent to providers' batch APIs (``provider_batches``), the
jobs waiting for one and their place in it (``provider_batch_jobs``), and the ledger's
``batch`` flag (a job answered at batch prices; its ``cost_saved_usd`` is then its live
price less its batch price).

Revision ID: 0011_provider_batches
Revises: 0010_operational_alerts
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0011_provider_batches"
down_revision = "0010_operational_alerts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("job_ledger", sa.Column("batch", sa.Boolean, nullable=False,
                                          server_default=sa.text("false")))
    op.create_table(
        "provider_batches",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("provider", sa.String(200), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("wire_model", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("provider_batch_id", sa.String(200), nullable=True),
        sa.Column("items", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(32), nullable=True),
        sa.CheckConstraint("status IN ('submitting', 'in_progress', 'ended', 'cancelled')",
                           name="ck_provider_batches_status"),
    )
    op.create_index("ix_provider_batches_status", "provider_batches", ["status"])
    op.create_table(
        "provider_batch_jobs",
        sa.Column("job_id", sa.String(64), primary_key=True),
        sa.Column("batch_id", sa.String(32), nullable=True),
        sa.Column("provider", sa.String(200), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("tier", sa.String(40), nullable=False),
        sa.Column("payload", postgresql.JSONB, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(32), nullable=True),
        sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("state IN ('waiting', 'submitted', 'done', 'live')",
                           name="ck_provider_batch_jobs_state"),
    )
    op.create_index("ix_provider_batch_jobs_state", "provider_batch_jobs",
                    ["state", "provider", "model"])
    op.create_index("ix_provider_batch_jobs_batch", "provider_batch_jobs", ["batch_id"])


def downgrade() -> None:
    op.drop_index("ix_provider_batch_jobs_batch", table_name="provider_batch_jobs")
    op.drop_index("ix_provider_batch_jobs_state", table_name="provider_batch_jobs")
    op.drop_table("provider_batch_jobs")
    op.drop_index("ix_provider_batches_status", table_name="provider_batches")
    op.drop_table("provider_batches")
    op.drop_column("job_ledger", "batch")
