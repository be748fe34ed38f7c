"""The DPU agent's inventory reader: what this machine is, read from its own files.

Everything is read from files under ``root`` (``/`` on a real DPU or host, an
emulated OS root in the simulator), so the same code inventories both.
Readers tolerate missing and unreadable files: containers lack DMI, virtual
NICs have no link speed, Arm kernels print no "model name". What could not be
read is left ``None`` and named in ``Inventory.warnings``.
"""

from __future__ import annotations

import os
import re
import socket
from functools import lru_cache
from pathlib import Path

from ..api.agent import (
    AerCounters,
    CpuInfo,
    DiskInfo,
    DmiInfo,
    FilesystemInfo,
    HostDpu,
    Inventory,
    KnownDpu,
    MemoryInfo,
    NicInfo,
    OsRelease,
    PciFunction,
    VpdInfo,
)

# (implementer, part) -> core name, for Arm kernels whose cpuinfo has no model name.
ARM_CORES: dict[tuple[str, str], str] = {
    ("0x41", "0xd03"): "Arm Cortex-A53",
    ("0x41", "0xd08"): "Arm Cortex-A72",
    ("0x41", "0xd0c"): "Arm Neoverse-N1",
    ("0x41", "0xd40"): "Arm Neoverse-V1",
    ("0x41", "0xd42"): "Arm Cortex-A78AE",
    ("0x41", "0xd49"): "Arm Neoverse-N2",
    ("0x41", "0xd4f"): "Arm Neoverse-V2",
}
_SKIPPED_BLOCK_PREFIXES = ("loop", "ram", "zram", "dm-", "sr", "fd", "nbd")


