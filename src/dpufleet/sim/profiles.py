"""Vendor profiles of emulated DPUs, loaded from YAML data files.

A profile describes everything the emulator needs to impersonate one DPU
model: what the host sees on its PCI bus, what the DPU's own OS reports, what
its BMC answers over Redfish. Adding a vendor means adding a YAML file to
``sim/profiles/`` (or to a directory passed to :func:`load_profiles`), never
code.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

PROFILE_DIR = Path(__file__).with_name("profiles")

_HEX4 = re.compile(r"^[0-9a-f]{4}$")
_HEX6 = re.compile(r"^[0-9a-f]{6}$")
_OUI = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){2}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CpuSpec(_Strict):
    cores: int = Field(gt=0)
    model: str
    implementer: str
    part: str
    variant: str = "0x0"
    revision: int = 0
    mhz: int = Field(gt=0)
    bogomips: float
    features: str


class MemorySpec(_Strict):
    total_mib: int = Field(gt=0)
    type: str
    speed_mts: int = Field(gt=0)


class StorageSpec(_Strict):
    name: str
    kind: Literal["eMMC", "NVMe", "SSD"]
    model: str
    size_gib: int = Field(gt=0)


class PortSpec(_Strict):
    name: str
    speed_gbps: int = Field(gt=0)
    connector: str


class PciIdSpec(_Strict):
    """A PCI function type as the host enumerates it (what lspci prints)."""

    vendor_id: str
    device_id: str
    class_code: str
    description: str

    @field_validator("vendor_id", "device_id")
    @classmethod
    def _hex4(cls, value: str) -> str:
        value = value.lower()
        if not _HEX4.match(value):
            raise ValueError(f"expected 4 hex digits, got {value!r}")
        return value

    @field_validator("class_code")
    @classmethod
    def _hex6(cls, value: str) -> str:
        value = value.lower()
        if not _HEX6.match(value):
            raise ValueError(f"expected 6 hex digits, got {value!r}")
        return value


class HostPciSpec(PciIdSpec):
    role: Literal["nic", "management", "bridge", "storage", "accelerator"]
    functions: int = Field(default=1, ge=1, le=8)


class VirtualFunctionSpec(PciIdSpec):
    max_vfs: int = Field(ge=0)


AcceleratorKind = Literal["crypto", "compression", "regex", "rdma", "storage", "packet", "ml"]


class AcceleratorSpec(_Strict):
    kind: AcceleratorKind
    name: str
    algorithms: list[str] = Field(min_length=1)
    throughput_gbps: float | None = None
    iops: int | None = None
    ops_per_second: int | None = None

    @model_validator(mode="after")
    def _has_a_figure(self) -> AcceleratorSpec:
        if self.throughput_gbps is None and self.iops is None and self.ops_per_second is None:
            raise ValueError(f"accelerator {self.name!r} needs throughput_gbps, iops or ops_per_second")
        return self


class FirmwareSpec(_Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    name: str
    kind: str
    version: str
    updateable: bool = True


class OsSpec(_Strict):
    id: str
    name: str
    version_id: str
    pretty_name: str
    version_codename: str = ""
    kernel_release: str
    kernel_build: str


class DmiSpec(_Strict):
    sys_vendor: str
    product_name: str
    board_vendor: str
    board_name: str
    bios_vendor: str
    chassis_vendor: str


class BmcSpec(_Strict):
    manufacturer: str
    model: str
    firmware_id: str
    mac_oui: str
    boot_seconds: float = Field(gt=0)
    reset_seconds: float = Field(gt=0)


class ThermalSpec(_Strict):
    idle_celsius: float
    critical_celsius: float
    idle_watts: float
    max_watts: float


class FirmwareParameterSpec(_Strict):
    """A vendor firmware parameter a DPUFlavor may set (BlueField's mlxconfig NUM_OF_VFS, LINK_TYPE_P1, ...).

    ``limit`` ties a numeric parameter to a device capability: ``max_vfs`` means the value
    may not exceed the model's virtual function limit.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    type: Literal["int", "bool", "enum", "string"]
    values: list[str] = Field(default_factory=list)
    minimum: int | None = None
    maximum: int | None = None
    limit: Literal["max_vfs"] | None = None
    description: str = ""


InstallPath = Literal["redfish-update", "http-boot", "virtual-media", "agent", "host-channel"]


def _default_install_paths() -> list[InstallPath]:
    return ["redfish-update"]


class VendorProfile(_Strict):
    """One DPU model. Field names follow what the hardware itself reports."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    vendor: str
    model: str
    part_number: str
    serial_pattern: str
    mac_oui: str
    cpu: CpuSpec
    memory: MemorySpec
    storage: list[StorageSpec] = Field(min_length=1)
    ports: list[PortSpec] = Field(min_length=1)
    management_interface: str
    host_pci: list[HostPciSpec] = Field(min_length=1)
    virtual_function: VirtualFunctionSpec | None = None
    accelerators: list[AcceleratorSpec] = Field(min_length=1)
    firmware: list[FirmwareSpec] = Field(min_length=1)
    os: OsSpec
    dmi: DmiSpec
    bmc: BmcSpec
    thermal: ThermalSpec
    firmware_parameters: list[FirmwareParameterSpec] = Field(default_factory=list)
    install_paths: list[InstallPath] = Field(default_factory=_default_install_paths)

    @field_validator("mac_oui")
    @classmethod
    def _oui(cls, value: str) -> str:
        value = value.lower()
        if not _OUI.match(value):
            raise ValueError(f"mac_oui must look like 'aa:bb:cc', got {value!r}")
        return value

    @field_validator("serial_pattern")
    @classmethod
    def _pattern_formats(cls, value: str) -> str:
        try:
            value.format(year=24, week=1, n=1)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"serial_pattern may use only {{year}}, {{week}}, {{n}}: {exc}") from exc
        return value

    @model_validator(mode="after")
    def _consistent(self) -> VendorProfile:
        ids = [fw.id for fw in self.firmware]
        if len(set(ids)) != len(ids):
            raise ValueError("firmware ids must be unique")
        if self.bmc.firmware_id not in ids:
            raise ValueError(f"bmc.firmware_id {self.bmc.firmware_id!r} is not a firmware component")
        if self.management_interface in {p.name for p in self.ports}:
            raise ValueError("management_interface must differ from the data ports")
        return self

    def firmware_by_id(self, firmware_id: str) -> FirmwareSpec:
        for fw in self.firmware:
            if fw.id == firmware_id:
                return fw
        raise KeyError(firmware_id)

    def firmware_of_kind(self, kind: str) -> FirmwareSpec | None:
        return next((fw for fw in self.firmware if fw.kind == kind), None)

    def serial(self, year: int, week: int, n: int) -> str:
        return self.serial_pattern.format(year=year, week=week, n=n)


def load_profile(path: Path) -> VendorProfile:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a profile must be a YAML mapping")
    profile = VendorProfile.model_validate(data)
    if profile.name != path.stem:
        raise ValueError(f"{path}: profile name {profile.name!r} must match the file name")
    return profile


def load_profiles(directories: Iterable[Path] = ()) -> dict[str, VendorProfile]:
    """Load the built-in profiles plus any ``*.yaml`` in extra ``directories``.

    A later directory's profile replaces an earlier one of the same name, so a
    site can override a built-in profile without editing the package.
    """
    profiles: dict[str, VendorProfile] = {}
    for directory in (PROFILE_DIR, *directories):
        for path in sorted(directory.glob("*.yaml")):
            profile = load_profile(path)
            profiles[profile.name] = profile
    return profiles


@lru_cache(maxsize=1)
def builtin_profiles() -> dict[str, VendorProfile]:
    """The packaged profiles, loaded once per process."""
    return load_profiles()


def get_profile(name: str) -> VendorProfile:
    profiles = builtin_profiles()
    try:
        return profiles[name]
    except KeyError:
        known = ", ".join(sorted(profiles))
        raise KeyError(f"unknown DPU profile {name!r}; known profiles: {known}") from None
