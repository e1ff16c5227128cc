"""The roll-ups' watermark (``rollup_watermark``): late ledger rows re-roll their buckets.

Revision ID: 0005_rollup_watermark
Revises: 0004_experiment_evaluator
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_rollup_watermark"
down_revision = "0004_experiment_evaluator"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rollup_watermark",
        sa.Column("name", sa.String(40), primary_key=True),
        sa.Column("ledger_id", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("rollup_watermark")
