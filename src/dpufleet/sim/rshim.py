"""The emulated rshim of a DPU: the host's boot channel to it, as files in the host's OS root.

A BlueField's rshim is a PCIe function the host's rshim driver exposes as a directory of
character devices, ``/dev/rshim<N>/``. Two of them matter for installs, and the emulator
serves both as plain files under ``<host root>/dev/rshim<N>/``:

``boot``  writing a boot stream (a BFB) to it makes the DPU boot that image. The emulated
          writer holds an exclusive ``flock`` while it writes and closes the file at the end
          (on hardware: closing the device ends the stream); the emulated DPU takes the stream
          once the lock is released, and empties the file.
``misc``  reading shows the device's settings (``DEV_NAME pcie-<bdf>`` names the PCI function,
          which is how a host tool pairs ``rshim<N>`` with a DPU) and its boot log
          (``INFO[BL2]: ...``, ``ERR[BL2]: ...``); writing ``SW_RESET 1`` resets the DPU, which
          then waits ``BOOT_TIMEOUT`` for a boot stream and otherwise boots from its eMMC.

The emulated BFB is a small header and the payload: ``#BFB-SIM1`` then one JSON line naming the
version, size and sha256 of the payload (a real BFB's images carry their own signed headers).
A stream whose header is missing, whose payload is shorter than the header says (a truncated
write) or does not hash to it is refused by the DPU's boot ROM: an ``ERR`` line in the log, an
entry in the BMC's SEL, and the DPU boots the OS it had from its eMMC.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from dpufleet.sim.bmc import SimBMC
from dpufleet.sim.clock import utcnow_iso
from dpufleet.sim.devices import SimDPU, SimHost
from dpufleet.sim.installer import write_active_slot

BFB_MAGIC = b"#BFB-SIM1\n"
BOOT_TIMEOUT_SECONDS = 150.0  # rshim's default BOOT_TIMEOUT
POLL_SECONDS = 0.02
RESET_COMMAND = re.compile(r"^\s*SW_RESET\s+1\b", re.MULTILINE)
HOST_CHANNEL = "host-channel"


class BfbRefused(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def make_bfb(version: str, payload: bytes) -> bytes:
    """An emulated BFB carrying `payload` as OS image `version`."""
    header = {"version": version, "size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    return BFB_MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + payload


def parse_bfb(stream: bytes) -> tuple[str, bytes]:
    """(version, payload) of a complete, intact emulated BFB, or BfbRefused saying what is wrong."""
    if not stream.startswith(BFB_MAGIC):
        raise BfbRefused("NotABFB", f"the {len(stream)}-byte boot stream does not start with a BFB header")
    head, sep, payload = stream[len(BFB_MAGIC) :].partition(b"\n")
    try:
        header = json.loads(head) if sep else None
    except ValueError:
        header = None
    if not isinstance(header, dict) or not isinstance(header.get("size"), int) or not header.get("version"):
        raise BfbRefused("NotABFB", "the BFB header is unreadable")
    if len(payload) < header["size"]:
        raise BfbRefused(
            "Truncated", f"the boot stream ended after {len(payload)} of {header['size']} bytes of the image"
        )
    actual = hashlib.sha256(payload[: header["size"]]).hexdigest()
    if actual != header.get("sha256"):
        raise BfbRefused(
            "ImageVerificationFailed",
            f"the image hashes to sha256 {actual[:16]}..., its header says {str(header.get('sha256'))[:16]}...",
        )
    return str(header["version"]), payload[: header["size"]]


@dataclass(frozen=True)
class PushOutcome:
    """What one boot stream did: booted `version`, or was refused for `reason`."""

    ok: bool
    version: str | None = None
    reason: str = ""
    message: str = ""


@dataclass
class RshimDevice:
    """One DPU's rshim as its host sees it."""

    index: int
    host: SimHost
    bmc: SimBMC
    log_lines: list[str] = field(default_factory=list)
    waiting_since: float | None = None  # set while the boot ROM waits for a stream after a reset
    pushes: list[PushOutcome] = field(default_factory=list)  # newest last
    resets: int = 0
    # fault injection: the next stream is damaged on the link (a flipped bit, or cut off halfway)
    corrupt_next_push: bool = False
    truncate_next_push: bool = False

    @property
    def dpu(self) -> SimDPU:
        return self.bmc.dpu

    @property
    def directory(self) -> Path:
        assert self.host.osroot is not None
        return self.host.osroot / "dev" / f"rshim{self.index}"

    @property
    def boot_path(self) -> Path:
        return self.directory / "boot"

    @property
    def misc_path(self) -> Path:
        return self.directory / "misc"

    def dev_name(self) -> str:
        functions = self.dpu.host_functions()
        management = next((f for f in functions if f.spec.role == "management"), functions[-1])
        return f"pcie-{management.bdf}"

    def render(self) -> None:
        """Write `misc` as the rshim driver shows it (atomically: a reader never sees half)."""
        lines = [
            "DISPLAY_LEVEL   2 (0:basic, 1:advanced, 2:log)",
            "BOOT_MODE       1 (0:rshim, 1:emmc, 2:emmc-boot-swap)",
            f"BOOT_TIMEOUT    {int(BOOT_TIMEOUT_SECONDS)} (seconds)",
            "DROP_MODE       0 (0:normal, 1:drop)",
            "SW_RESET        0 (1: reset)",
            f"DEV_NAME        {self.dev_name()}",
            f"DEV_INFO        {self.dpu.profile.model}",
            "---------------------------------------",
            "             Log Messages",
            "---------------------------------------",
            *self.log_lines,
        ]
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.misc_path.with_name("misc.tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, self.misc_path)

    def log(self, level: str, stage: str, text: str) -> None:
        self.log_lines.append(f" {level}[{stage}]: {text}")
        del self.log_lines[:-200]
        self.render()

    # --- what the host writes -------------------------------------------------------------------------

    def poll(self) -> None:
        """Look at what the host wrote: a reset command in `misc`, a finished stream in `boot`."""
        with contextlib.suppress(OSError):
            if RESET_COMMAND.search(self.misc_path.read_text()):
                self.reset()

    def take_stream(self) -> bytes | None:
        """The stream written to `boot`, once its writer let go of it; the file is emptied."""
        try:
            fh = open(self.boot_path, "rb+")  # noqa: SIM115 - held across the lock
        except OSError:
            return None
        with fh:
            if os.fstat(fh.fileno()).st_size == 0:
                return None
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None  # still being written
            data = fh.read()
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        return data

    def reset(self) -> None:
        """SW_RESET: the DPU resets at once and its boot ROM waits for a boot stream."""
        self.resets += 1
        self.log_lines = []
        self.log("INFO", "BL1", "reset by rshim SW_RESET")
        name = f"{self.dpu.id} system"
        self.bmc.power_off_now(name)
        self.bmc.set_power_job(self._boot(name))

    async def _boot(self, name: str) -> None:
        bmc, timings = self.bmc, self.bmc.timings
        loop = asyncio.get_running_loop()
        self.waiting_since = loop.time()
        bmc.set_boot_progress("OEM", "rshim: waiting for a boot stream")
        self.log("INFO", "BL2", f"waiting for a boot stream on rshim (BOOT_TIMEOUT {int(BOOT_TIMEOUT_SECONDS)}s)")
        deadline = loop.time() + timings.scaled(BOOT_TIMEOUT_SECONDS)
        stream: bytes | None = None
        try:
            while loop.time() < deadline:
                stream = await asyncio.to_thread(self.take_stream)
                if stream is not None:
                    break
                await asyncio.sleep(POLL_SECONDS)
        finally:
            self.waiting_since = None
        if stream is None:
            self.log("INFO", "BL2", "no boot stream: booting from eMMC")
            await self._boot_emmc(name)
            return
        stream = self._link_faults(stream)
        self.log("INFO", "BL2", f"boot stream of {len(stream)} bytes received")
        try:
            version, payload = parse_bfb(stream)
        except BfbRefused as refused:
            self.pushes.append(PushOutcome(False, None, refused.reason, refused.message))
            self.log("ERR", "BL2", f"boot image rejected: {refused.reason}: {refused.message}")
            bmc.set_boot_progress("OEM", f"BootImageRejected: {refused.reason}")
            bmc.log("ResourceErrorsDetected", f"{self.dpu.id} rshim boot", f"{refused.reason}: {refused.message}")
            await asyncio.sleep(timings.scaled(timings.installer_watchdog_seconds) / 3)
            self.log("INFO", "BL2", "booting the previous OS from eMMC")
            await self._boot_emmc(name)
            return
        os_fw = self.dpu.profile.firmware_of_kind("os")
        assert os_fw is not None
        self.log("INFO", "BL2", f"BFB verified: {version}")
        bmc.set_boot_progress("OEM", f"rshim: installing {version}")
        self.log("INFO", "MISC", f"installing {version} to eMMC")
        await asyncio.sleep(timings.scaled(timings.update_seconds))
        write_active_slot(self.dpu, os_fw.id, version, payload)
        bmc.log("UpdateSuccessful", os_fw.id, f"rshim{self.index}")
        self.log("INFO", "MISC", "Installation finished")
        self.pushes.append(PushOutcome(True, version))
        await self._boot_emmc(name)

    async def _boot_emmc(self, name: str) -> None:
        await self.bmc.boot_os(name)
        if self.dpu.os_alive:
            os_fw = self.dpu.profile.firmware_of_kind("os")
            running = self.dpu.firmware.get(os_fw.id) if os_fw else None
            self.log("INFO", "MISC", "Linux up")
            self.log("INFO", "MISC", f"DPU is ready: {running} at {utcnow_iso()}")
        else:
            self.log("ERR", "MISC", "the OS did not come up")

    def _link_faults(self, stream: bytes) -> bytes:
        if self.truncate_next_push:
            self.truncate_next_push = False
            return stream[: len(stream) // 2]
        if self.corrupt_next_push and len(stream) > 64:
            self.corrupt_next_push = False
            damaged = bytearray(stream)
            damaged[-len(stream) // 3] ^= 0x01
            return bytes(damaged)
        return stream


def has_boot_channel(dpu: SimDPU) -> bool:
    return HOST_CHANNEL in dpu.profile.install_paths


@dataclass
class RshimBus:
    """Every emulated rshim of a fleet, watched from one task on the fleet's loop."""

    devices: dict[str, RshimDevice]  # by DPU id
    _task: asyncio.Task[None] | None = None

    @classmethod
    def of(cls, hosts: list[SimHost], bmcs: dict[str, SimBMC]) -> RshimBus:
        devices: dict[str, RshimDevice] = {}
        for host in hosts:
            if host.osroot is None:
                continue
            index = 0
            for dpu in host.dpus:
                if has_boot_channel(dpu):
                    device = RshimDevice(index, host, bmcs[dpu.id])
                    device.boot_path.parent.mkdir(parents=True, exist_ok=True)
                    device.boot_path.touch()
                    device.render()
                    devices[dpu.id] = device
                    index += 1
        return cls(devices)

    def for_serial(self, serial: str) -> RshimDevice:
        return next(d for d in self.devices.values() if d.dpu.serial == serial)

    def start(self) -> None:
        if self.devices and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            for device in self.devices.values():
                device.poll()
            await asyncio.sleep(POLL_SECONDS)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
