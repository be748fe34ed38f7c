"""The host agent's half of the host-channel install path: push an image to a DPU through its boot channel.

For DPUs without a BMC (or whose BMC cannot install), the host the DPU sits in is the way in.
On a BlueField that is rshim: the host's rshim driver shows each DPU as ``/dev/rshim<N>/``;
writing ``SW_RESET 1`` to its ``misc`` resets the DPU, which then boots whatever boot stream
(BFB) is written to its ``boot``, and ``misc`` shows the boot log. This module drives it.

Every `interval` the host agent asks the agent listener (mTLS, its host certificate) for
install orders; it is answered only with orders the control plane addressed to this host
(`GET /agent/v1/install` -> ``{"orders": [...]}``, each naming the DPU by serial). For each:

1. find the DPU's rshim: ``misc`` names the PCI function (``DEV_NAME pcie-<bdf>``), whose VPD
   carries the DPU's serial;
2. download the image from the order's signed URL, resuming with ``Range`` (as the DPU agent
   does, `SlotInstaller._download`), and verify its sha256 -- a mismatch is refused
   (``Failed``, DigestMismatch) and nothing reaches the DPU;
3. reset the DPU through rshim (``SW_RESET 1``) and wait for its boot ROM to take the reset,
   then write the image to ``boot`` (``Writing``) -- ``Staged`` once the stream is closed;
4. read the boot log: ``DPU is ready`` with no error after the push is ``Booted``; an ``ERR``
   line (the image refused: truncated, failed verification) followed by the previous OS
   coming up is ``FellBack``, with the log's reason.

Pushed and finished orders are kept in ``host-install.json`` in the state dir: a restarted
agent watches a pushed DPU's boot instead of pushing again, and never repeats a finished order.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from .installer import CHUNK, INSTALL_PATH, InstallFailed, SlotInstaller, _sha256
from .inventory import parse_vpd

log = logging.getLogger(__name__)
RESET_MARKER = "reset by rshim SW_RESET"
RESET_ACK_SECONDS = 10.0  # how long the DPU may take to show it took the reset
RESET_RETRY_SECONDS = 1.0
_LOG_LINE = re.compile(r"^\s*(INFO|WARN|ERR)\[(\w+)\]: (.*)$")
_DEV_NAME = re.compile(r"^DEV_NAME\s+pcie-(\S+)", re.MULTILINE)
_READY = re.compile(r"DPU is ready: (\S+)")


def boot_log(misc: str) -> list[tuple[str, str, str]]:
    """(level, stage, text) of each log line rshim's misc shows."""
    lines = []
    for line in misc.splitlines():
        match = _LOG_LINE.match(line)
        if match:
            lines.append((match.group(1), match.group(2), match.group(3)))
    return lines


def find_boot_channels(root: Path) -> dict[str, Path]:
    """DPU serial -> its rshim directory, paired through the PCI function's VPD."""
    found: dict[str, Path] = {}
    for misc in sorted(root.glob("dev/rshim*/misc")):
        try:
            match = _DEV_NAME.search(misc.read_text())
        except OSError:
            continue
        if match is None:
            continue
        try:
            vpd = parse_vpd((root / "sys/bus/pci/devices" / match.group(1) / "vpd").read_bytes())
        except OSError:
            continue
        if vpd is not None and vpd.serial_number:
            found[vpd.serial_number] = misc.parent
    return found


def has_boot_channels(root: Path) -> bool:
    return any(root.glob("dev/rshim*/boot"))


class OrderGone(RuntimeError):
    """The control plane refuses reports for this order: it is not (any more) addressed to this host."""


