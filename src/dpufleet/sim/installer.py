"""What an emulated DPU does at boot besides booting: a network installer, and its A/B OS slots.

Network install (UEFI HTTP boot or virtual media): when the BMC's one-time boot override
points at ``UefiHttp`` with an ``HttpBootUri`` (or at ``Cd`` with virtual media inserted),
the firmware boots an installer that downloads the image over HTTP -- for real, from the
control plane's repository --, checks its sha256 against the digest named in the URL
(``.../sha256/<digest>/<file>``), writes it (the firmware id and version come from the file
name, ``<id>-<version>.bin``) and boots on; the one-time override is consumed when the installer boots. Every stage shows in
BootProgress (``OEM`` with ``OemLastState``); a failure shows ``InstallerFailed: <reason>``
for a watchdog period, is logged in the SEL, and the system falls back to the OS it had.

A/B slots: if the next boot is to try another slot than the active one, the image in that
slot is checked against its metadata (a corrupt slot does not boot); a good slot becomes
active and its version is what the DPU runs; a bad one leaves the previous slot active and
``lastBoot`` says why.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Protocol
from urllib.parse import urlparse, urlsplit

import httpx

from dpufleet.agent import slots
from dpufleet.sim.clock import BmcTimings
from dpufleet.sim.devices import SimDPU
from dpufleet.sim.osroot import init_slots, refresh_dpu_firmware_files

_IMAGE_SUFFIXES = (".tar.gz", ".fwpkg", ".bfb", ".bin", ".img", ".pldm", ".tar", ".zip")
_DIGEST_IN_PATH = re.compile(r"(?:^|/)(?:sha256[/:])?([0-9a-f]{64})(?:/|\.|$)")
DOWNLOAD_TIMEOUT = 30.0


class InstallerConsole(Protocol):
    """What the installer needs of the BMC whose DPU it runs on (a SimBMC): the installer sits
    below the BMC and reaches it only through this."""

    dpu: SimDPU
    timings: BmcTimings
    installer_failures: list[str]

    def set_boot_progress(self, stage: str, oem: str | None = None) -> None: ...

    def log(self, key: str, *args: object, origin: str | None = None) -> object: ...


class InstallerError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def redact(uri: str) -> str:
    """The URI without its query: a signed URL's signature is a credential, never logged."""
    parts = urlsplit(uri)
    return f"{parts.scheme}://{parts.netloc}{parts.path}" if parts.scheme else uri.split("?", 1)[0]


def digest_in(uri: str) -> str | None:
    match = _DIGEST_IN_PATH.search(urlsplit(uri).path.lower())
    return match.group(1) if match else None


def version_from_image(image_uri: str, firmware_id: str) -> str:
    """The version an image file carries in its name: ``<id>-<version>.<ext>`` or ``<version>.<ext>``."""
    name = PurePosixPath(urlparse(image_uri).path).name
    for suffix in _IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    for sep in ("-", "_"):
        if name.startswith(firmware_id + sep):
            return name[len(firmware_id) + 1 :]
    return name or "unknown"


def target_in(dpu: SimDPU, uri: str) -> str | None:
    name = PurePosixPath(urlsplit(uri).path).name
    for fw in dpu.profile.firmware:
        if name.startswith(fw.id + "-") or name.startswith(fw.id + "_"):
            return fw.id
    return None


# --- the A/B slots ------------------------------------------------------------------------------------


def _set_running_version(dpu: SimDPU, target: str, version: str) -> None:
    dpu.firmware[target] = version
    refresh_dpu_firmware_files(dpu)


