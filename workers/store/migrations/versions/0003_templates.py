"""Prompt templates (``prompt_templates``) and experiments (``experiments``,
``experiment_outcomes``).

Revision ID: 0003_templates
Revises: 0002_fleet_keys
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0003_templates"
down_revision = "0002_fleet_keys"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "prompt_templates",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("category", sa.String(200)),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("name", "version", name="uq_prompt_templates_version"),
    )
    op.create_table(
        "experiments",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("unit", sa.String(16), nullable=False),
        sa.Column("primary_metric", sa.String(40), nullable=False),
        sa.Column("variants", JSONB, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("winner", sa.String(200)),
        sa.Column("alpha", sa.Float, nullable=False, server_default="0.05"),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "experiment_outcomes",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(64), nullable=False, unique=True),
        sa.Column("experiment", sa.String(200), nullable=False),
        sa.Column("variant", sa.String(200), nullable=False),
        sa.Column("success", sa.Boolean),
        sa.Column("score", sa.Float),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_experiment_outcomes_experiment", "experiment_outcomes",
                    ["experiment", "variant"])


def downgrade() -> None:
    op.drop_table("experiment_outcomes")
    op.drop_table("experiments")
    op.drop_table("prompt_templates")
