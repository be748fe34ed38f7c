"""Tables. Changes here need an Alembic migration in store/migrations/versions."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

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

# API tokens: only the SHA-256 of a token is kept. Not a kind: tokens are not desired state,
# must never appear in a watch or the change log, and last-used updates must not bump resourceVersions.
tokens = Table(
    "tokens",
    metadata,
    Column("name", String(253), primary_key=True),
    Column("sha256", String(64), nullable=False, unique=True),
    Column("subject", String(253), nullable=False),
    Column("grants", Text, nullable=False),  # JSON list of {"role": ..., "project": ... | null}
    Column("created_at", String(32), nullable=False),
    Column("expires_at", String(32), nullable=True),
    Column("last_used_at", String(32), nullable=True),
    Column("revoked", Boolean, nullable=False, default=False),
    Column("created_by", String(253), nullable=False, default=""),
)

# The audit log: append-only; each record's hash covers the previous record's hash.
audit = Table(
    "audit",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("time", String(32), nullable=False),
    Column("subject", String(253), nullable=False),
    Column("roles", Text, nullable=False),
    Column("action", String(64), nullable=False),
    Column("kind", String(64), nullable=False),
    Column("project", String(63), nullable=False),
    Column("name", String(253), nullable=False),
    Column("result", String(64), nullable=False),
    Column("code", Integer, nullable=False),
    Column("source", String(128), nullable=False),
    Column("detail", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

# A single row: the chain's head. Appending updates it first, which locks it until commit,
# so records are chained in commit order on every backend.
audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)

# Reservations (locks) of objects for long operations, as Ironic's node reservation: taken with
# an atomic conditional write, held by one controller (owner) until released or expired.
# Not part of the documents, so renewing a lease neither bumps resourceVersions nor wakes watchers.
reservations = Table(
    "reservations",
    metadata,
    Column("kind", String(64), primary_key=True),
    Column("project", String(63), primary_key=True),
    Column("name", String(253), primary_key=True),
    Column("owner", String(253), nullable=False),
    Column("purpose", String(64), nullable=False),
    Column("taken_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
)
Index("reservations_owner", reservations.c.owner)
