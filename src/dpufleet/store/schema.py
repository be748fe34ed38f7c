"""Tables. Changes here need an Alembic migration in store/migrations/versions."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, MetaData, String, Table, Text, UniqueConstraint

metadata = MetaData()

# One row per live object. `data` is the whole document as JSON, already carrying its
# resourceVersion, so lists are served without re-serialising each object.
objects = Table(
    "objects",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(64), nullable=False),
    Column("project", String(63), nullable=False),
    Column("name", String(253), nullable=False),
    Column("uid", String(36), nullable=False, unique=True),
    Column("rv", BigInteger, nullable=False),
    Column("labels", Text, nullable=False, default="{}"),
    Column("owner_uids", Text, nullable=False, default=""),
    Column("data", Text, nullable=False),
    UniqueConstraint("kind", "project", "name", name="uq_objects_kind_project_name"),
)
Index("ix_objects_kind_rv", objects.c.kind, objects.c.rv)

# The change log: one row per committed write, in commit order. Watches are served from it.
changes = Table(
    "changes",
    metadata,
    Column("rv", BigInteger, primary_key=True, autoincrement=False),
    Column("kind", String(64), nullable=False),
    Column("project", String(63), nullable=False),
    Column("name", String(253), nullable=False),
    Column("type", String(16), nullable=False),
    Column("data", Text, nullable=False),
)
Index("ix_changes_kind_rv", changes.c.kind, changes.c.rv)

# A single row. Taking the next resourceVersion locks this row until commit, so
# resourceVersions are handed out in commit order on every backend (no gaps a
# watcher could read past).
counter = Table(
    "counter",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("rv", BigInteger, nullable=False),
    Column("compacted_rv", BigInteger, nullable=False),
)

# Secret fields of objects (a credential's password), encrypted; never part of a document.
secrets = Table(
    "secrets",
    metadata,
    Column("uid", String(36), primary_key=True),
    Column("field", String(64), primary_key=True),
    Column("ciphertext", Text, nullable=False),
)
