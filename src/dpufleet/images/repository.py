"""Content-addressed image storage under the data dir: blobs named by their sha256 digest.

Content is streamed to a temporary file while it is hashed and is only renamed into
place when the digest matches what the Image declares, so a blob's name is always its
true digest at the time it was written. Because disks rot and files get replaced by
hand, content is hashed again whenever it is about to be used (`verify`): an image
whose digest does not match is never handed to a BMC or an installer.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import os
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote, urlsplit

import httpx

DIGEST = re.compile(r"^[0-9a-f]{64}$")
CHUNK = 1024 * 1024
URL_KEY_FILE = "url.key"
DEFAULT_URL_TTL = 3600.0


class ImageContentError(Exception):
    """Content cannot be used; `reason` is what a condition or an HTTP error carries."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class DigestMismatch(ImageContentError):
    def __init__(self, expected: str, actual: str, what: str = "content") -> None:
        super().__init__("DigestMismatch", f"{what}: sha256 is {actual}, but {expected} was declared")
        self.expected = expected
        self.actual = actual


@dataclass(frozen=True)
class Blob:
    sha256: str
    size: int
    path: Path


REVERIFY_SECONDS = 600.0  # a verified blob is hashed again after this long, even if its file looks the same


def _identity(path: Path) -> tuple[int, int, int]:
    """What changes when a file is written anew: inode, size, modification time."""
    st = path.stat()
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def check_digest(value: str) -> str:
    value = value.lower().removeprefix("sha256:")
    if not DIGEST.match(value):
        raise ImageContentError("BadDigest", f"{value!r} is not a sha256 digest (64 lower-case hex digits)")
    return value