class _Reader:
    """Reads files under a root, recording what it could not read."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.warnings: list[str] = []

    def path(self, relpath: str) -> Path:
        return self.root / relpath.lstrip("/")

    def text(self, relpath: str, *, quiet: bool = False) -> str | None:
        try:
            return self.path(relpath).read_text(encoding="utf-8", errors="replace").strip()
        except OSError as exc:
            if not quiet:
                self.warnings.append(f"{relpath}: {exc.strerror or exc}")
            return None

    def raw(self, relpath: str) -> bytes | None:
        try:
            return self.path(relpath).read_bytes()
        except OSError:
            return None

    def integer(self, relpath: str, base: int = 10, *, quiet: bool = False) -> int | None:
        value = self.text(relpath, quiet=quiet)
        if value is None:
            return None
        try:
            return int(value, base)
        except ValueError:
            if not quiet:
                self.warnings.append(f"{relpath}: not a number: {value!r}")
            return None

    def listdir(self, relpath: str) -> list[str]:
        try:
            return sorted(os.listdir(self.path(relpath)))
        except OSError as exc:
            self.warnings.append(f"{relpath}: {exc.strerror or exc}")
            return []


def _cpu(reader: _Reader) -> CpuInfo:
    text = reader.text("proc/cpuinfo")
    info = CpuInfo()
    if text is None:
        return info
    processors = 0
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key == "processor":
            processors += 1
        fields.setdefault(key, value)
    info.count = processors or None
    info.model = (
        fields.get("model name")
        or fields.get("Model")
        or ARM_CORES.get((fields.get("CPU implementer", ""), fields.get("CPU part", "")))
    )
    if "CPU implementer" in fields:
        info.architecture = "aarch64"
    elif "vendor_id" in fields or "flags" in fields:
        info.architecture = "x86_64"
    online = reader.text("sys/devices/system/cpu/online", quiet=True)
    if info.count is None and online:
        info.count = _count_cpu_list(online)
    return info


def _count_cpu_list(text: str) -> int:
    count = 0
    for part in text.split(","):
        low, _, high = part.partition("-")
        count += int(high) - int(low) + 1 if high else 1
    return count


def _memory(reader: _Reader) -> MemoryInfo:
    text = reader.text("proc/meminfo")
    info = MemoryInfo()
    for line in (text or "").splitlines():
        match = re.match(r"^(MemTotal|MemAvailable):\s+(\d+)\s*kB", line)
        if match:
            value = int(match.group(2)) * 1024
            if match.group(1) == "MemTotal":
                info.total_bytes = value
            else:
                info.available_bytes = value
    return info


def _os_release(reader: _Reader) -> OsRelease:
    text = reader.text("etc/os-release", quiet=True) or reader.text("usr/lib/os-release")
    values: dict[str, str] = {}
    for line in (text or "").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip().strip('"').strip("'")
    return OsRelease(
        id=values.get("ID"),
        name=values.get("NAME"),
        version_id=values.get("VERSION_ID"),
        pretty_name=values.get("PRETTY_NAME"),
        image_version=values.get("IMAGE_VERSION"),
    )


def _dmi(reader: _Reader) -> DmiInfo:
    if not reader.path("sys/class/dmi/id").is_dir():
        reader.warnings.append("sys/class/dmi/id: no DMI (container or firmware without SMBIOS)")
        return DmiInfo()
    values = {name: reader.text(f"sys/class/dmi/id/{name}", quiet=True) for name in DmiInfo.model_fields}
    return DmiInfo(**{k: v for k, v in values.items() if v})


def _disks(reader: _Reader) -> list[DiskInfo]:
    disks = []
    for name in reader.listdir("sys/block"):
        if name.startswith(_SKIPPED_BLOCK_PREFIXES):
            continue
        sectors = reader.integer(f"sys/block/{name}/size", quiet=True)
        rotational = reader.integer(f"sys/block/{name}/queue/rotational", quiet=True)
        disks.append(
            DiskInfo(
                name=name,
                size_bytes=sectors * 512 if sectors is not None else None,
                model=reader.text(f"sys/block/{name}/device/model", quiet=True),
                rotational=None if rotational is None else bool(rotational),
            )
        )
    return disks


def _nics(reader: _Reader) -> list[NicInfo]:
    nics = []
    for name in reader.listdir("sys/class/net"):
        if name == "lo" or name.startswith("bonding_masters"):
            continue
        base = f"sys/class/net/{name}"
        speed = reader.integer(f"{base}/speed", quiet=True)  # EINVAL when down or virtual
        nics.append(
            NicInfo(
                name=name,
                mac=reader.text(f"{base}/address", quiet=True),
                speed_mbps=speed if speed is not None and speed > 0 else None,
                operstate=reader.text(f"{base}/operstate", quiet=True),
                mtu=reader.integer(f"{base}/mtu", quiet=True),
            )
        )
    return nics


def parse_vpd(data: bytes) -> VpdInfo | None:
    """Parse PCI VPD resource tags (identifier string, VPD-R/VPD-W keywords)."""
    info = VpdInfo()
    offset = 0
    found = False
    while offset < len(data):
        tag = data[offset]
        if tag == 0x78 or tag == 0x0F:  # end tag (large/small form)
            break
        if not tag & 0x80 or offset + 3 > len(data):
            break
        length = int.from_bytes(data[offset + 1 : offset + 3], "little")
        body = data[offset + 3 : offset + 3 + length]
        offset += 3 + length
        if tag == 0x82:
            info.product_name = body.decode("ascii", "replace").strip()
            found = True
        elif tag in (0x90, 0x91):
            pos = 0
            while pos + 3 <= len(body):
                key = body[pos : pos + 2].decode("ascii", "replace")
                size = body[pos + 2]
                value = body[pos + 3 : pos + 3 + size]
                pos += 3 + size
                if key == "RV" or key == "RW":
                    continue
                info.fields[key] = value.decode("ascii", "replace").strip().rstrip("\x00")
                found = True
    info.part_number = info.fields.get("PN")
    info.serial_number = info.fields.get("SN")
    return info if found else None


@lru_cache(maxsize=1)
def known_dpu_ids() -> dict[tuple[str, str], KnownDpu]:
    """PCI (vendor, device) IDs of DPU functions, from the vendor catalog."""
    from dpufleet.vendors import builtin_catalog

    table: dict[tuple[str, str], KnownDpu] = {}
    for profile in builtin_catalog():
        for vendor_id, device_id, role in profile.pci_ids():
            table.setdefault(
                (vendor_id, device_id),
                KnownDpu(profile=profile.name, vendor=profile.vendor, model=profile.model, role=role),
            )
    return table


def _hex_id(value: str | None) -> str | None:
    if value is None:
        return None
    return value.lower().removeprefix("0x")


def _scan_pci(reader: _Reader) -> list[PciFunction]:
    table = known_dpu_ids()
    functions = []
    for bdf in reader.listdir("sys/bus/pci/devices"):
        base = f"sys/bus/pci/devices/{bdf}"
        vendor = _hex_id(reader.text(f"{base}/vendor", quiet=True))
        device = _hex_id(reader.text(f"{base}/device", quiet=True))
        raw_vpd = reader.raw(f"{base}/vpd")
        aer = _aer(reader, base)
        functions.append(
            PciFunction(
                bdf=bdf,
                vendor_id=vendor,
                device_id=device,
                class_code=_hex_id(reader.text(f"{base}/class", quiet=True)),
                subsystem_vendor_id=_hex_id(reader.text(f"{base}/subsystem_vendor", quiet=True)),
                subsystem_device_id=_hex_id(reader.text(f"{base}/subsystem_device", quiet=True)),
                vpd=parse_vpd(raw_vpd) if raw_vpd else None,
                dpu=table.get((vendor or "", device or "")),
                aer=aer,
            )
        )
    return functions


_AER_KINDS = (("aer_dev_correctable", "correctable"), ("aer_dev_nonfatal", "nonfatal"), ("aer_dev_fatal", "fatal"))


def _aer(reader: _Reader, base: str) -> AerCounters | None:
    """The kernel's AER counters (lines "<ErrorType> <count>", ending with a TOTAL_ERR_* line)."""
    counters = AerCounters()
    found = False
    for filename, kind in _AER_KINDS:
        text = reader.text(f"{base}/{filename}", quiet=True)
        if text is None:
            continue
        found = True
        total = 0
        for line in text.splitlines():
            name, _, value = line.strip().rpartition(" ")
            if not value.isdigit():
                continue
            if name.startswith("TOTAL_ERR"):
                total = int(value)
            elif int(value):
                counters.errors[f"{kind}/{name}"] = int(value)
        setattr(counters, kind, total)
    return counters if found else None


