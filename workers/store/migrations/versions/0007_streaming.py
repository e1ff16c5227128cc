"""Streamed jobs: the ledger's time to first token, and its histogram for Prometheus.

Revision ID: 0007_streaming
Revises: 0006_metric_counters
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_streaming"
down_revision = "0006_metric_counters"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("job_ledger", sa.Column("ttft_ms", sa.Float(), nullable=True))
    op.create_table(
        "metric_ttft",
        sa.Column("tier", sa.String(40), primary_key=True),
        sa.Column("le", sa.Float(), primary_key=True),
        sa.Column("jobs", sa.BigInteger(), nullable=False),
        sa.Column("sum_ms", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("metric_ttft")
    op.drop_column("job_ledger", "ttft_ms")
