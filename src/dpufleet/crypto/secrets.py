"""Secrets at rest: encrypted with a key kept in the data dir (0600), never in documents.

Fernet (AES-128-CBC + HMAC-SHA256, from `cryptography`) gives authenticated
encryption with key rotation support; we do not invent a format.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

KEY_FILE = "secrets.key"


class SecretError(Exception):
    pass


class SecretBox:
    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)
        self._key = key
        self._derived: dict[str, bytes] = {}  # purpose -> key (every pushed BMC event derives one)

    def derive(self, purpose: str) -> bytes:
        """A key for one purpose (say, authenticating pushed events), derived from this key: HMAC-SHA256."""
        found = self._derived.get(purpose)
        if found is None:
            found = self._derived[purpose] = hmac.new(self._key, purpose.encode(), hashlib.sha256).digest()
        return found

    @classmethod
    def load_or_create(cls, data_dir: Path) -> SecretBox:
        path = data_dir / KEY_FILE
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(Fernet.generate_key())
        os.chmod(path, 0o600)
        return cls(path.read_bytes().strip())

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise SecretError(
                "a stored secret cannot be decrypted with this server's key (secrets.key changed?)"
            ) from None

    def __repr__(self) -> str:
        return "SecretBox(<key redacted>)"