# Filesystems worth reporting (not proc, sysfs, tmpfs, overlay layers...).
_REAL_FS = {"ext2", "ext3", "ext4", "xfs", "btrfs", "vfat", "f2fs", "zfs", "jfs", "reiserfs", "squashfs"}
STATVFS_FILE = (
    "run/dpufleet-sim/statvfs"  # an emulated root's stand-in for statvfs(2) (written by the emulator, sim/osroot.py)
)


def _filesystems(reader: _Reader) -> list[FilesystemInfo]:
    """Usage of the machine's real filesystems: statvfs(2) on "/", the emulator's statvfs file elsewhere."""
    rows: list[tuple[str, str | None, int, int, int]] = []
    if reader.root == Path("/"):
        seen: set[str] = set()
        for line in (reader.text("proc/mounts", quiet=True) or "").splitlines():
            parts = line.split()
            if len(parts) < 3 or parts[2] not in _REAL_FS or parts[1] in seen:
                continue
            seen.add(parts[1])
            try:
                st = os.statvfs(parts[1].replace("\\040", " "))
            except OSError:
                continue
            size = st.f_blocks * st.f_frsize
            rows.append((parts[1], parts[2], size, size - st.f_bfree * st.f_frsize, st.f_bavail * st.f_frsize))
    else:
        for line in (reader.text(STATVFS_FILE, quiet=True) or "").splitlines():
            parts = line.split()
            if len(parts) == 5 and all(p.isdigit() for p in parts[2:]):
                rows.append((parts[0], parts[1], int(parts[2]), int(parts[3]), int(parts[4])))
    result = []
    for mountpoint, fstype, size, used, avail in rows:
        percent = 100.0 * used / (used + avail) if used + avail else 0.0
        result.append(
            FilesystemInfo(
                mountpoint=mountpoint,
                fstype=fstype,
                size_bytes=size,
                used_bytes=used,
                available_bytes=avail,
                used_percent=round(percent, 1),
            )
        )
    return result


def scan_host_pci(root: Path = Path("/")) -> list[PciFunction]:
    """Every PCI function under ``root``; DPU functions carry ``dpu`` (which profile, which role)."""
    return _scan_pci(_Reader(root))


def group_dpus(functions: list[PciFunction]) -> list[HostDpu]:
    """Group a host's DPU functions into cards, one per PCI slot, with serials from VPD."""
    cards: dict[str, HostDpu] = {}
    for function in functions:
        if function.dpu is None or function.dpu.role == "vf":
            continue
        card = cards.get(function.slot)
        if card is None:
            card = HostDpu(
                slot=function.slot,
                profile=function.dpu.profile,
                vendor=function.dpu.vendor,
                model=function.dpu.model,
                functions=[],
            )
            cards[function.slot] = card
        card.functions.append(function.bdf)
        if function.vpd is not None:
            card.serial_number = card.serial_number or function.vpd.serial_number
            card.part_number = card.part_number or function.vpd.part_number
    return list(cards.values())


def collect_inventory(root: Path = Path("/")) -> Inventory:
    """Inventory of the machine whose filesystem is at ``root``."""
    reader = _Reader(root)
    version = reader.text("proc/version")
    hostname = reader.text("proc/sys/kernel/hostname", quiet=True) or reader.text("etc/hostname", quiet=True)
    if hostname is None and root == Path("/"):
        hostname = socket.gethostname()
    pci = _scan_pci(reader)
    inventory = Inventory(
        hostname=hostname,
        kernel_release=reader.text("proc/sys/kernel/osrelease", quiet=True)
        or (version.split()[2] if version and len(version.split()) > 2 else None),
        kernel_version=version,
        os=_os_release(reader),
        dmi=_dmi(reader),
        cpu=_cpu(reader),
        memory=_memory(reader),
        disks=_disks(reader),
        nics=_nics(reader),
        pci=pci,
        dpus=group_dpus(pci),
        filesystems=_filesystems(reader),
    )
    inventory.warnings = reader.warnings
    return inventory
