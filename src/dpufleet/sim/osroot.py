"""Materialise emulated OS roots: the files a Linux agent would read.

A DPU root looks like its Arm OS (``/proc``, ``/sys``, ``/etc``); a host root
shows the host's DMI and the DPUs' PCI functions on its bus, including their
PCI VPD (part and serial number), which is how a host-side agent pairs a DPU
with the slot it sits in. The agent's inventory reader is pointed at these
directories exactly as it is pointed at ``/`` on real hardware.
"""

from __future__ import annotations

import hashlib
import random
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path

from dpufleet.agent import slots
from dpufleet.sim import kernel
from dpufleet.sim.devices import MacAllocator, SimDPU, SimHost, SimNic, make_dpu
from dpufleet.sim.profiles import VendorProfile

# Memory the firmware and kernel keep for themselves (what MemTotal hides).
_RESERVED_FRACTION = 0.035

# PCI functions every emulated host has besides its DPUs (vendor, device, class).
_HOST_BASE_PCI: tuple[tuple[str, str, str, str], ...] = (
    ("0000:00:00.0", "8086", "09a2", "060000"),  # host bridge
    ("0000:00:14.0", "8086", "1bcd", "0c0330"),  # USB xHCI
    ("0000:00:1f.0", "8086", "1b81", "060100"),  # ISA bridge
    ("0000:03:00.0", "1a03", "2000", "030000"),  # ASPEED BMC VGA
    ("0000:05:00.0", "144d", "a80a", "010802"),  # NVMe boot disk
)


_generations: dict[str, int] = {}  # OS root -> how many writes the emulator made under it


def generation(root: Path) -> int:
    """A number that changes whenever the emulator writes under ``root`` (see SimAgent.collect)."""
    return _generations.get(str(root), 0)


def touched(root: Path) -> None:
    """Count a change the emulator made under ``root`` by other means than `_write` (a moved directory)."""
    _generations[str(root)] = _generations.get(str(root), 0) + 1


def _write(root: Path, relpath: str, content: str | bytes) -> None:
    _generations[str(root)] = _generations.get(str(root), 0) + 1
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")


def syslog(dpu: SimDPU, tag: str, message: str) -> None:
    """One line of the emulated DPU's system log, as Debian 12's rsyslog writes ``/var/log/syslog``: an RFC 3339
    time, the host name, the tag and the message; the file carries no severity (a reader infers it)."""
    root = dpu.osroot
    if root is None:
        return
    path = root / "var/log/syslog"
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).isoformat(timespec="microseconds")
    with path.open("a", encoding="utf-8") as f:
        f.write(f"{stamp} {dpu.hostname} {tag}: {message}\n")


def _kv_lines(pairs: dict[str, str]) -> str:
    return "".join(f'{key}="{value}"\n' for key, value in pairs.items())


def encode_vpd(product_name: str, fields: dict[str, str]) -> bytes:
    """Encode PCI Vital Product Data (PCI Local Bus spec, section 6.4).

    ``fields`` are read-only keywords (PN, SN, EC, V0...); an RV checksum
    keyword and the end tag are appended so the image sums to zero.
    """
    ident = product_name.encode("ascii", "replace")
    out = bytearray([0x82, len(ident) & 0xFF, len(ident) >> 8]) + ident
    body = bytearray()
    for key, value in fields.items():
        data = value.encode("ascii", "replace")[:255]
        body += key.encode("ascii")[:2] + bytes([len(data)]) + data
    # RV: checksum byte plus one reserved byte.
    rv_len = 2
    section = bytearray([0x90]) + (len(body) + 3 + rv_len).to_bytes(2, "little") + body + b"RV" + bytes([rv_len])
    checksum = (-(sum(out) + sum(section))) & 0xFF
    section += bytes([checksum, 0])
    return bytes(out + section + bytes([0x78]))


def _card_vpd(dpu: SimDPU) -> bytes:
    profile = dpu.profile
    return encode_vpd(profile.model, {"PN": profile.part_number, "EC": "A1", "SN": dpu.serial, "V0": profile.vendor})


def _cpuinfo_arm(profile: VendorProfile) -> str:
    cpu = profile.cpuinfo
    blocks = []
    for index in range(profile.cpu.cores):
        blocks.append(
            f"processor\t: {index}\n"
            f"BogoMIPS\t: {cpu.bogomips:.2f}\n"
            f"Features\t: {cpu.features}\n"
            f"CPU implementer\t: {cpu.implementer}\n"
            "CPU architecture: 8\n"
            f"CPU variant\t: {cpu.variant}\n"
            f"CPU part\t: {cpu.part}\n"
            f"CPU revision\t: {cpu.revision}\n"
        )
    return "\n".join(blocks) + "\n"


