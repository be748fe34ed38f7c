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

from sqlalchemy import ColumnElement, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

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


def reserve(
    store: Store, kind: str, project: str, name: str, owner: str, purpose: str, ttl: float
) -> Reservation | None:
    """Take or renew the reservation. Returns None when taken, else the other holder's reservation."""
    now = time.time()
    values = {"owner": owner, "purpose": purpose, "taken_at": now, "expires_at": now + ttl}
    try:
        with store.transaction() as conn:
            taken = conn.execute(
                update(reservations)
                .where(_key(kind, project, name), or_(reservations.c.owner == owner, reservations.c.expires_at < now))
                .values(**values)
            )
            if taken.rowcount == 1:
                return None
            row = conn.execute(select(reservations).where(_key(kind, project, name))).first()
            if row is not None:
                return Reservation(row.kind, row.project, row.name, row.owner, row.purpose, row.expires_at)
            conn.execute(insert(reservations).values(kind=kind, project=project, name=name, **values))
            return None
    except IntegrityError:  # another owner inserted it meanwhile (PostgreSQL)
        found = holder(store, kind, project, name)
        return found or Reservation(kind, project, name, "unknown", purpose, now + ttl)


def release(store: Store, kind: str, project: str, name: str, owner: str) -> bool:
    """Give the reservation up if we hold it. Returns whether we did."""
    with store.transaction() as conn:
        result = conn.execute(delete(reservations).where(_key(kind, project, name), reservations.c.owner == owner))
        return result.rowcount == 1


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
