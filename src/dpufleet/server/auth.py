"""Bearer-token authentication: API tokens (hashed, in the store) and optional OIDC JWTs.

On first start the server makes the bootstrap admin token, writes it to
`<data-dir>/admin.token` with mode 0600 and keeps only its SHA-256 (as the token
`bootstrap-admin`, system-wide admin). A data dir from before tokens lived in the
store (`tokens.sha256`) is imported once, so its admin.token keeps working.

Lookups are cached by hash for a few seconds, so a request costs a dict lookup, not a
query. A revocation here clears the cache at once; other server processes notice
within CACHE_TTL. Expiry is checked on every request.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..api.errors import Unauthorized
from ..api.meta import now
from ..security.identity import Grant, Identity
from ..security.oidc import OIDCVerifier, looks_like_jwt
from ..security.policy import Role
from ..security.tokens import TokenRecord, TokenStore, new_token, token_hash
from ..store.store import Store

log = logging.getLogger(__name__)

ADMIN_TOKEN_FILE = "admin.token"
TOKEN_HASHES_FILE = "tokens.sha256"  # the foundation's format, imported once
BOOTSTRAP_TOKEN = "bootstrap-admin"
CACHE_TTL = 5.0
TOUCH_EVERY = 60.0

__all__ = ["ADMIN_TOKEN_FILE", "Identity", "TokenAuthenticator"]


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)


class TokenAuthenticator:
    def __init__(self, data_dir: Path, store: Store, oidc: OIDCVerifier | None = None) -> None:
        self.data_dir = data_dir
        self.tokens = TokenStore(store)
        self.oidc = oidc
        self.admin_token_path = data_dir / ADMIN_TOKEN_FILE
        self._cache: dict[str, tuple[float, Identity]] = {}
        self._touched: dict[str, float] = {}
        self._lock = threading.Lock()
        self._toucher = ThreadPoolExecutor(1, thread_name_prefix="token-touch")
        self._bootstrap()

    # --- bootstrap ----------------------------------------------------------------------------------------

    def _bootstrap(self) -> None:
        admin = (Grant(Role.ADMIN),)
        legacy = self.data_dir / TOKEN_HASHES_FILE
        if legacy.exists():
            for line in legacy.read_text().splitlines():
                parts = line.split()
                if len(parts) >= 3 and self.tokens.lookup(parts[0]) is None:
                    name = BOOTSTRAP_TOKEN if parts[1] == "admin" else parts[1]
                    grants = tuple(Grant(Role(r)) for r in parts[2].split(",") if r in set(Role))
                    self._import(TokenRecord(name, parts[1], grants, _stamp()), parts[0])
            legacy.unlink()
            log.info("moved the token hashes from %s into the store", legacy)
        if self.tokens.count() == 0:
            if self.admin_token_path.exists():
                token = self.admin_token_path.read_text().strip()
            else:
                token = new_token()
                _write_private(self.admin_token_path, token + "\n")
                log.warning("created the bootstrap admin token in %s (mode 0600)", self.admin_token_path)
            self._import(
                TokenRecord(BOOTSTRAP_TOKEN, "admin", admin, _stamp(), created_by="bootstrap"), token_hash(token)
            )
        if self.admin_token_path.exists():
            os.chmod(self.admin_token_path, 0o600)
            log.info("admin token: %s", self.admin_token_path)

    def _import(self, record: TokenRecord, sha256: str) -> None:
        try:
            self.tokens.insert(record, sha256)
        except Exception as exc:  # another replica imported it first
            log.info("token %s not imported: %s", record.name, exc)

    # --- per request --------------------------------------------------------------------------------------

    def authenticate(self, authorization: str | None) -> Identity:
        if not authorization:
            raise Unauthorized("missing bearer token: pass 'Authorization: Bearer <token>' (see 'dpufleet login')")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("the Authorization header must be 'Bearer <token>'")
        digest = hashlib.sha256(token.encode()).hexdigest()
        clock = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and clock - cached[0] < CACHE_TTL:
            identity = cached[1]
        else:
            identity = self._resolve(token, digest)
            with self._lock:
                if len(self._cache) > 10_000:
                    self._cache.clear()
                self._cache[digest] = (clock, identity)
        if identity.expires_at is not None and now() >= identity.expires_at:
            raise Unauthorized(f"the token {identity.token or identity.name!r} has expired")
        return identity

    def _resolve(self, token: str, digest: str) -> Identity:
        if self.oidc is not None and looks_like_jwt(token):
            return self.oidc.verify(token)
        record = self.tokens.lookup(digest)
        if record is None:
            raise Unauthorized("invalid or revoked token")
        if record.revoked:
            raise Unauthorized(f"the token {record.name!r} has been revoked")
        if record.expired():
            raise Unauthorized(f"the token {record.name!r} has expired")
        clock = time.monotonic()
        if clock - self._touched.get(record.name, -TOUCH_EVERY) >= TOUCH_EVERY:
            self._touched[record.name] = clock
            self._toucher.submit(self._touch, record.name)
        return record.identity("bootstrap" if record.name == BOOTSTRAP_TOKEN else "token")

    def _touch(self, name: str) -> None:
        try:
            self.tokens.touch(name, now())
        except Exception as exc:  # last-used is advisory; never fail a request for it
            log.debug("could not record the use of token %s: %s", name, exc)

    def forget(self, token_name: str) -> None:
        """Drop cached lookups of a token (after a revocation), so this process refuses it at once."""
        with self._lock:
            for digest, (_, identity) in list(self._cache.items()):
                if identity.token == token_name:
                    del self._cache[digest]

    def close(self) -> None:
        self._toucher.shutdown(wait=True)


def _stamp() -> str:
    from ..api.meta import isotime

    return isotime(now())