def _cpuinfo_x86(model: str, count: int) -> str:
    blocks = []
    for index in range(count):
        blocks.append(
            f"processor\t: {index}\nvendor_id\t: {'AuthenticAMD' if 'AMD' in model else 'GenuineIntel'}\n"
            f"model name\t: {model}\ncpu MHz\t\t: 2100.000\nflags\t\t: fpu vme de pse tsc msr pae\n"
        )
    return "\n".join(blocks) + "\n"


def _meminfo(total_mib: int) -> str:
    total_kib = int(total_mib * 1024 * (1 - _RESERVED_FRACTION))
    free_kib = int(total_kib * 0.82)
    return (
        f"MemTotal:       {total_kib} kB\n"
        f"MemFree:        {free_kib} kB\n"
        f"MemAvailable:   {int(total_kib * 0.9)} kB\n"
        "Buffers:          123456 kB\n"
        "Cached:          1234567 kB\n"
        "SwapTotal:             0 kB\n"
        "SwapFree:              0 kB\n"
        "HugePages_Total:       0\n"
        "Hugepagesize:       2048 kB\n"
    )


def _write_nic(root: Path, nic: SimNic) -> None:
    base = f"sys/class/net/{nic.name}"
    for counter in ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets", "rx_errors", "tx_errors", "rx_dropped",
                    "tx_dropped"):  # fmt: skip
        _write(root, f"{base}/statistics/{counter}", "0\n")
    _write(root, f"{base}/address", nic.mac + "\n")
    _write(root, f"{base}/speed", f"{nic.speed_mbps}\n")
    _write(root, f"{base}/operstate", nic.operstate + "\n")
    _write(root, f"{base}/mtu", f"{nic.mtu}\n")
    _write(root, f"{base}/type", "1\n")


def _write_pci(root: Path, bdf: str, vendor: str, device: str, class_code: str, vpd: bytes | None = None) -> None:
    base = f"sys/bus/pci/devices/{bdf}"
    _write(root, f"{base}/vendor", f"0x{vendor}\n")
    _write(root, f"{base}/device", f"0x{device}\n")
    _write(root, f"{base}/class", f"0x{class_code}\n")
    _write(root, f"{base}/subsystem_vendor", f"0x{vendor}\n")
    _write(root, f"{base}/subsystem_device", f"0x{device}\n")
    if vpd is not None:
        _write(root, f"{base}/vpd", vpd)


def _write_dmi(root: Path, values: dict[str, str]) -> None:
    for key, value in values.items():
        _write(root, f"sys/class/dmi/id/{key}", value + "\n")


def refresh_dpu_nic_files(dpu: SimDPU) -> None:
    """Rewrite sys/class/net/<nic>/operstate after a link change."""
    if dpu.osroot is None:
        return
    for nic in dpu.nics:
        _write(dpu.osroot, f"sys/class/net/{nic.name}/operstate", nic.operstate + "\n")


STATVFS_FILE = "run/dpufleet-sim/statvfs"  # what the agent reads instead of statvfs(2) on an emulated root


def write_statvfs(root: Path, filesystems: list[tuple[str, str, int, int]]) -> None:
    """(mountpoint, fstype, size_bytes, used_bytes) per filesystem, as the agent's inventory reads them."""
    lines = "".join(f"{mp} {fstype} {size} {used} {max(size - used, 0)}\n" for mp, fstype, size, used in filesystems)
    _write(root, STATVFS_FILE, lines)


def root_filesystem_size(profile: VendorProfile) -> int:
    disk = profile.storage[0] if profile.storage else None
    return (disk.size_gib if disk else 64) * 1024**3


