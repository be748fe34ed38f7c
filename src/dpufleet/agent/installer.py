"""The DPU agent's half of the agent install path: pull the order, download, verify, write the inactive slot.

Every `interval` the agent asks the agent listener (mTLS) for its DPU's install order. An order
it has not finished is carried out:

1. download the image from the order's signed URL into the state dir, resuming an interrupted
   transfer with `Range` (the repository answers 206), reporting bytes as it goes;
2. hash it: a digest other than the order's is refused (`Failed`, reason DigestMismatch) and
   the partial file removed, nothing is written to a slot;
3. write it to the inactive slot (atomic rename), its metadata beside it, and mark that slot for
   the next boot (`Staged`);
4. after the next boot, report whether the DPU came up from the new slot (`Booted`) or the
   bootloader fell back to the previous one (`FellBack`, with its reason).

Which orders are done and which slot waits for a boot is kept in `install.json` in the state
dir, so a restarted agent neither repeats nor forgets an install.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from . import slots

log = logging.getLogger(__name__)
INSTALL_PATH = "/agent/v1/install"
CHUNK = 256 * 1024
DOWNLOAD_ATTEMPTS = 5
PROGRESS_EVERY = 0.25  # seconds between progress reports while downloading


class InstallFailed(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class StateBook:
    """A JSON record in the state dir (`_book_path`) that a restarted agent picks up again: what is done,
    what waits for a boot. Missing or unreadable reads as empty; it is replaced atomically (written
    beside it, then renamed), so a crash leaves the old record or the new one."""

    _book_path: Path

    def _book(self) -> dict[str, Any]:
        try:
            value = json.loads(self._book_path.read_text())
            return value if isinstance(value, dict) else {}
        except (OSError, ValueError):
            return {}

    def _save(self, book: dict[str, Any]) -> None:
        self._book_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._book_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(book))
        os.replace(tmp, self._book_path)


class SlotInstaller(StateBook):
    def __init__(self, root: Path, state_dir: Path, server: str, http: Callable[[], httpx.AsyncClient]) -> None:
        self.root = root
        self.state_dir = state_dir
        self.server = server.rstrip("/")
        self._http = http
        self._book_path = state_dir / "install.json"
        self._reported_boot: int | None = None
        self.range_requests = 0  # how many downloads resumed (observability, tests)

    # --- reporting ---------------------------------------------------------------------------------------

    async def _post(self, body: dict[str, Any]) -> None:
        resp = await self._http().post(self.server + INSTALL_PATH + "/status", json=body)
        if resp.status_code >= 400:
            raise RuntimeError(f"the server refused the install status: HTTP {resp.status_code} {resp.text[:200]}")

    # --- the loop ----------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, interval: float) -> None:
        failures = 0
        while not stop.is_set():
            try:
                await self.check()
                failures = 0
            except (httpx.HTTPError, RuntimeError, OSError) as exc:
                failures += 1
                log.warning("install check failed (%s)", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval * min(2**failures, 30))

    async def check(self) -> None:
        await self._after_boot()
        resp = await self._http().get(self.server + INSTALL_PATH)
        if resp.status_code >= 400:
            raise RuntimeError(f"reading the install order failed: HTTP {resp.status_code} {resp.text[:200]}")
        order = resp.json().get("order")
        if not isinstance(order, dict):
            return
        book = self._book()
        if order.get("id") in book.get("done", []) or (book.get("staged") or {}).get("id") == order.get("id"):
            return
        await self.install(order)

    async def _after_boot(self) -> None:
        """Report the slots when a boot happened (and once at start); settle a staged install."""
        summary = await asyncio.to_thread(slots.summary, self.root)
        if summary is None:
            return
        boots = int(summary.get("bootCount") or 0)
        book = self._book()
        staged = book.get("staged") or {}
        body: dict[str, Any] = {"id": None, "slots": summary}
        if staged and boots > int(staged.get("bootCount", 0)):
            slot, last = staged.get("slot"), summary.get("lastBoot") or {}
            if summary.get("active") == slot:
                body.update(
                    id=staged["id"],
                    state="Booted",
                    slot=slot,
                    message=f"slot {slot} runs {summary.get('activeVersion')}",
                )
            else:
                body.update(
                    id=staged["id"],
                    state="FellBack",
                    slot=slot,
                    reason="SlotBootFailed",
                    message=str(last.get("reason") or f"slot {slot} did not boot")
                    + f"; the DPU runs slot {summary.get('active')} ({summary.get('activeVersion')})",
                )
            await self._post(body)
            book["done"] = [*book.get("done", [])[-20:], staged["id"]]
            book.pop("staged", None)
            self._save(book)
            self._reported_boot = boots
            return
        if self._reported_boot != boots:
            await self._post(body)
            self._reported_boot = boots

    # --- one install -------------------------------------------------------------------------------------

    async def install(self, order: dict[str, Any]) -> None:
        order_id = str(order["id"])
        sha = str(order["sha256"])
        try:
            await self._post({"id": order_id, "state": "Downloading", "bytes": 0})
            part = await self._download(order_id, str(order["url"]), sha)
            await self._post(
                {"id": order_id, "state": "Verifying", "bytes": part.stat().st_size, "total": part.stat().st_size}
            )
            actual = await asyncio.to_thread(_sha256, part)
            if actual != sha:
                part.unlink(missing_ok=True)
                raise InstallFailed(
                    "DigestMismatch",
                    f"downloaded {part.stat().st_size if part.exists() else 'the'} image: sha256 {actual}, the order says {sha}",
                )
            state = slots.read_state(self.root) or {"active": "a"}
            slot = slots.other(str(state.get("active", "a")))
            await self._post({"id": order_id, "state": "Writing", "slot": slot})
            size = await asyncio.to_thread(self._write_slot, part, slot, order)
            summary = slots.summary(self.root) or {}
            book = self._book()
            book["staged"] = {"id": order_id, "slot": slot, "bootCount": int(summary.get("bootCount") or 0)}
            self._save(book)
            await self._post(
                {"id": order_id, "state": "Staged", "slot": slot, "bytes": size, "total": size, "slots": summary}
            )
        except InstallFailed as exc:
            book = self._book()
            book["done"] = [*book.get("done", [])[-20:], order_id]
            self._save(book)
            await self._post({"id": order_id, "state": "Failed", "reason": exc.reason, "message": exc.message})

    def _write_slot(self, part: Path, slot: str, order: dict[str, Any]) -> int:
        target = slots.image_path(self.root, slot)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        shutil.copyfile(part, tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        size = target.stat().st_size
        meta = {
            "version": order.get("version"),
            "sha256": order.get("sha256"),
            "size": size,
            "order": order.get("id"),
            "writtenAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        slots.write_slot_meta(self.root, slot, meta)
        state = slots.read_state(self.root) or {"active": slots.other(slot), "bootCount": 0}
        state["next"] = slot
        slots.write_state(self.root, state)
        part.unlink(missing_ok=True)
        return size

    async def _download(self, order_id: str, url: str, sha: str) -> Path:
        part = self.state_dir / "downloads" / f"{sha}.part"
        part.parent.mkdir(parents=True, exist_ok=True)
        last_error = ""
        for _attempt in range(DOWNLOAD_ATTEMPTS):
            have = part.stat().st_size if part.exists() else 0
            headers = {"Range": f"bytes={have}-"} if have else {}
            if have:
                self.range_requests += 1
            try:
                async with httpx.AsyncClient(timeout=30) as http, http.stream("GET", url, headers=headers) as resp:
                    if resp.status_code == 416:
                        return part  # we have it all already
                    if resp.status_code not in (200, 206):
                        raise InstallFailed("DownloadFailed", f"GET {url.split('?')[0]}: HTTP {resp.status_code}")
                    mode = "ab" if resp.status_code == 206 else "wb"
                    done = have if resp.status_code == 206 else 0
                    total = done + int(resp.headers.get("Content-Length") or 0) or None
                    reported = time.monotonic()
                    with open(part, mode) as out:
                        async for chunk in resp.aiter_bytes():  # as received: a dropped transfer keeps what came
                            out.write(chunk)
                            done += len(chunk)
                            if time.monotonic() - reported > PROGRESS_EVERY:
                                reported = time.monotonic()
                                await self._post(
                                    {"id": order_id, "state": "Downloading", "bytes": done, "total": total}
                                )
                    if total is not None and done < total:
                        raise httpx.RemoteProtocolError(f"the transfer ended after {done} of {total} bytes")
                    return part
            except httpx.HTTPError as exc:
                last_error = f"{type(exc).__name__}: {exc}"
                log.info("download of %s interrupted (%s); resuming", sha[:12], last_error)
                await asyncio.sleep(0.2)
        raise InstallFailed(
            "DownloadFailed", f"GET {url.split('?')[0]}: {last_error} (after {DOWNLOAD_ATTEMPTS} attempts)"
        )


def _sha256(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1024 * 1024):
            hasher.update(chunk)
    return hasher.hexdigest()
