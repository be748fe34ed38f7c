"""Initial tables: objects, changes, counter.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "objects",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("project", sa.String(63), nullable=False),
        sa.Column("name", sa.String(253), nullable=False),
        sa.Column("uid", sa.String(36), nullable=False, unique=True),
        sa.Column("rv", sa.BigInteger, nullable=False),
        sa.Column("labels", sa.Text, nullable=False),
        sa.Column("owner_uids", sa.Text, nullable=False),
        sa.Column("data", sa.Text, nullable=False),
        sa.UniqueConstraint("kind", "project", "name", name="uq_objects_kind_project_name"),
    )
    op.create_index("ix_objects_kind_rv", "objects", ["kind", "rv"])
    op.create_table(
        "changes",
        sa.Column("rv", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("project", sa.String(63), nullable=False),
        sa.Column("name", sa.String(253), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("data", sa.Text, nullable=False),
    )
    op.create_index("ix_changes_kind_rv", "changes", ["kind", "rv"])
    counter = op.create_table(
        "counter",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("rv", sa.BigInteger, nullable=False),
        sa.Column("compacted_rv", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(counter, [{"id": 1, "rv": 0, "compacted_rv": 0}])


def downgrade() -> None:
    op.drop_table("counter")
    op.drop_index("ix_changes_kind_rv", "changes")
    op.drop_table("changes")
    op.drop_index("ix_objects_kind_rv", "objects")
    op.drop_table("objects")
