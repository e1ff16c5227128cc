"""Fleet keys with limits of their own and a priority: requests and tokens per minute,
jobs in flight, what happens over them (``reject`` or ``queue``), and the priority of
the key's jobs. NULL limits mean none; a key made before this has none, priority normal.

Revision ID: 0008_key_limits
Revises: 0007_streaming
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_key_limits"
down_revision = "0007_streaming"
branch_labels = None
depends_on = None

_CHECKS = {
    "ck_fleet_keys_limits_positive": "coalesce(rpm, 1) >= 1 AND coalesce(tpm, 1) >= 1 "
                                     "AND coalesce(concurrency, 1) >= 1",
    "ck_fleet_keys_limit_mode": "limit_mode IS NULL OR limit_mode IN ('reject', 'queue')",
    "ck_fleet_keys_priority": "priority IS NULL OR priority IN ('high', 'normal', 'low')",
}


def upgrade() -> None:
    op.add_column("fleet_keys", sa.Column("rpm", sa.Integer(), nullable=True))
    op.add_column("fleet_keys", sa.Column("tpm", sa.Integer(), nullable=True))
    op.add_column("fleet_keys", sa.Column("concurrency", sa.Integer(), nullable=True))
    op.add_column("fleet_keys", sa.Column("limit_mode", sa.String(16), nullable=True,
                                          server_default="reject"))
    op.add_column("fleet_keys", sa.Column("priority", sa.String(16), nullable=True,
                                          server_default="normal"))
    # What the API turns into a LimitConfig and a job's priority: a bad row would refuse
    # its key's every request, so the table refuses it instead.
    for name, check in _CHECKS.items():
        op.create_check_constraint(name, "fleet_keys", check)


def downgrade() -> None:
    for name in _CHECKS:
        op.drop_constraint(name, "fleet_keys", type_="check")
    for column in ("priority", "limit_mode", "concurrency", "tpm", "rpm"):
        op.drop_column("fleet_keys", column)
