"""Zero-touch bootstrap on the DPU (the ideas of sZTP, RFC 8572): from no configuration to an enrolled agent.

A DPU that boots unconfigured finds, in its DHCP lease, the bootstrap URL and the key id of the
control plane's onboarding key (``option sztp-redirect-urls``, ``option dpufleet-onboarding-key``).
Then, resumably (each step is recorded in ``bootstrap.json`` in the state dir):

1. ask ``<url>/onboarding`` for its onboarding information, signing the request with its IDevID
   key; verify the answer before using any of it (crypto/onboarding.py: the pinned key, the
   signature, its own serial, expiry). A refusal is reported to ``<url>/progress`` (stage
   ``Refused`` with the reason) and the device asks again later -- it never uses the document;
2. install the image through the agent path's slot writer (agent/installer.py): download with
   Range resume, verify the sha256, write the inactive A/B slot and mark it for the next boot;
3. reboot into it and check the bootloader took the new slot;
4. hand the agent the enrollment token, the agent listener's URL and the fleet CA's hash: the
   agent enrolls with the token, and reports ``Complete`` with the version it runs.

Every stage is reported to the bootstrap progress endpoint, signed with the IDevID key (the
device has no fleet certificate yet).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from ..crypto.onboarding import DeviceRequest, OnboardingInfo, OnboardingRefused, verify_onboarding
from ..crypto.pki import sign_proof
from . import slots
from .credentials import EnrollmentOptions
from .installer import SlotInstaller, StateBook

log = logging.getLogger(__name__)
LEASE_FILE = Path("var/lib/dhcp/dhclient.sztp.leases")
_OPTION = re.compile(r'option\s+([a-z0-9-]+)\s+"([^"]*)"\s*;')
BOOT_WAIT_SECONDS = 600.0  # how long a reboot may take before the device gives up on it and starts over


@dataclass(frozen=True)
class BootstrapOption:
    url: str
    keyid: str


def read_option(root: Path) -> BootstrapOption | None:
    """The bootstrap URL and the onboarding key id from the DHCP lease, if the DHCP server gave them."""
    try:
        text = (root / LEASE_FILE).read_text()
    except OSError:
        return None
    options = dict(_OPTION.findall(text))
    url, keyid = options.get("sztp-redirect-urls"), options.get("dpufleet-onboarding-key")
    if not url or not keyid:
        return None
    return BootstrapOption(url.split()[0].rstrip("/"), keyid)


def write_lease(root: Path, url: str, keyid: str) -> None:
    """What a DHCP client leaves behind when the server sends the bootstrap options (the emulator's DHCP)."""
    path = root / LEASE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f'lease {{\n  option sztp-redirect-urls "{url}";\n  option dpufleet-onboarding-key "{keyid}";\n}}\n'
    )


