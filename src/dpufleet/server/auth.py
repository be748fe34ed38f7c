"""Bearer-token authentication.

On first start the server makes an admin token, writes it to `<data-dir>/admin.token`
with mode 0600 and keeps only its SHA-256. The security baseline adds more tokens,
roles and projects on top of this.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from ..api.errors import Unauthorized

log = logging.getLogger(__name__)

ADMIN_TOKEN_FILE = "admin.token"
TOKEN_HASHES_FILE = "tokens.sha256"


@dataclass(frozen=True)
class Identity:
    name: str
    roles: tuple[str, ...]


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)


class TokenAuthenticator:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._hashes: dict[str, Identity] = {}
        self.admin_token_path = data_dir / ADMIN_TOKEN_FILE
        self._load_or_bootstrap()

    def _load_or_bootstrap(self) -> None:
        hashes = self.data_dir / TOKEN_HASHES_FILE
        if not hashes.exists():
            token = "dpf_" + secrets.token_urlsafe(32)
            _write_private(self.admin_token_path, token + "\n")
            _write_private(hashes, f"{_hash(token)} admin admin\n")
            log.warning("created the bootstrap admin token in %s (mode 0600)", self.admin_token_path)
        for line in hashes.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3:
                self._hashes[parts[0]] = Identity(parts[1], tuple(parts[2].split(",")))
        if self.admin_token_path.exists():
            log.info("admin token: %s", self.admin_token_path)

    def authenticate(self, authorization: str | None) -> Identity:
        if not authorization:
            raise Unauthorized("missing bearer token: pass 'Authorization: Bearer <token>' (see 'dpufleet login')")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("the Authorization header must be 'Bearer <token>'")
        digest = _hash(token.strip())
        for known, identity in self._hashes.items():
            if hmac.compare_digest(known, digest):
                return identity
        raise Unauthorized("invalid or revoked token")
