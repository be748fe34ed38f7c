"""Reservations: per-object locks for long operations (provisioning), with owner and expiry.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reservations",
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("project", sa.String(63), nullable=False),
        sa.Column("name", sa.String(253), nullable=False),
        sa.Column("owner", sa.String(253), nullable=False),
        sa.Column("purpose", sa.String(64), nullable=False),
        sa.Column("taken_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("kind", "project", "name"),
    )
    op.create_index("reservations_owner", "reservations", ["owner"])


def downgrade() -> None:
    op.drop_index("reservations_owner", "reservations")
    op.drop_table("reservations")