def write_dpu_filesystems(dpu: SimDPU, full: bool = False) -> None:
    """The DPU's root filesystem (about a third used, or 100 % when ``full``) and /boot/efi."""
    if dpu.osroot is None:
        return
    size = root_filesystem_size(dpu.profile)
    write_statvfs(
        dpu.osroot,
        [("/", "ext4", size, size if full else size * 31 // 100), ("/boot/efi", "vfat", 50 * 1024**2, 6 * 1024**2)],
    )


AER_FILES = ("aer_dev_correctable", "aer_dev_nonfatal", "aer_dev_fatal")
_AER_FIELDS = {
    "aer_dev_correctable": (
        "RxErr",
        "BadTLP",
        "BadDLLP",
        "Rollover",
        "Timeout",
        "NonFatalErr",
        "CorrIntErr",
        "HeaderOF",
    ),
    "aer_dev_nonfatal": (
        "Undefined",
        "DLP",
        "SDES",
        "TLP",
        "FCP",
        "CmpltTO",
        "CmpltAbrt",
        "UnxCmplt",
        "RxOF",
        "MalfTLP",
        "ECRC",
        "UnsupReq",
        "ACSViol",
        "UncorrIntErr",
        "BlockedTLP",
        "AtomicOpBlocked",
        "TLPBlockedErr",
        "PoisonTLPBlocked",
    ),
}
_AER_FIELDS["aer_dev_fatal"] = _AER_FIELDS["aer_dev_nonfatal"]
_AER_TOTAL = {
    "aer_dev_correctable": "TOTAL_ERR_COR",
    "aer_dev_nonfatal": "TOTAL_ERR_NONFATAL",
    "aer_dev_fatal": "TOTAL_ERR_FATAL",
}


def _aer_text(name: str, counts: dict[str, int]) -> str:
    lines = [f"{field} {counts.get(field, 0)}" for field in _AER_FIELDS[name]]
    lines.append(f"{_AER_TOTAL[name]} {sum(counts.values())}")
    return "\n".join(lines) + "\n"


def bump_aer(root: Path, bdf: str, name: str, field: str) -> None:
    """Count one AER error of type ``field`` in /sys/bus/pci/devices/<bdf>/<name> (as the kernel does)."""
    path = root / f"sys/bus/pci/devices/{bdf}/{name}"
    counts: dict[str, int] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key in _AER_FIELDS[name] and value.strip().isdigit():
                counts[key] = int(value)
    counts[field] = counts.get(field, 0) + 1
    _write(root, f"sys/bus/pci/devices/{bdf}/{name}", _aer_text(name, counts))


def refresh_dpu_firmware_files(dpu: SimDPU) -> None:
    """Rewrite the files that show firmware versions, after an update."""
    if dpu.osroot is None:
        return
    uefi = dpu.profile.firmware_of_kind("uefi")
    if uefi is not None:
        _write(dpu.osroot, "sys/class/dmi/id/bios_version", dpu.firmware[uefi.id] + "\n")
    lines = "".join(f"{fw_id}={version}\n" for fw_id, version in sorted(dpu.firmware.items()))
    _write(dpu.osroot, "etc/dpufleet-sim/firmware", lines)
    os_fw = dpu.profile.firmware_of_kind("os")
    release = dpu.osroot / "etc/os-release"
    if os_fw is not None and release.exists():  # IMAGE_VERSION (os-release(5)): the OS image the DPU runs
        kept = [line for line in release.read_text().splitlines() if not line.startswith("IMAGE_VERSION=")]
        kept.append(f'IMAGE_VERSION="{dpu.firmware[os_fw.id]}"')
        _write(dpu.osroot, "etc/os-release", "\n".join(kept) + "\n")


def write_dpu_root(dpu: SimDPU, root: Path) -> Path:
    """Write the DPU's emulated Arm OS root under ``root`` and remember it."""
    profile = dpu.profile
    root.mkdir(parents=True, exist_ok=True)
    kernel = profile.os.kernel_release
    _write(root, "proc/cpuinfo", _cpuinfo_arm(profile))
    _write(root, "proc/meminfo", _meminfo(profile.memory.total_mib))
    _write(
        root,
        "proc/version",
        f"Linux version {kernel} (buildd@dpufleet-sim) (aarch64-linux-gnu-gcc 11.4.0) {profile.os.kernel_build}\n",
    )
    _write(root, "proc/sys/kernel/osrelease", kernel + "\n")
    _write(root, "proc/sys/kernel/hostname", dpu.hostname + "\n")
    _write(root, "etc/hostname", dpu.hostname + "\n")
    _write(root, "etc/machine-id", uuid.UUID(dpu.uuid).hex + "\n")
    os_release = {
        "NAME": profile.os.name,
        "VERSION_ID": profile.os.version_id,
        "PRETTY_NAME": profile.os.pretty_name,
        "ID": profile.os.id,
    }
    if profile.os.version_codename:
        os_release["VERSION_CODENAME"] = profile.os.version_codename
    _write(root, "etc/os-release", _kv_lines(os_release))
    uefi = profile.firmware_of_kind("uefi")
    _write_dmi(
        root,
        {
            "sys_vendor": profile.dmi.sys_vendor,
            "product_name": profile.dmi.product_name,
            "product_serial": dpu.serial,
            "product_uuid": dpu.uuid,
            "product_sku": profile.part_number,
            "board_vendor": profile.dmi.board_vendor,
            "board_name": profile.dmi.board_name,
            "board_serial": dpu.serial,
            "bios_vendor": profile.dmi.bios_vendor,
            "bios_version": dpu.firmware[uefi.id] if uefi else "unknown",
            "chassis_vendor": profile.dmi.chassis_vendor,
            "chassis_serial": dpu.serial,
        },
    )
    _write(root, "sys/devices/system/cpu/online", f"0-{profile.cpu.cores - 1}\n")
    _write(root, "sys/devices/system/cpu/possible", f"0-{profile.cpu.cores - 1}\n")
    # what the OS telemetry plugin reads: CPU time per core (all idle at boot), load, one thermal zone
    cores = "".join(f"cpu{i} 0 0 0 0 0 0 0 0 0 0\n" for i in range(profile.cpu.cores))
    _write(root, "proc/stat", "cpu  0 0 0 0 0 0 0 0 0 0\n" + cores)
    _write(root, "proc/loadavg", "0.00 0.00 0.00 1/100 1\n")
    _write(root, "sys/class/thermal/thermal_zone0/type", "cpu-thermal\n")
    _write(root, "sys/class/thermal/thermal_zone0/temp", "45000\n")
    for nic in dpu.nics:
        _write_nic(root, nic)
    _write(root, "sys/class/net/lo/address", "00:00:00:00:00:00\n")
    _write(root, "sys/class/net/lo/mtu", "65536\n")
    _write(root, "sys/class/net/lo/operstate", "unknown\n")
    _write(root, "sys/class/net/lo/type", "772\n")
    for disk in profile.storage:
        sectors = disk.size_gib * 1024**3 // 512
        _write(root, f"sys/block/{disk.name}/size", f"{sectors}\n")
        _write(root, f"sys/block/{disk.name}/device/model", profile.disk_model(disk.name) + "\n")
        _write(root, f"sys/block/{disk.name}/queue/rotational", "0\n")
    # The Arm side enumerates the NIC functions on its own PCIe root too.
    vpd = _card_vpd(dpu)
    for index, function in enumerate(f for f in dpu.host_functions() if f.spec.role == "nic"):
        bdf = f"0000:03:00.{index}"
        _write_pci(root, bdf, function.spec.vendor_id, function.spec.device_id, function.spec.class_code, vpd)
    dpu.osroot = root
    refresh_dpu_firmware_files(dpu)
    write_dpu_filesystems(dpu)
    init_slots(dpu)
    boot_kernel(dpu)
    return root


# Kernel tunables the emulated DPU kernel offers under /proc/sys, with their values at boot.
SYSCTL_DEFAULTS = {
    "net/ipv4/ip_forward": "0",
    "net/ipv4/conf/all/rp_filter": "2",
    "net/ipv6/conf/all/forwarding": "0",
    "net/core/somaxconn": "4096",
    "net/core/rmem_max": "212992",
    "net/core/wmem_max": "212992",
    "net/core/netdev_max_backlog": "1000",
    "vm/swappiness": "60",
    "vm/nr_hugepages": "0",
    "kernel/pid_max": "4194304",
    "kernel/panic": "0",
}
HUGEPAGE_SIZES_KB = (64, 2048, 32768, 1048576)  # an arm64 kernel with 4 KiB pages
_GRUB_LINE = re.compile(r'^\s*GRUB_CMDLINE_LINUX="\$GRUB_CMDLINE_LINUX\s*([^"]*)"\s*$')
_AFFINITY = re.compile(r"^\s*CPUAffinity=(\S+)\s*$")


def boot_kernel(dpu: SimDPU) -> None:
    """What a boot resets and what it reads, as the emulated DPU's OS comes up: the kernel command line
    from the bootloader's configuration (each ``/etc/default/grub.d/*.cfg`` that appends to
    GRUB_CMDLINE_LINUX), /proc/sys and the hugepage pools at their boot values, and PID 1's CPU affinity
    from systemd's ``CPUAffinity=`` (``/etc/systemd/system.conf.d/*.conf``)."""
    root = dpu.osroot
    if root is None:
        return
    profile = dpu.profile
    extra: list[str] = []
    for cfg in sorted((root / "etc/default/grub.d").glob("*.cfg")):
        for line in cfg.read_text(errors="replace").splitlines():
            found = _GRUB_LINE.match(line)
            if found:
                extra.extend(found.group(1).split())
    base = f"BOOT_IMAGE=/boot/vmlinuz-{profile.os.kernel_release} root=/dev/nvme0n1p2 ro console=hvc0 console=ttyAMA0"
    _write(root, "proc/cmdline", " ".join([base, *extra]) + "\n")
    for key, value in SYSCTL_DEFAULTS.items():
        _write(root, f"proc/sys/{key}", value + "\n")
    _write(root, "proc/sys/kernel/random/boot_id", str(uuid.uuid4()) + "\n")
    kernel.boot(root)  # no module stays loaded across a boot
    for size in HUGEPAGE_SIZES_KB:
        _write(root, f"sys/kernel/mm/hugepages/hugepages-{size}kB/nr_hugepages", "0\n")
    affinity = f"0-{profile.cpu.cores - 1}"
    for conf in sorted((root / "etc/systemd/system.conf.d").glob("*.conf")):
        for line in conf.read_text(errors="replace").splitlines():
            found = _AFFINITY.match(line)
            if found:
                affinity = found.group(1)
    _write(root, "proc/1/status", f"Name:\tsystemd\nPid:\t1\nCpus_allowed_list:\t{affinity}\n")
    syslog(dpu, "kernel", f"Linux version {profile.os.kernel_release} (Debian) #1 SMP")
    syslog(dpu, "kernel", "Command line: " + " ".join([base, *extra]))
    syslog(dpu, "systemd[1]", "Reached target multi-user.target - Multi-User System.")


def init_slots(dpu: SimDPU) -> None:
    """Slot a holds the factory image of the running OS version; slot b is empty (the A/B slot
    files the agent reads, ``agent/slots.py``; the installer and the bootloader change them)."""
    root = dpu.osroot
    os_fw = dpu.profile.firmware_of_kind("os")
    if root is None or os_fw is None or slots.read_state(root) is not None:
        return
    version = dpu.firmware[os_fw.id]
    data = f"factory image {os_fw.id} {version}\n".encode()
    slots.image_path(root, "a").parent.mkdir(parents=True, exist_ok=True)
    slots.image_path(root, "a").write_bytes(data)
    slots.write_slot_meta(
        root, "a", {"version": version, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    )
    slots.write_state(root, {"active": "a", "next": "a", "bootCount": 0, "lastBoot": None})


def write_host_root(host: SimHost, root: Path) -> Path:
    """Write the host's emulated OS root: its DMI and every DPU PCI function."""
    root.mkdir(parents=True, exist_ok=True)
    model = host.model
    _write(root, "proc/cpuinfo", _cpuinfo_x86(model.cpu_model, model.cpu_count))
    _write(root, "proc/meminfo", _meminfo(model.memory_mib))
    _write(root, "proc/version", "Linux version 6.8.0-45-generic (buildd@lcy02-amd64-115) #45-Ubuntu SMP\n")
    _write(root, "proc/sys/kernel/osrelease", "6.8.0-45-generic\n")
    _write(root, "proc/sys/kernel/hostname", host.id + "\n")
    _write(root, "etc/hostname", host.id + "\n")
    _write(
        root,
        "etc/os-release",
        _kv_lines({"NAME": "Ubuntu", "VERSION_ID": "24.04", "PRETTY_NAME": "Ubuntu 24.04.1 LTS", "ID": "ubuntu"}),
    )
    _write_dmi(
        root,
        {
            "sys_vendor": model.vendor,
            "product_name": model.product,
            "product_serial": host.serial,
            "product_uuid": host.uuid,
            "board_vendor": model.vendor,
            "board_serial": host.serial,
            "chassis_serial": host.serial,
        },
    )
    for bdf, vendor, device, class_code in _HOST_BASE_PCI:
        _write_pci(root, bdf, vendor, device, class_code)
    for dpu in host.dpus:
        vpd = _card_vpd(dpu)
        for function in dpu.host_functions():
            spec = function.spec
            _write_pci(root, function.bdf, spec.vendor_id, spec.device_id, spec.class_code, vpd)
            for name in AER_FILES:
                _write(root, f"sys/bus/pci/devices/{function.bdf}/{name}", _aer_text(name, {}))
    write_statvfs(root, [("/", "ext4", 960 * 1024**3, 120 * 1024**3)])
    host.osroot = root
    return root


def materialise_dpu_root(profile: VendorProfile, serial: str, seed: int, root: Path) -> SimDPU:
    """Build a stand-alone DPU (no host) from a profile and write its OS root."""
    rng = random.Random(f"{seed}:{serial}")
    dpu = make_dpu(profile, serial=serial, dpu_id=serial.lower(), host_id=None, slot=0, rng=rng, macs=MacAllocator(rng))
    write_dpu_root(dpu, root)
    return dpu