def signed_request(serial: str, purpose: str, idevid_cert: Path, idevid_key: Path, **fields: Any) -> dict[str, Any]:
    """A bootstrap request signed with the device's IDevID key."""
    request = DeviceRequest(serial=serial, purpose=purpose, at=dt.datetime.now(dt.UTC), **fields)
    key = serialization.load_pem_private_key(idevid_key.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise RuntimeError(f"{idevid_key}: the IDevID key must be EC or Ed25519")
    proof = {"certificate": idevid_cert.read_text(), "signature": sign_proof(key, request.canonical())}
    return {"request": request.model_dump(mode="json"), "idevid": proof}


class BootstrapFailed(Exception):
    def __init__(self, stage: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage
        self.reason = reason
        self.message = message


class _BootstrapSlots(SlotInstaller):
    """The agent path's slot writer, reporting to the bootstrap progress endpoint (no fleet certificate yet)."""

    def __init__(self, zero_touch: ZeroTouch) -> None:
        super().__init__(zero_touch.root, zero_touch.state_dir, "", lambda: httpx.AsyncClient())
        self.zero_touch = zero_touch

    async def _post(self, body: dict[str, Any]) -> None:
        state = str(body.get("state") or "Progress")
        detail = str(body.get("message") or "")
        if not detail and body.get("total"):
            detail = f"{body.get('bytes')} of {body.get('total')} bytes"
        if body.get("slot") and state in ("Writing", "Staged"):
            detail = f"slot {body['slot']}" + (f": {detail}" if detail else "")
        await self.zero_touch.report(state, body.get("reason"), str(detail or state))


class ZeroTouch(StateBook):
    def __init__(
        self,
        root: Path,
        state_dir: Path,
        serial: str,
        idevid_cert: Path,
        idevid_key: Path,
        reboot: Callable[[], Awaitable[None]],
        alive: Callable[[], bool] = lambda: True,
    ) -> None:
        self.root = root
        self.state_dir = state_dir
        self.serial = serial
        self.idevid_cert = idevid_cert
        self.idevid_key = idevid_key
        self.reboot = reboot
        self.alive = alive  # whether this OS runs: always, for a real agent; the emulator's machine may be down
        self._book_path = state_dir / "bootstrap.json"
        self.refusals: list[str] = []  # why onboarding documents were refused, newest last

    # --- bookkeeping (StateBook: bootstrap.json) ----------------------------------------------------------

    def complete(self) -> bool:
        return self._book().get("stage") == "Complete"

    def mark_complete(self) -> None:
        self._save({**self._book(), "stage": "Complete"})

    # --- talking to the bootstrap server -----------------------------------------------------------------

    def _option(self) -> BootstrapOption:
        option = read_option(self.root)
        if option is None:
            raise RuntimeError(f"no bootstrap URL in {LEASE_FILE} (the DHCP server sent no sztp-redirect-urls)")
        return option

    def _part_number(self) -> str | None:
        with contextlib.suppress(OSError):
            return (self.root / "sys/class/dmi/id/product_sku").read_text().strip() or None
        return None

    async def _send(self, path: str, purpose: str, **fields: Any) -> httpx.Response:
        option = self._option()
        body = await asyncio.to_thread(
            signed_request, self.serial, purpose, self.idevid_cert, self.idevid_key, **fields
        )
        if purpose == "onboarding":
            body["partNumber"] = self._part_number()
        async with httpx.AsyncClient(timeout=30) as http:
            return await http.post(option.url + path, json=body)

    async def report(self, stage: str, reason: str | None, message: str, version: str | None = None) -> None:
        fields = {"stage": stage, "reason": reason, "message": message[:2000], "version": version}
        resp = await self._send("/progress", "progress", **{k: v for k, v in fields.items() if v is not None})
        if resp.status_code >= 400:
            raise RuntimeError(f"the bootstrap server refused the progress report: HTTP {resp.status_code}")

    # --- the steps ---------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, delay: Callable[[int], float]) -> tuple[str, EnrollmentOptions] | None:
        """Bootstrap until the agent can enroll: (agent listener URL, enrollment options); None if stopped."""
        failures = 0
        while not stop.is_set():
            try:
                return await self.step()
            except BootstrapFailed as exc:
                log.warning("zero-touch bootstrap: %s: %s", exc.reason, exc.message)
                with contextlib.suppress(httpx.HTTPError, RuntimeError, OSError):
                    await self.report(exc.stage, exc.reason, exc.message)
            except (httpx.HTTPError, RuntimeError, OSError) as exc:
                log.warning("zero-touch bootstrap: %s", exc)
            failures += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay(failures))
        return None

    async def step(self) -> tuple[str, EnrollmentOptions]:
        book = self._book()
        if "onboarding" not in book:
            info = await self._fetch()
            book = {"onboarding": info.model_dump(mode="json"), "stage": "Verified"}
            self._save(book)
            await self.report("Verified", None, f"signed onboarding information verified: image {info.image.version}")
        info = OnboardingInfo.model_validate(book["onboarding"])
        if book.get("stage") != "Installed":
            await self._install(info)
            book = {**self._book(), "stage": "Installed"}
            self._save(book)
        enrollment = info.enrollment
        return enrollment.agentURL, EnrollmentOptions(token=enrollment.token, ca_sha256=enrollment.caSha256)

    async def _fetch(self) -> OnboardingInfo:
        option = self._option()
        resp = await self._send("/onboarding", "onboarding")
        if resp.status_code in (403, 404):
            message = _message(resp)
            raise RuntimeError(f"no onboarding information (HTTP {resp.status_code}): {message}")
        if resp.status_code >= 400:
            raise RuntimeError(f"the bootstrap server answered HTTP {resp.status_code}")
        try:
            return verify_onboarding(resp.content, option.keyid, self.serial)
        except OnboardingRefused as refused:
            self.refusals.append(f"{refused.reason}: {refused.message}")
            raise BootstrapFailed(
                "Refused", str(refused.reason), f"onboarding information refused: {refused.message}"
            ) from None

    async def _install(self, info: OnboardingInfo) -> None:
        image = info.image
        summary = await asyncio.to_thread(slots.summary, self.root)
        if summary is None:
            raise BootstrapFailed("Failed", "NoSlots", "this DPU's OS has no A/B slots to install into")
        if summary.get("activeVersion") == image.version:
            return  # already runs it (a restart after the boot)
        writer = _BootstrapSlots(self)
        order_id = f"ztp-{image.sha256[:12]}"
        staged = writer._book().get("staged") or {}
        if staged.get("id") != order_id:
            order = {
                "id": order_id,
                "target": image.target,
                "version": image.version,
                "sha256": image.sha256,
                "fileName": image.fileName,
                "url": image.url,
            }
            await writer.install(order)
            staged = writer._book().get("staged") or {}
            if staged.get("id") != order_id:
                self._forget(writer, order_id, failed=True)
                raise BootstrapFailed("Failed", "InstallFailed", f"installing {image.version} failed (see its report)")
        await self.report("Rebooting", None, f"slot {staged.get('slot')} holds {image.version}: rebooting into it")
        await self.reboot()
        await self._wait_boot(int(staged.get("bootCount", 0)))
        after = await asyncio.to_thread(slots.summary, self.root) or {}
        booted = after.get("active") == staged.get("slot")
        self._forget(writer, order_id, failed=not booted)
        if not booted:
            reason = str((after.get("lastBoot") or {}).get("reason") or "the new slot did not boot")
            raise BootstrapFailed("Failed", "SlotBootFailed", reason)
        await self.report("Booted", None, f"slot {staged.get('slot')} runs {after.get('activeVersion')}")

    def _forget(self, writer: SlotInstaller, order_id: str, *, failed: bool) -> None:
        """The slot writer's record of this order is settled here, not by the agent's install loop; after a
        failure the document is dropped too, so the next attempt starts afresh with a newly fetched one."""
        book = writer._book()
        book.pop("staged", None)
        book["done"] = [d for d in book.get("done", []) if d != order_id]
        writer._save(book)
        if failed:
            mine = self._book()
            mine.pop("onboarding", None)
            mine.pop("stage", None)
            self._save(mine)

    async def _wait_boot(self, before: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BOOT_WAIT_SECONDS
        while loop.time() < deadline:
            summary = await asyncio.to_thread(slots.summary, self.root) or {}
            if int(summary.get("bootCount") or 0) > before and self.alive():
                return
            await asyncio.sleep(0.05)
        raise BootstrapFailed("Failed", "RebootTimeout", f"the DPU did not boot again within {BOOT_WAIT_SECONDS:g}s")


def _message(resp: httpx.Response) -> str:
    try:
        return str(resp.json().get("message", resp.text[:200]))
    except ValueError:
        return resp.text[:200]
