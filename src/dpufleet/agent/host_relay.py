"""The host relay: what the host agent does for the DPUs its host carries, over the host<->DPU link.

A DPU and its host share a link of their own (on a BlueField, rshim's tmfifo network device; on other
cards, the PCIe function the card's management interface sits on). The host agent serves two things on it
(``dpufleet agent --role host --relay-listen HOST:PORT``; a DPU agent is told ``--host-relay URL``):

* **artifacts** -- ``GET /relay/v1/artifacts/<sha256>?url=<the artifact's URL>``: a DPU with no route to
  the control plane's repository gets a service's artifact through its host. The host fetches it (only from
  the hosts it is told, ``--relay-origin``; the control plane's by default), checks its sha256 and keeps it by
  digest (several DPUs of one host fetch it once); the DPU checks the digest and the signature again.
* **a store** -- ``PUT|GET|DELETE /relay/v1/store/<dpu serial>/<name>``, ``GET /relay/v1/store/<serial>``:
  a DPU cut off from the fleet bus keeps its telemetry batches on the host's disk instead of trimming its
  own small buffer. Each DPU has its own byte cap on the host (``--relay-store-bytes``); a batch that does
  not fit is refused (507) and stays on the DPU, where the spool's policy applies.

The host is not trusted with what it keeps (in a bare-metal cloud the host is the tenant's): every batch is
sealed on the DPU with AES-256-GCM under a key that never leaves it, its name bound in as associated data, so
the host can neither read nor alter nor swap a batch -- it can only lose it, and the DPU counts what it
loses (`Sealer`, and agent/telemetry/collector.py). An artifact is content-addressed and signed: a relay that
changed one would be refused by the DPU's own checks (agent/services.py).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

log = logging.getLogger(__name__)
# The server half (the host agent's) is agent/host_relay_server.py: it loads aiohttp, which a DPU's agent never does.
RELAY_PATH = "/relay/v1"
DEFAULT_STORE_BYTES = 256 * 1024 * 1024  # per DPU
DEFAULT_CACHE_BYTES = 4 * 1024 * 1024 * 1024  # artifacts, for all the host's DPUs
MAX_BATCH_BYTES = 16 * 1024 * 1024
NAME_RE = re.compile(r"^[0-9]{1,20}\.[a-z]{1,16}\.[0-9]{1,9}$")  # <seq>.<class>.<samples>, as the spool names them
SERIAL_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
CHUNK = 1 << 16
NONCE = 12


# --- the DPU's side --------------------------------------------------------------------------------------


def relay_artifact_url(relay: str, sha256: str, url: str) -> str:
    """Where a DPU asks its host relay for the artifact of that digest at that URL."""
    return str(httpx.URL(f"{relay.rstrip('/')}{RELAY_PATH}/artifacts/{sha256}", params={"url": url}))


class RelayUnavailable(RuntimeError):
    """The host relay could not be reached, or refused in a way that is not about the request."""


class Sealer:
    """AES-256-GCM under a key kept on the DPU (created 0600 at first use): the host sees only ciphertext."""

    def __init__(self, key_path: Path) -> None:
        if not key_path.exists():
            key_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(key_path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(AESGCM.generate_key(bit_length=256))
                out.flush()
                os.fsync(out.fileno())
            key_path.with_suffix(".tmp").replace(key_path)
        self._aead = AESGCM(key_path.read_bytes())

    def seal(self, name: str, data: bytes) -> bytes:
        nonce = os.urandom(NONCE)
        return nonce + self._aead.encrypt(nonce, data, name.encode())

    def open(self, name: str, blob: bytes) -> bytes:
        """The batch sealed under ``name``; ValueError if it was altered, swapped or is not ours."""
        try:
            return self._aead.decrypt(blob[:NONCE], blob[NONCE:], name.encode())
        except (InvalidTag, ValueError):
            raise ValueError(f"{name}: the host's copy does not open under this DPU's key") from None


class RelayClient:
    """A DPU agent's client of its host's relay (``--host-relay URL``)."""

    def __init__(self, url: str, serial: str, timeout: float = 10.0) -> None:
        self.check_url(url)
        self.url = url.rstrip("/")
        self.serial = serial
        self._http = httpx.AsyncClient(timeout=timeout)

    @staticmethod
    def check_url(url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"--host-relay {url!r}: expected http://HOST:PORT")

    def _store(self, name: str = "") -> str:
        return f"{self.url}{RELAY_PATH}/store/{self.serial}" + (f"/{name}" if name else "")

    async def _call(self, method: str, url: str, content: bytes | None = None) -> httpx.Response:
        try:
            resp = await self._http.request(method, url, content=content)
        except httpx.HTTPError as exc:
            raise RelayUnavailable(f"the host relay at {self.url}: {exc or type(exc).__name__}") from None
        if (resp.status_code >= 500 and resp.status_code != 507) or resp.status_code == 403:
            # 403: the host does not (yet) list this DPU among its own: nothing it keeps is known lost
            raise RelayUnavailable(f"the host relay at {self.url}: HTTP {resp.status_code} {resp.text[:200]}")
        return resp

    async def put(self, name: str, blob: bytes) -> bool:
        """Kept on the host (True), or refused as over this DPU's cap there (False)."""
        resp = await self._call("PUT", self._store(name), blob)
        if resp.status_code == 507:
            return False
        if resp.status_code >= 300:
            raise RelayUnavailable(f"the host relay refused {name}: HTTP {resp.status_code} {resp.text[:200]}")
        return True

    async def get(self, name: str) -> bytes | None:
        """The blob, or None when the host no longer has it."""
        resp = await self._call("GET", self._store(name))
        if resp.status_code == 404:
            return None
        if resp.status_code >= 300:
            raise RelayUnavailable(f"the host relay refused {name}: HTTP {resp.status_code} {resp.text[:200]}")
        return resp.content

    async def delete(self, name: str) -> None:
        await self._call("DELETE", self._store(name))

    async def names(self) -> list[str]:
        resp = await self._call("GET", self._store())
        if resp.status_code >= 300:
            raise RelayUnavailable(f"the host relay refused the listing: HTTP {resp.status_code} {resp.text[:200]}")
        return [str(i["name"]) for i in resp.json().get("items") or []]

    async def aclose(self) -> None:
        await self._http.aclose()
