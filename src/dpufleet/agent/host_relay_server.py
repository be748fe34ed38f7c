"""The host relay's server: the host agent's half of agent/host_relay.py (what it serves, and why the host is
not trusted with it, is said there). Only a host agent started with ``--relay-listen`` imports this module, so
a DPU's agent never loads aiohttp."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from aiohttp import web

from .host_relay import (
    CHUNK,
    DEFAULT_CACHE_BYTES,
    DEFAULT_STORE_BYTES,
    MAX_BATCH_BYTES,
    NAME_RE,
    RELAY_PATH,
    SERIAL_RE,
    SHA256_RE,
)

log = logging.getLogger(__name__)


def _refuse(status: int, reason: str, message: str) -> web.Response:
    return web.json_response({"reason": reason, "message": message}, status=status)


class HostRelay:
    """The host agent's relay server (aiohttp, on the agent's own event loop)."""

    def __init__(
        self,
        state_dir: Path,
        origins: Iterable[str],
        store_bytes: int = DEFAULT_STORE_BYTES,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        if store_bytes <= 0 or cache_bytes <= 0:
            raise ValueError(f"host relay: the store and cache caps must be positive, not {store_bytes}/{cache_bytes}")
        self.root = state_dir / "relay"
        self.origins = frozenset(o.lower() for o in origins)
        self.store_bytes = store_bytes
        self.cache_bytes = cache_bytes
        self.dpus: frozenset[str] = frozenset()  # the serials of the DPUs this host carries (its inventory)
        self._fetches: dict[str, asyncio.Lock] = {}
        self._store_locks: dict[str, asyncio.Lock] = {}
        self._store_bytes: dict[str, int] = {}  # per DPU: what its store holds (read from disk at its first PUT)
        self._runner: web.AppRunner | None = None
        self._upstream: httpx.AsyncClient | None = None
        self.port: int | None = None
        self.fetched = 0  # artifacts downloaded (a cached one served again is not counted)

    # --- serving -----------------------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> int:
        app = web.Application(client_max_size=MAX_BATCH_BYTES + 1)
        app.router.add_get(RELAY_PATH + "/artifacts/{sha256}", self._artifact)
        app.router.add_get(RELAY_PATH + "/store/{serial}", self._list)
        app.router.add_put(RELAY_PATH + "/store/{serial}/{name}", self._put)
        app.router.add_get(RELAY_PATH + "/store/{serial}/{name}", self._get)
        app.router.add_delete(RELAY_PATH + "/store/{serial}/{name}", self._delete)
        self._upstream = httpx.AsyncClient(timeout=60, follow_redirects=False)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        log.info("host relay for this host's DPUs at http://%s:%d%s", host, self.port, RELAY_PATH)
        return self.port

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        upstream, self._upstream = self._upstream, None
        if upstream is not None:
            await upstream.aclose()

    # --- artifacts ---------------------------------------------------------------------------------------

    async def _artifact(self, request: web.Request) -> web.StreamResponse:
        sha = request.match_info["sha256"]
        url = request.query.get("url", "")
        if not SHA256_RE.match(sha):
            return _refuse(400, "Invalid", f"sha256: {sha[:80]!r} is not 64 lowercase hex digits")
        cached = self.root / "artifacts" / sha
        if not cached.exists():
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                return _refuse(400, "Invalid", f"url: {url[:200]!r} is not an http(s) URL")
            if parts.hostname.lower() not in self.origins:
                return _refuse(
                    403,
                    "OriginRefused",
                    f"url: this relay fetches only from {', '.join(sorted(self.origins)) or 'nowhere'} "
                    f"(--relay-origin), not {parts.hostname}",
                )
            lock = self._fetches.setdefault(sha, asyncio.Lock())
            async with lock:
                if not cached.exists():
                    try:
                        await self._fetch(url, sha, cached)
                    except ValueError as exc:
                        return _refuse(502, "FetchFailed", str(exc))
        with contextlib.suppress(OSError):
            os.utime(cached)  # the cache evicts the least recently served first
        return web.FileResponse(cached, headers={"Content-Type": "application/octet-stream"})

    async def _fetch(self, url: str, sha: str, cached: Path) -> None:
        assert self._upstream is not None
        cached.parent.mkdir(parents=True, exist_ok=True)
        part = cached.with_name(sha + ".part")
        digest = hashlib.sha256()
        bare = url.partition("?")[0]
        try:
            async with self._upstream.stream("GET", url) as resp:
                if resp.status_code >= 300:
                    raise ValueError(f"the relay's download of {bare} failed: HTTP {resp.status_code}")
                with part.open("wb") as out:
                    async for chunk in resp.aiter_bytes(CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
        except httpx.HTTPError as exc:
            part.unlink(missing_ok=True)
            raise ValueError(f"the relay's download of {bare} failed: {exc or type(exc).__name__}") from None
        if digest.hexdigest() != sha:
            part.unlink(missing_ok=True)
            raise ValueError(f"{bare} has sha256 {digest.hexdigest()}, not the {sha} asked for: not kept")
        part.replace(cached)
        self.fetched += 1
        log.info("host relay: fetched sha256:%s... (%d bytes) for this host's DPUs", sha[:16], cached.stat().st_size)
        self._evict(keep=cached)

    def _evict(self, keep: Path) -> None:
        entries = []
        for path in (self.root / "artifacts").iterdir():
            with contextlib.suppress(OSError):
                if not path.name.endswith(".part"):
                    entries.append((path.stat().st_mtime, path.stat().st_size, path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.cache_bytes:
                break
            if path != keep:
                path.unlink(missing_ok=True)
                total -= size

    # --- the DPUs' store ---------------------------------------------------------------------------------

    def _dpu_dir(self, request: web.Request) -> Path | web.Response:
        serial = request.match_info["serial"]
        if not SERIAL_RE.match(serial):
            return _refuse(400, "Invalid", f"serial: {serial[:80]!r} is not a DPU serial number")
        if serial.upper() not in {d.upper() for d in self.dpus}:  # (a serial's case is not its identity)
            # not 404: a DPU must not take this for "the batch is gone" (its inventory may be a moment behind)
            return _refuse(403, "NotCarried", f"serial: this host carries no DPU {serial} (its inventory)")
        name = request.match_info.get("name")
        if name is not None and not NAME_RE.match(name):
            return _refuse(400, "Invalid", f"name: {name[:80]!r} is not <seq>.<class>.<samples>")
        return self.root / "store" / serial.upper()

    @staticmethod
    def _used(directory: Path) -> int:
        total = 0
        with contextlib.suppress(FileNotFoundError):
            for path in directory.iterdir():
                with contextlib.suppress(OSError):
                    total += path.stat().st_size
        return total

    async def _list(self, request: web.Request) -> web.Response:
        directory = self._dpu_dir(request)
        if isinstance(directory, web.Response):
            return directory
        items: list[tuple[str, int]] = []
        with contextlib.suppress(FileNotFoundError):
            for path in sorted(directory.iterdir()):
                if NAME_RE.match(path.name):
                    items.append((path.name, path.stat().st_size))
        return web.json_response(
            {
                "items": [{"name": name, "bytes": size} for name, size in items],
                "bytes": sum(size for _, size in items),
                "capBytes": self.store_bytes,
            }
        )

    async def _put(self, request: web.Request) -> web.Response:
        directory = self._dpu_dir(request)
        if isinstance(directory, web.Response):
            return directory
        data = await request.read()
        serial = directory.name
        async with self._store_locks.setdefault(serial, asyncio.Lock()):
            path = directory / request.match_info["name"]
            if serial not in self._store_bytes:  # counted from the disk once, then kept up to date
                self._store_bytes[serial] = self._used(directory)
            before = path.stat().st_size if path.exists() else 0
            used = self._store_bytes[serial] - before
            if used + len(data) > self.store_bytes:
                return _refuse(
                    507,
                    "StoreFull",
                    f"this host keeps at most {self.store_bytes} bytes for DPU {serial} (--relay-store-mib); "
                    f"{used} are in use and this batch is {len(data)}",
                )
            directory.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name("." + path.name + ".tmp")
            await asyncio.to_thread(_write_synced, tmp, data)
            tmp.replace(path)
            self._store_bytes[serial] = used + len(data)
        return web.json_response({"name": path.name, "bytes": len(data)}, status=201)

    async def _get(self, request: web.Request) -> web.StreamResponse:
        directory = self._dpu_dir(request)
        if isinstance(directory, web.Response):
            return directory
        path = directory / request.match_info["name"]
        if not path.exists():
            return _refuse(404, "NotFound", f"name: this host keeps no {path.name} for DPU {directory.name}")
        return web.FileResponse(path, headers={"Content-Type": "application/octet-stream"})

    async def _delete(self, request: web.Request) -> web.Response:
        directory = self._dpu_dir(request)
        if isinstance(directory, web.Response):
            return directory
        async with self._store_locks.setdefault(directory.name, asyncio.Lock()):
            path = directory / request.match_info["name"]
            with contextlib.suppress(FileNotFoundError):
                size = path.stat().st_size
                path.unlink()
                if directory.name in self._store_bytes:
                    self._store_bytes[directory.name] -= size
        return web.Response(status=204)


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