def write_active_slot(dpu: SimDPU, target: str, version: str, data: bytes) -> None:
    """A network installer rewrites the running OS: the active slot gets the image."""
    _set_running_version(dpu, target, version)
    os_fw = dpu.profile.firmware_of_kind("os")
    root = dpu.osroot
    if root is None or os_fw is None or target != os_fw.id:
        return
    init_slots(dpu)
    state = slots.read_state(root) or {"active": "a"}
    active = str(state.get("active", "a"))
    path = slots.image_path(root, active)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    slots.write_slot_meta(
        root, active, {"version": version, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    )


@dataclass(frozen=True)
class SlotBoot:
    slot: str
    ok: bool
    reason: str = ""
    fell_back_to: str | None = None


def boot_slots(dpu: SimDPU, *, corrupt_next: bool = False, at: str = "") -> SlotBoot | None:
    """The bootloader's choice at an OS boot; None when the DPU has no slots."""
    root = dpu.osroot
    os_fw = dpu.profile.firmware_of_kind("os")
    if root is None or os_fw is None:
        return None
    state = slots.read_state(root)
    if state is None:
        return None
    active = str(state.get("active", "a"))
    trying = str(state.get("next", active))
    state["bootCount"] = int(state.get("bootCount", 0)) + 1
    if trying == active:
        state["lastBoot"] = {"slot": active, "ok": True, "at": at}
        slots.write_state(root, state)
        return SlotBoot(active, True)
    meta = slots.read_meta(root, trying) or {}
    path = slots.image_path(root, trying)
    if corrupt_next and path.exists():
        data = bytearray(path.read_bytes())
        if data:
            data[len(data) // 2] ^= 0xFF  # a flash page went bad
            path.write_bytes(bytes(data))
    try:
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        actual = None
    if actual is None or actual != meta.get("sha256"):
        shown = f"sha256 {actual[:16]}..." if actual else "no image"
        reason = (
            f"slot {trying} ({meta.get('version', 'unknown version')}) did not boot: its image has {shown}, "
            f"its metadata says {str(meta.get('sha256', '?'))[:16]}...; fell back to slot {active}"
        )
        state["next"] = active
        state["lastBoot"] = {"slot": trying, "ok": False, "reason": reason, "fellBackTo": active, "at": at}
        slots.write_state(root, state)
        return SlotBoot(trying, False, reason, active)
    state["active"] = trying
    state["next"] = trying
    state["lastBoot"] = {"slot": trying, "ok": True, "at": at}
    slots.write_state(root, state)
    _set_running_version(dpu, os_fw.id, str(meta.get("version")))
    return SlotBoot(trying, True)


# --- the network installer ----------------------------------------------------------------------------


async def _download(uri: str) -> bytes:
    try:
        async with httpx.AsyncClient(timeout=DOWNLOAD_TIMEOUT, follow_redirects=True) as http:
            resp = await http.get(uri)
    except httpx.HTTPError as exc:
        raise InstallerError("DownloadFailed", f"GET {redact(uri)}: {type(exc).__name__}") from None
    if resp.status_code != 200:
        raise InstallerError("DownloadFailed", f"GET {redact(uri)}: HTTP {resp.status_code}")
    return resp.content


async def run_installer(bmc: InstallerConsole, uri: str, source: str) -> None:
    """Boot the installer from `uri` (source: UefiHttp or Cd); on failure, leave the OS as it was."""
    dpu = bmc.dpu
    timings = bmc.timings
    name = PurePosixPath(urlsplit(uri).path).name
    target = target_in(dpu, uri) or "unknown"
    dpu.boot_override_enabled = "Disabled"  # a one-time override is consumed by the boot that uses it
    dpu.boot_override_target = "None"
    bmc.set_boot_progress("OEM", f"Installer ({source}): downloading {name}")
    try:
        data = await _download(uri)
        await asyncio.sleep(timings.scaled(timings.update_seconds) / 3)  # the transfer itself
        expected = digest_in(uri)
        if expected is None:
            raise InstallerError("NoDigest", f"{redact(uri)} names no sha256 digest to verify the image against")
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            raise InstallerError(
                "DigestMismatch", f"{len(data)} bytes downloaded hash to sha256 {actual}, the URL names {expected}"
            )
        if target == "unknown":
            raise InstallerError("UnknownTarget", f"{name}: no firmware of this DPU is named <id>-<version>")
        version = version_from_image(uri, target)
        bmc.set_boot_progress("OEM", f"Installer ({source}): writing {target} {version}")
        await asyncio.sleep(timings.scaled(timings.update_seconds) * 2 / 3)
        write_active_slot(dpu, target, version, data)
        bmc.log("UpdateSuccessful", target, redact(uri))
    except InstallerError as exc:
        bmc.set_boot_progress("OEM", f"InstallerFailed: {exc.reason}: {exc.message}")
        bmc.log("ApplyFailed", redact(uri), target)
        bmc.log("ResourceErrorsDetected", f"{target} installer", f"{exc.reason}: {exc.message}")
        bmc.installer_failures.append(f"{exc.reason}: {exc.message}")
        await asyncio.sleep(timings.scaled(timings.installer_watchdog_seconds))