class ImageRepository:
    """Blobs under `root/blobs/sha256/<2 hex>/<digest>`; download URLs signed with a key in `root`.

    `public_url` is the API server's address as BMCs and installers reach it (they fetch
    images from the API port); `allow_private_mirrors` permits mirroring from loopback and
    private addresses (tests, labs) — off by default so a URL in an Image cannot make the
    server fetch from its own network (SSRF).
    """

    def __init__(
        self,
        root: Path,
        public_url: str | None = None,
        *,
        url_ttl: float = DEFAULT_URL_TTL,
        allow_private_mirrors: bool = False,
    ) -> None:
        self.root = root
        self.public_url = public_url or os.environ.get("DPUFLEET_PUBLIC_URL") or None
        self.url_ttl = url_ttl
        self.allow_private_mirrors = allow_private_mirrors
        (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (root / "tmp").mkdir(parents=True, exist_ok=True)
        # Blobs hashed lately, by digest: the file's identity (inode, size, mtime) when it matched and when.
        # A rollout stages one image on a thousand DPUs; hashing a multi-gigabyte image for each of them
        # was the same answer a thousand times (issue 15). A changed file, or REVERIFY_SECONDS, hashes again.
        self._verified: dict[str, tuple[tuple[int, int, int], float]] = {}
        self._verifying: dict[str, asyncio.Task[Blob]] = {}
        self._key = self._load_key()

    # --- content ---------------------------------------------------------------------------------------

    def path(self, digest: str) -> Path:
        digest = check_digest(digest)
        return self.root / "blobs" / "sha256" / digest[:2] / digest

    def stat(self, digest: str) -> Blob | None:
        path = self.path(digest)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return None
        return Blob(digest, size, path)

    async def put(self, chunks: AsyncIterator[bytes], expected: str, *, max_size: int | None = None) -> Blob:
        """Store streamed content if its sha256 is `expected`; otherwise keep nothing and raise."""
        expected = check_digest(expected)
        tmp = self.root / "tmp" / f"{expected}.{secrets.token_hex(6)}"
        hasher = hashlib.sha256()
        size = 0
        try:
            with open(tmp, "wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if max_size is not None and size > max_size:
                        raise ImageContentError("TooLarge", f"content exceeds the limit of {max_size} bytes")
                    hasher.update(chunk)
                    await asyncio.to_thread(out.write, chunk)
                await asyncio.to_thread(_flush, out)
            actual = hasher.hexdigest()
            if actual != expected:
                raise DigestMismatch(expected, actual)
            final = self.path(expected)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        return Blob(expected, size, final)

    def put_bytes_sync(self, data: bytes, expected: str) -> Blob:
        """For tests and small content; large content goes through `put`."""

        async def one() -> AsyncIterator[bytes]:
            yield data

        return asyncio.run(self.put(one(), expected))

    def verify_sync(self, digest: str) -> Blob:
        """Hash the stored content again; raise unless it is present and matches its name."""
        digest = check_digest(digest)
        blob = self.stat(digest)
        if blob is None:
            raise ImageContentError("ContentMissing", f"no content with sha256 {digest} in the repository")
        hasher = hashlib.sha256()
        with open(blob.path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                hasher.update(chunk)
        actual = hasher.hexdigest()
        if actual != digest:
            raise DigestMismatch(digest, actual, f"stored blob {blob.path.name}")
        return blob

    async def verify(self, digest: str) -> Blob:
        """`verify_sync` in a thread, at most once at a time per blob, and not again while the file is
        the one that matched within REVERIFY_SECONDS (a blob written anew, or bit rot that changes its
        size or time, is hashed again at once)."""
        digest = check_digest(digest)
        path = self.path(digest)
        seen = self._verified.get(digest)
        if seen is not None:
            try:
                same = seen[0] == _identity(path) and time.monotonic() - seen[1] < REVERIFY_SECONDS
            except FileNotFoundError:
                same = False
            if same:
                return Blob(digest, seen[0][1], path)
            self._verified.pop(digest, None)
        task = self._verifying.get(digest)
        if task is None:
            task = self._verifying[digest] = asyncio.ensure_future(asyncio.to_thread(self._verify_and_note, digest))
            task.add_done_callback(lambda _: self._verifying.pop(digest, None))
        return await asyncio.shield(task)

    def _verify_and_note(self, digest: str) -> Blob:
        identity = _identity(self.path(digest)) if self.path(digest).exists() else None
        blob = self.verify_sync(digest)
        if identity is not None and identity == _identity(blob.path):  # unchanged while it was hashed
            self._verified[digest] = (identity, time.monotonic())
        return blob

    async def mirror(self, url: str, expected: str, *, timeout: float = 30.0) -> Blob:
        """Copy an external URL into the repository, keeping it only if its digest matches."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ImageContentError("BadURL", f"{url!r}: only http:// and https:// URLs can be mirrored")
        if not self.allow_private_mirrors and _is_private(parts.hostname):
            raise ImageContentError(
                "BadURL", f"{url!r}: mirroring from loopback or private addresses is disabled on this server"
            )
        try:
            async with (
                httpx.AsyncClient(timeout=timeout, follow_redirects=False) as http,
                http.stream("GET", url) as resp,
            ):
                if resp.status_code != 200:
                    raise ImageContentError("DownloadFailed", f"GET {url}: HTTP {resp.status_code}")
                return await self.put(resp.aiter_bytes(CHUNK), expected)
        except httpx.HTTPError as exc:
            raise ImageContentError("DownloadFailed", f"GET {url}: {type(exc).__name__}: {exc}") from None

    # --- signed download URLs --------------------------------------------------------------------------

    def _load_key(self) -> bytes:
        path = self.root / URL_KEY_FILE
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))
        return bytes.fromhex(path.read_text().strip())

    def _signature(self, digest: str, filename: str, expires: int) -> str:
        message = f"{digest}\n{filename}\n{expires}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def signed_path(self, digest: str, filename: str, ttl: float | None = None) -> str:
        """A path (with query) that lets whoever holds it download this blob until it expires.

        BMCs cannot send our bearer tokens; a short-lived HMAC over (digest, file name,
        expiry) in the query is their credential, scoped to one blob.
        """
        digest = check_digest(digest)
        expires = int(time.time() + (self.url_ttl if ttl is None else ttl))
        sig = self._signature(digest, filename, expires)
        return f"/images/v1/blobs/sha256/{digest}/{quote(filename)}?expires={expires}&sig={sig}"

    def signed_url(self, digest: str, filename: str, ttl: float | None = None) -> str:
        if not self.public_url:
            raise ImageContentError(
                "NoPublicURL",
                "the server does not know the URL BMCs reach it at: set DPUFLEET_PUBLIC_URL (e.g. https://10.0.0.5:8740)",
            )
        return self.public_url.rstrip("/") + self.signed_path(digest, filename, ttl)

    def check_signature(self, digest: str, filename: str, expires: str | None, sig: str | None) -> bool:
        if not expires or not sig or not expires.isdigit() or int(expires) < time.time():
            return False
        return hmac.compare_digest(self._signature(digest, filename, int(expires)), sig)


def _flush(out: BinaryIO) -> None:
    out.flush()
    os.fsync(out.fileno())


def _is_private(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False  # a name: resolved by the client; operators restrict egress by network policy
    return addr.is_loopback or addr.is_private or addr.is_link_local


def advertise_repository(repository: ImageRepository | None, host: str, port: int) -> None:
    """Where BMCs fetch images when DPUFLEET_PUBLIC_URL is not set: the API's own listen address."""
    if repository is not None and not repository.public_url and host not in ("0.0.0.0", "::", ""):
        repository.public_url = f"http://{host}:{port}"
