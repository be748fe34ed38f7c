"""API tokens: kept as their SHA-256 only, with a subject, role grants, expiry and a revoked flag.

Tokens live in their own table rather than as a kind: they are not desired state for a
controller, they must never reach a watch stream or the change log (even hashed), and
recording when one was last used must not bump resourceVersions and wake every watcher.

A token is `dpf_` + 32 random bytes (URL-safe base64): a SHA-256 of 256 bits of entropy
cannot be brute-forced, so an unsalted fast hash is the right tool here (unlike passwords).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import orjson
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from ..api.errors import AlreadyExists, NotFound
from ..api.meta import isotime, now
from ..store.schema import tokens
from ..store.store import Store
from .identity import Grant, Identity

TOKEN_PREFIX = "dpf_"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass(frozen=True)
class TokenRecord:
    name: str
    subject: str
    grants: tuple[Grant, ...]
    created_at: str
    expires_at: str | None = None
    last_used_at: str | None = None
    revoked: bool = False
    created_by: str = ""

    def expired(self, at: datetime | None = None) -> bool:
        expiry = parse_time(self.expires_at)
        return expiry is not None and (at or now()) >= expiry

    def identity(self, via: str = "token") -> Identity:
        return Identity(self.subject, self.grants, self.name, via, parse_time(self.expires_at))

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "subject": self.subject,
            "grants": [g.as_dict() for g in self.grants],
            "createdAt": self.created_at,
            "expiresAt": self.expires_at,
            "lastUsedAt": self.last_used_at,
            "revoked": self.revoked,
            "expired": self.expired(),
            "createdBy": self.created_by,
        }


def _record(row: object) -> TokenRecord:
    m = row._mapping  # type: ignore[attr-defined]
    grants = tuple(Grant.parse(g) for g in orjson.loads(m["grants"]))
    return TokenRecord(
        m["name"],
        m["subject"],
        grants,
        m["created_at"],
        m["expires_at"],
        m["last_used_at"],
        bool(m["revoked"]),
        m["created_by"],
    )


class TokenStore:
    def __init__(self, store: Store) -> None:
        self.store = store

    def create(
        self,
        name: str,
        grants: tuple[Grant, ...],
        *,
        subject: str | None = None,
        expires_in: timedelta | None = None,
        created_by: str = "",
    ) -> tuple[str, TokenRecord]:
        """A new token: returns its plaintext (shown once, never stored) and its record."""
        token = new_token()
        created = now()
        record = TokenRecord(
            name,
            subject or name,
            grants,
            isotime(created),
            isotime(created + expires_in) if expires_in is not None else None,
            created_by=created_by,
        )
        self.insert(record, token_hash(token))
        return token, record

    def insert(self, record: TokenRecord, sha256: str) -> None:
        values = {
            "name": record.name,
            "sha256": sha256,
            "subject": record.subject,
            "grants": orjson.dumps([g.as_dict() for g in record.grants]).decode(),
            "created_at": record.created_at,
            "expires_at": record.expires_at,
            "last_used_at": None,
            "revoked": False,
            "created_by": record.created_by,
        }
        try:
            with self.store.transaction() as conn:
                conn.execute(insert(tokens).values(values))
        except IntegrityError:
            raise AlreadyExists(f"a token named {record.name!r} already exists (revoke it or pick a name)") from None

    def lookup(self, sha256: str) -> TokenRecord | None:
        with self.store.connect() as conn:
            row = conn.execute(select(tokens).where(tokens.c.sha256 == sha256)).first()
        return _record(row) if row is not None else None

    def get(self, name: str) -> TokenRecord:
        with self.store.connect() as conn:
            row = conn.execute(select(tokens).where(tokens.c.name == name)).first()
        if row is None:
            raise NotFound(f"token {name!r} not found")
        return _record(row)

    def list(self) -> list[TokenRecord]:
        with self.store.connect() as conn:
            return [_record(r) for r in conn.execute(select(tokens).order_by(tokens.c.name))]

    def count(self) -> int:
        with self.store.connect() as conn:
            return len(conn.execute(select(tokens.c.name)).all())

    def revoke(self, name: str) -> TokenRecord:
        with self.store.transaction() as conn:
            done = conn.execute(update(tokens).where(tokens.c.name == name).values(revoked=True))
        if done.rowcount == 0:
            raise NotFound(f"token {name!r} not found")
        return self.get(name)

    def touch(self, name: str, at: datetime) -> None:
        with self.store.transaction() as conn:
            conn.execute(update(tokens).where(tokens.c.name == name).values(last_used_at=isotime(at)))
