"""The audit log: who did what to which object, with what result, from where.

Append-only and hash-chained: each record's hash covers its fields and the previous
record's hash, and the `audit_head` row holds the newest sequence number and hash. Changing,
removing or reordering any record, or cutting records off the end, breaks the chain at that
record, which `verify()` names. (Someone able to rewrite the whole table and the head can
re-chain it; ship records off-box, or anchor the head hash elsewhere, to defeat that.)

Records carry names, never values: the action, the object's kind/project/name, the
sub-actions a write carried, and the result. No request body, no secret, ever.

The API server writes a record in the same transaction as the change it describes (a store
write hook); other writers (enrollment, token administration) call `AuditLog.record()`.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
from sqlalchemy import Connection, bindparam, insert, select, update

from ..api.meta import isotime, now
from ..store.schema import audit, audit_head
from ..store.store import Store

GENESIS = "0" * 64
_HEAD = update(audit_head).where(audit_head.c.id == 1)
_NEXT = _HEAD.values(seq=audit_head.c.seq + bindparam("n")).returning(audit_head.c.seq, audit_head.c.hash)
_INSERT = insert(audit)


@dataclass(frozen=True)
class AuditEntry:
    """What happened. `action` is a policy action (`dpus:patch`, `token-admin`) or an event (`enroll`)."""

    subject: str
    roles: str
    action: str
    kind: str = ""
    project: str = ""
    name: str = ""
    result: str = "Success"
    code: int = 200
    source: str = ""
    detail: str = ""
    time: str = field(default_factory=lambda: isotime(now()))


@dataclass(frozen=True)
class AuditRecord(AuditEntry):
    seq: int = 0
    prev_hash: str = ""
    hash: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_FIELDS = ("time", "subject", "roles", "action", "kind", "project", "name", "result", "code", "source", "detail")


def record_hash(seq: int, prev_hash: str, entry: AuditEntry) -> str:
    body = orjson.dumps([seq, prev_hash, *(getattr(entry, f) for f in _FIELDS)])
    return hashlib.sha256(body).hexdigest()


class _PendingRecords:
    """Records of one transaction, chained and written just before it commits."""

    def __init__(self) -> None:
        self.entries: list[AuditEntry] = []

    def __call__(self, conn: Connection) -> None:
        if not self.entries:
            return
        count = len(self.entries)
        last, prev = conn.execute(_NEXT, {"n": count}).one()
        seq = int(last) - count + 1
        rows = []
        for entry in self.entries:
            digest = record_hash(seq, str(prev), entry)
            rows.append({**asdict(entry), "seq": seq, "prev_hash": prev, "hash": digest})
            seq, prev = seq + 1, digest
        conn.execute(_INSERT, rows)
        conn.execute(_HEAD.values(hash=prev))
        self.entries = []


def append(conn: Connection, entry: AuditEntry) -> None:
    """Append one record inside the caller's store transaction.

    Records gather per transaction and are chained just before it commits: one head update
    and one insert for a whole group commit. Bumping the head locks its row until commit, so
    concurrent transactions chain in commit order, on SQLite and PostgreSQL alike.
    """
    flushes: list[object] | None = conn.info.get("before_commit")
    if flushes is None:  # a connection the store did not open: write at once
        pending = _PendingRecords()
        pending.entries.append(entry)
        pending(conn)
        return
    for flush in flushes:
        if isinstance(flush, _PendingRecords):
            flush.entries.append(entry)
            return
    pending = _PendingRecords()
    pending.entries.append(entry)
    flushes.append(pending)


@dataclass(frozen=True)
class Verification:
    ok: bool
    checked: int
    broken_seq: int | None = None
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checked": self.checked, "brokenSeq": self.broken_seq, "reason": self.reason}


def _row_record(row: Any) -> AuditRecord:
    return AuditRecord(**{key: row._mapping[key] for key in row._mapping})


class AuditLog:
    def __init__(self, store: Store) -> None:
        self.store = store

    def record(self, entry: AuditEntry) -> None:
        """Append a record in its own transaction (for writers that are not a store write)."""
        with self.store.transaction() as conn:
            append(conn, entry)

    def list(self, limit: int = 100, after: int | None = None) -> list[AuditRecord]:
        """The newest `limit` records (oldest first), or the `limit` records after seq `after`."""
        query = select(audit)
        if after is not None:
            query = query.where(audit.c.seq > after).order_by(audit.c.seq).limit(limit)
        else:
            query = query.order_by(audit.c.seq.desc()).limit(limit)
        with self.store.connect() as conn:
            rows = [_row_record(r) for r in conn.execute(query)]
        return sorted(rows, key=lambda r: r.seq)

    def verify(self, batch: int = 5000) -> Verification:
        """Walk the chain from the first record; name the first record that does not hold."""
        prev, expected, checked = GENESIS, 1, 0
        with self.store.connect() as conn:
            head_seq, head_hash = conn.execute(select(audit_head.c.seq, audit_head.c.hash)).one()
            while True:
                rows = conn.execute(
                    select(audit).where(audit.c.seq >= expected).order_by(audit.c.seq).limit(batch)
                ).all()
                for row in rows:
                    rec = _row_record(row)
                    if rec.seq != expected:
                        return Verification(False, checked, expected, f"record {expected} is missing")
                    if rec.prev_hash != prev:
                        return Verification(False, checked, rec.seq, "its previous-hash does not match the chain")
                    if record_hash(rec.seq, prev, rec) != rec.hash:
                        return Verification(False, checked, rec.seq, "its contents do not match its hash")
                    prev, expected, checked = rec.hash, expected + 1, checked + 1
                if len(rows) < batch:
                    break
        if int(head_seq) != checked:
            return Verification(False, checked, checked + 1, f"the head says {head_seq} records; found {checked}")
        if head_hash != prev:
            return Verification(False, checked, checked, "the newest record's hash does not match the head")
        return Verification(True, checked)
