"""An experiment's automatic evaluator (``experiments.evaluator``, a JSON spec).

Revision ID: 0004_experiment_evaluator
Revises: 0003_templates
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0004_experiment_evaluator"
down_revision = "0003_templates"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("experiments", sa.Column("evaluator", JSONB))


def downgrade() -> None:
    op.drop_column("experiments", "evaluator")
