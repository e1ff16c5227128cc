"""The job ledger, budget alerts and metric roll-ups.

Revision ID: 0001_ledger
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001_ledger"
down_revision = None
branch_labels = None
depends_on = None

MONEY = sa.Numeric(20, 9)
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "job_ledger",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(64), nullable=False, unique=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("agent", sa.String(200), nullable=False),
        sa.Column("user_id", sa.String(200)),
        sa.Column("tier", sa.String(40)),
        sa.Column("requested_model", sa.String(200)),
        sa.Column("model", sa.String(200)),
        sa.Column("provider", sa.String(200)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("cache_hit", sa.Boolean, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("fallback_used", sa.Boolean, nullable=False),
        sa.Column("prompt_tokens", sa.Integer, nullable=False),
        sa.Column("completion_tokens", sa.Integer, nullable=False),
        sa.Column("cached_tokens", sa.Integer, nullable=False),
        sa.Column("usage_estimated", sa.Boolean, nullable=False),
        sa.Column("cost_usd", MONEY, nullable=False),
        sa.Column("cost_saved_usd", MONEY, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("error", sa.String(100)),
        sa.Column("error_message", sa.Text),
        sa.Column("metadata", JSONB, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("finished_at", TS, nullable=False),
    )
    op.create_index("ix_job_ledger_created_at", "job_ledger", ["created_at"])
    for column in ("agent", "user_id", "model", "tier"):
        name = "user" if column == "user_id" else column
        op.create_index(f"ix_job_ledger_{name}_created", "job_ledger", [column, "created_at"])
    op.create_table(
        "budget_alerts",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("budget", sa.String(200), nullable=False),
        sa.Column("period_start", TS, nullable=False),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("spent_usd", MONEY, nullable=False),
        sa.Column("limit_usd", MONEY, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("deliveries", JSONB, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("budget", "period_start", "level", name="uq_budget_alerts_once"),
    )
    op.create_table(
        "metrics_rollup",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("granularity", sa.String(8), nullable=False),
        sa.Column("bucket_start", TS, nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("agent", sa.String(200), nullable=False),
        sa.Column("tier", sa.String(40), nullable=False),
        sa.Column("jobs", sa.Integer, nullable=False),
        sa.Column("errors", sa.Integer, nullable=False),
        sa.Column("cache_hits", sa.Integer, nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger, nullable=False),
        sa.Column("completion_tokens", sa.BigInteger, nullable=False),
        sa.Column("cost_usd", MONEY, nullable=False),
        sa.Column("cost_saved_usd", MONEY, nullable=False),
        sa.Column("latency_p50_ms", sa.Float),
        sa.Column("latency_p95_ms", sa.Float),
        sa.Column("latency_p99_ms", sa.Float),
        sa.UniqueConstraint("granularity", "bucket_start", "model", "agent", "tier",
                            name="uq_metrics_rollup_bucket"),
    )
    op.create_index("ix_metrics_rollup_bucket", "metrics_rollup", ["granularity", "bucket_start"])


def downgrade() -> None:
    op.drop_table("metrics_rollup")
    op.drop_table("budget_alerts")
    op.drop_table("job_ledger")
