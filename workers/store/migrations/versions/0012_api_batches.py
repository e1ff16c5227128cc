"""The HTTP API's batches: a fleet key's default deadline (``fleet_keys.deadline_s``),
files uploaded at ``/v1/files`` and written by batches (``api_files``), batches made at
``/v1/batches`` (``api_batches``) and their lines, each answered by one fleet job
(``api_batch_jobs``).

Revision ID: 0012_api_batches
Revises: 0011_provider_batches
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0012_api_batches"
down_revision = "0011_provider_batches"
branch_labels = None
depends_on = None

_STATUSES = "'validating', 'failed', 'in_progress', 'cancelling', 'cancelled', 'completed'"


def upgrade() -> None:
    op.add_column("fleet_keys", sa.Column("deadline_s", sa.Float(), nullable=True))
    op.create_check_constraint("ck_fleet_keys_deadline_positive", "fleet_keys",
                               "deadline_s IS NULL OR deadline_s > 0")
    op.create_table(
        "api_files",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("bytes", sa.Integer, nullable=False),
        sa.Column("content", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_api_files_key_created", "api_files", ["key_id", "created_at"])
    op.create_table(
        "api_batches",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("endpoint", sa.String(40), nullable=False),
        sa.Column("input_file_id", sa.String(40), nullable=False),
        sa.Column("completion_window", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("metadata", postgresql.JSONB, nullable=True),
        sa.Column("errors", postgresql.JSONB, nullable=True),
        sa.Column("total", sa.Integer, nullable=False, server_default="0"),
        sa.Column("completed", sa.Integer, nullable=False, server_default="0"),
        sa.Column("failed", sa.Integer, nullable=False, server_default="0"),
        sa.Column("output_file_id", sa.String(40), nullable=True),
        sa.Column("error_file_id", sa.String(40), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        *(sa.Column(f"{moment}_at", sa.DateTime(timezone=True), nullable=True)
          for moment in ("in_progress", "finalizing", "completed", "failed", "cancelling",
                         "cancelled")),
        sa.CheckConstraint(f"status IN ({_STATUSES})", name="ck_api_batches_status"),
    )
    op.create_index("ix_api_batches_key_created", "api_batches", ["key_id", "created_at"])
    op.create_table(
        "api_batch_jobs",
        sa.Column("batch_id", sa.String(40), primary_key=True),
        sa.Column("line", sa.Integer, primary_key=True),
        sa.Column("custom_id", sa.String(512), nullable=False),
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("body", postgresql.JSONB, nullable=False),
        sa.UniqueConstraint("batch_id", "custom_id", name="uq_api_batch_jobs_custom_id"),
    )


def downgrade() -> None:
    op.drop_table("api_batch_jobs")
    op.drop_index("ix_api_batches_key_created", table_name="api_batches")
    op.drop_table("api_batches")
    op.drop_index("ix_api_files_key_created", table_name="api_files")
    op.drop_table("api_files")
    op.drop_constraint("ck_fleet_keys_deadline_positive", "fleet_keys", type_="check")
    op.drop_column("fleet_keys", "deadline_s")