class HostChannelInstaller(SlotInstaller):
    """Pulls this host's DPU install orders and pushes them through each DPU's rshim."""

    def __init__(self, root: Path, state_dir: Path, server: str, http: Callable[[], httpx.AsyncClient]) -> None:
        super().__init__(root, state_dir, server, http)
        self._book_path = state_dir / "host-install.json"
        self._dpu_of: dict[str, str] = {}  # order id -> DPU serial, for progress reports

    async def _post(self, body: dict[str, Any]) -> None:
        order_id = body.get("id")
        if isinstance(order_id, str) and order_id in self._dpu_of:
            body = {**body, "dpu": self._dpu_of[order_id]}
        resp = await self._http().post(self.server + INSTALL_PATH + "/status", json=body)
        if resp.status_code in (403, 404):
            raise OrderGone(f"the server no longer has this order for us: HTTP {resp.status_code} {resp.text[:200]}")
        if resp.status_code >= 400:
            raise RuntimeError(f"the server refused the install status: HTTP {resp.status_code} {resp.text[:200]}")

    async def check(self) -> None:
        await self._watch_pushed()
        resp = await self._http().get(self.server + INSTALL_PATH)
        if resp.status_code >= 400:
            raise RuntimeError(f"reading the install orders failed: HTTP {resp.status_code} {resp.text[:200]}")
        orders = resp.json().get("orders") or []
        book = self._book()
        for order in orders:
            if not isinstance(order, dict):
                continue
            order_id = str(order.get("id"))
            if order_id in book.get("done", []) or order_id in (book.get("pushed") or {}):
                continue
            await self.install(order)

    # --- after a push: the boot log says how it went ---------------------------------------------------

    async def _watch_pushed(self) -> None:
        book = self._book()
        pushed: dict[str, Any] = dict(book.get("pushed") or {})
        for order_id, entry in pushed.items():
            self._dpu_of[order_id] = str(entry["dpu"])
            device = Path(str(entry["device"]))
            try:
                misc = (device / "misc").read_text()
            except OSError as exc:
                log.warning("cannot read the boot log of %s (%s)", device.name, exc)
                continue
            outcome = self._outcome(misc, entry)
            if outcome is None:
                continue
            try:
                await self._post({"id": order_id, **outcome})
            except OrderGone as gone:  # replaced by another path's order, or the DPU left this host
                log.info("boot outcome of %s not reported: %s", order_id, gone)
            book = self._book()
            book["done"] = [*book.get("done", [])[-40:], order_id]
            (book.get("pushed") or {}).pop(order_id, None)
            self._save(book)

    @staticmethod
    def _outcome(misc: str, entry: dict[str, Any]) -> dict[str, Any] | None:
        """The report once the DPU finished booting after the push; None while it boots."""
        lines = boot_log(misc)
        if not any(RESET_MARKER in text for _level, _stage, text in lines):
            return None  # the log is from before our reset (cannot happen once acknowledged, but be safe)
        errors = [f"{stage}: {text}" for level, stage, text in lines if level == "ERR"]
        ready = next((m.group(1) for _l, _s, text in lines if (m := _READY.search(text))), None)
        device = Path(str(entry["device"])).name
        if ready is None and not any("did not come up" in e for e in errors):
            return None
        if not errors and ready == entry.get("version"):
            return {"state": "Booted", "message": f"the DPU booted {ready} pushed through {device}"}
        why = "; ".join(errors) or f"the DPU came up running {ready}, not {entry.get('version')}"
        reason = "BootImageRejected" if errors else "BootedPreviousOS"
        return {
            "state": "FellBack",
            "reason": reason,
            "message": f"{device}: {why}; the DPU runs {ready or 'nothing'}",
        }

    # --- one push ----------------------------------------------------------------------------------------

    async def install(self, order: dict[str, Any]) -> None:
        order_id = str(order["id"])
        sha = str(order["sha256"])
        serial = str(order.get("dpu") or "")
        self._dpu_of[order_id] = serial
        try:
            channels = await asyncio.to_thread(find_boot_channels, self.root)
            device = channels.get(serial)
            if device is None:
                raise InstallFailed(
                    "NoBootChannel",
                    f"this host shows no rshim for DPU {serial} (rshim devices: {len(channels)}); "
                    "is the rshim driver loaded?",
                )
            await self._post({"id": order_id, "state": "Downloading", "bytes": 0})
            part = await self._download(order_id, str(order["url"]), sha)
            size = part.stat().st_size
            await self._post({"id": order_id, "state": "Verifying", "bytes": size, "total": size})
            actual = await asyncio.to_thread(_sha256, part)
            if actual != sha:
                part.unlink(missing_ok=True)
                raise InstallFailed(
                    "DigestMismatch", f"downloaded {size} bytes: sha256 {actual}, the order says {sha}; nothing pushed"
                )
            await self._post(
                {"id": order_id, "state": "Writing", "bytes": 0, "total": size, "message": f"resetting {device.name}"}
            )
            await self._reset(device)
            book = self._book()  # from here on the DPU is touched: a restart must not push again
            book.setdefault("pushed", {})[order_id] = {
                "dpu": serial,
                "device": str(device),
                "version": order.get("version"),
                "at": time.time(),
            }
            self._save(book)
            written = await asyncio.to_thread(self._push, part, device / "boot")
            part.unlink(missing_ok=True)
            await self._post(
                {
                    "id": order_id,
                    "state": "Staged",
                    "bytes": written,
                    "total": size,
                    "message": f"pushed {written} bytes to {device.name}/boot; the DPU is booting it",
                }
            )
        except InstallFailed as exc:
            book = self._book()
            book["done"] = [*book.get("done", [])[-40:], order_id]
            (book.get("pushed") or {}).pop(order_id, None)
            self._save(book)
            await self._post({"id": order_id, "state": "Failed", "reason": exc.reason, "message": exc.message})

    async def _reset(self, device: Path) -> None:
        """SW_RESET 1, written until the DPU's log shows it took it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RESET_ACK_SECONDS
        while loop.time() < deadline:
            await asyncio.to_thread((device / "misc").write_text, "SW_RESET 1\n")
            retry = loop.time() + RESET_RETRY_SECONDS
            while loop.time() < min(retry, deadline):
                with contextlib.suppress(OSError):
                    if any(RESET_MARKER in t for _l, _s, t in boot_log((device / "misc").read_text())):
                        return
                await asyncio.sleep(0.02)
        raise InstallFailed("BootChannelFailed", f"{device.name} did not take SW_RESET within {RESET_ACK_SECONDS:g}s")

    @staticmethod
    def _push(part: Path, boot: Path) -> int:
        """The whole image to the boot device in one stream, under an exclusive lock, closed at the end."""
        written = 0
        with open(boot, "wb") as out, open(part, "rb") as src:
            fcntl.flock(out.fileno(), fcntl.LOCK_EX)
            while chunk := src.read(CHUNK):
                out.write(chunk)
                written += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        return written
