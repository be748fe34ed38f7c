"""Reservations: one controller at a time works on an object, as Ironic's reserve_node.

A reservation is taken with one atomic conditional write — "set owner to me where the
row is mine or expired" — and an insert when there is no row; so two controllers (or two
replicas sharing PostgreSQL) never both hold one. It expires, so a controller that died
does not block the object forever; a restarted controller releases its own at start
(`release_all`), then takes them again as it resumes each object from its persisted status.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import ColumnElement, delete, select
from sqlalchemy.exc import IntegrityError

from .reads import _driver
from .schema import reservations
from .store import Store


@dataclass(frozen=True)
class Reservation:
    kind: str
    project: str
    name: str
    owner: str
    purpose: str
    expires_at: float


def _key(kind: str, project: str, name: str) -> ColumnElement[bool]:
    return (reservations.c.kind == kind) & (reservations.c.project == project) & (reservations.c.name == name)


# Taken and given up once per DPU update: the statements go straight to the database driver, inside the
# store's transaction (SQLAlchemy's statement path cost more than the statements).
_TAKE = (
    "UPDATE reservations SET owner = ?, purpose = ?, taken_at = ?, expires_at = ? "
    "WHERE kind = ? AND project = ? AND name = ? AND (owner = ? OR expires_at < ?)"
)
_HOLDER = "SELECT owner, purpose, expires_at FROM reservations WHERE kind = ? AND project = ? AND name = ?"
_INSERT = (
    "INSERT INTO reservations (kind, project, name, owner, purpose, taken_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_RELEASE = "DELETE FROM reservations WHERE kind = ? AND project = ? AND name = ? AND owner = ?"


class _Taken(Exception):
    """Another owner inserted the reservation between our look and our insert."""


def reserve(
    store: Store, kind: str, project: str, name: str, owner: str, purpose: str, ttl: float
) -> Reservation | None:
    """Take or renew the reservation. Returns None when taken, else the other holder's reservation."""
    now = time.time()
    try:
        with store.transaction() as conn:
            taken = _driver(conn, _TAKE, (owner, purpose, now, now + ttl, kind, project, name, owner, now))
            if taken.rowcount == 1:
                return None
            row = _driver(conn, _HOLDER, (kind, project, name)).fetchone()
            if row is not None:
                return Reservation(kind, project, name, row[0], row[1], row[2])
            try:
                _driver(conn, _INSERT, (kind, project, name, owner, purpose, now, now + ttl))
            except conn.dialect.dbapi.IntegrityError:  # type: ignore[union-attr]
                raise _Taken from None  # leaves the transaction, rolled back
            return None
    except (_Taken, IntegrityError):  # another owner inserted it meanwhile (PostgreSQL)
        found = holder(store, kind, project, name)
        return found or Reservation(kind, project, name, "unknown", purpose, now + ttl)


def release(store: Store, kind: str, project: str, name: str, owner: str) -> bool:
    """Give the reservation up if we hold it. Returns whether we did."""
    with store.transaction() as conn:
        return bool(_driver(conn, _RELEASE, (kind, project, name, owner)).rowcount == 1)


def release_all(store: Store, owner: str) -> int:
    """At start: a restarted controller clears the reservations it held before it stopped."""
    with store.transaction() as conn:
        return int(conn.execute(delete(reservations).where(reservations.c.owner == owner)).rowcount)


def holder(store: Store, kind: str, project: str, name: str) -> Reservation | None:
    with store.connect() as conn:
        row = conn.execute(select(reservations).where(_key(kind, project, name))).first()
    if row is None:
        return None
    return Reservation(row.kind, row.project, row.name, row.owner, row.purpose, row.expires_at)
