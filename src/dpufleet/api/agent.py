"""The agent protocol's inventory report: what a DPU's or host's agent says the machine is.

The agent (agent/inventory.py) fills it from the machine's own files; the control plane
(inventory/reports.py) shapes DPU and Host status from it. Both sides import it from here.
"""

from __future__ import annotations

import json

from pydantic import BaseModel, Field


class CpuInfo(BaseModel):
    count: int | None = None
    model: str | None = None
    architecture: str | None = None


class MemoryInfo(BaseModel):
    total_bytes: int | None = None
    available_bytes: int | None = None


class DiskInfo(BaseModel):
    name: str
    size_bytes: int | None = None
    model: str | None = None
    rotational: bool | None = None


class NicInfo(BaseModel):
    name: str
    mac: str | None = None
    speed_mbps: int | None = None
    operstate: str | None = None
    mtu: int | None = None


class VpdInfo(BaseModel):
    """PCI Vital Product Data: how a host tells which DPU (by serial) is in a slot."""

    product_name: str | None = None
    part_number: str | None = None
    serial_number: str | None = None
    fields: dict[str, str] = Field(default_factory=dict)


class KnownDpu(BaseModel):
    profile: str
    vendor: str
    model: str
    role: str


class AerCounters(BaseModel):
    """PCIe Advanced Error Reporting counters of a function (sysfs aer_dev_*), since boot."""

    correctable: int = 0
    nonfatal: int = 0  # uncorrectable, non-fatal
    fatal: int = 0  # uncorrectable, fatal
    errors: dict[str, int] = Field(default_factory=dict)  # "<fatal|nonfatal|correctable>/<type>" -> count, nonzero

    @property
    def uncorrectable(self) -> int:
        return self.nonfatal + self.fatal


class FilesystemInfo(BaseModel):
    mountpoint: str
    fstype: str | None = None
    size_bytes: int
    used_bytes: int
    available_bytes: int
    used_percent: float  # as df(1) computes it: used / (used + available)


class PciFunction(BaseModel):
    bdf: str
    vendor_id: str | None = None
    device_id: str | None = None
    class_code: str | None = None
    subsystem_vendor_id: str | None = None
    subsystem_device_id: str | None = None
    vpd: VpdInfo | None = None
    dpu: KnownDpu | None = None
    aer: AerCounters | None = None  # None when the kernel exposes no AER counters for it

    @property
    def slot(self) -> str:
        """Domain:bus:device, shared by all functions of one card."""
        return self.bdf.rsplit(".", 1)[0]


class HostDpu(BaseModel):
    """A DPU seen from its host: one card, one or more PCI functions."""

    slot: str
    profile: str
    vendor: str
    model: str
    serial_number: str | None = None
    part_number: str | None = None
    functions: list[str]


class OsRelease(BaseModel):
    id: str | None = None
    name: str | None = None
    version_id: str | None = None
    pretty_name: str | None = None
    image_version: str | None = None  # IMAGE_VERSION: the OS image (DPU_OS) the machine booted


class DmiInfo(BaseModel):
    sys_vendor: str | None = None
    product_name: str | None = None
    product_serial: str | None = None
    product_uuid: str | None = None
    board_vendor: str | None = None
    board_name: str | None = None
    board_serial: str | None = None
    bios_vendor: str | None = None
    bios_version: str | None = None
    chassis_serial: str | None = None


class Inventory(BaseModel):
    hostname: str | None = None
    kernel_release: str | None = None
    kernel_version: str | None = None
    os: OsRelease = Field(default_factory=OsRelease)
    dmi: DmiInfo = Field(default_factory=DmiInfo)
    cpu: CpuInfo = Field(default_factory=CpuInfo)
    memory: MemoryInfo = Field(default_factory=MemoryInfo)
    disks: list[DiskInfo] = Field(default_factory=list)
    nics: list[NicInfo] = Field(default_factory=list)
    pci: list[PciFunction] = Field(default_factory=list)
    dpus: list[HostDpu] = Field(default_factory=list)
    filesystems: list[FilesystemInfo] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)

    @property
    def serial_number(self) -> str | None:
        return self.dmi.product_serial or self.dmi.board_serial

    def fingerprint(self) -> str:
        """What must be re-sent when it changes: everything but free memory, and disk usage to the percent."""
        data = self.model_dump(mode="json", exclude={"memory": {"available_bytes"}, "warnings": True})
        data["filesystems"] = [(f.mountpoint, round(f.used_percent)) for f in self.filesystems]
        return json.dumps(data, sort_keys=True)
