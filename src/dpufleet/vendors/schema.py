"""The schema of the vendor catalog: one DPU model per YAML file, validated as it loads.

Only hardware facts the control plane acts on live here: how to recognise a model (part
numbers, PCI IDs, the vendor and model strings its BMC reports), what it can do (the
capabilities DPU status shows), which firmware components it has and whether each can be
updated, which install paths it supports and which firmware parameters a DPUFlavor may
set. How an emulated card presents itself (serial numbers, DMI strings, boot timings)
is the emulator's business (its profiles, ``sim/profiles.py``), not the product's.

Field names follow what the hardware itself reports (lspci IDs, Redfish firmware
inventory ids), so a file can be checked against a real card.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_HEX4 = re.compile(r"^[0-9a-f]{4}$")
_HEX6 = re.compile(r"^[0-9a-f]{6}$")
# A part-number pattern: the characters vendors use, plus the wildcards * (any run) and ? (one character).
_PART_PATTERN = re.compile(r"^[A-Za-z0-9._/ *?-]+$")

InstallPath = Literal["redfish-update", "http-boot", "virtual-media", "agent", "host-channel"]
INSTALL_PATHS: tuple[InstallPath, ...] = ("redfish-update", "http-boot", "virtual-media", "agent", "host-channel")
AcceleratorKind = Literal["crypto", "compression", "regex", "rdma", "storage", "packet", "ml"]


class Strict(BaseModel):
    """Unknown fields are refused (a typo in a data file is an error, not a silently ignored key)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _unique(values: list[str], what: str) -> None:
    repeated = sorted(value for value, count in Counter(values).items() if count > 1)
    if repeated:
        raise ValueError(f"{what} must be unique; repeated: {', '.join(repeated)}")


class CpuSpec(Strict):
    cores: int = Field(gt=0)
    model: str


class MemorySpec(Strict):
    total_mib: int = Field(gt=0)
    type: str
    speed_mts: int = Field(gt=0)


class StorageSpec(Strict):
    name: str
    kind: Literal["eMMC", "NVMe", "SSD"]
    size_gib: int = Field(gt=0)


class PortSpec(Strict):
    name: str
    speed_gbps: int = Field(gt=0)
    connector: str


class PciIdSpec(Strict):
    """A PCI function type as the host enumerates it (what lspci prints)."""

    vendor_id: str
    device_id: str
    class_code: str
    description: str

    @field_validator("vendor_id", "device_id")
    @classmethod
    def _hex4(cls, value: str) -> str:
        value = value.lower().removeprefix("0x")
        if not _HEX4.match(value):
            raise ValueError(f"expected 4 hex digits, got {value!r}")
        return value

    @field_validator("class_code")
    @classmethod
    def _hex6(cls, value: str) -> str:
        value = value.lower().removeprefix("0x")
        if not _HEX6.match(value):
            raise ValueError(f"expected 6 hex digits, got {value!r}")
        return value


class HostPciSpec(PciIdSpec):
    role: Literal["nic", "management", "bridge", "storage", "accelerator"]
    functions: int = Field(default=1, ge=1, le=8)


class VirtualFunctionSpec(PciIdSpec):
    max_vfs: int = Field(ge=0)


class AcceleratorSpec(Strict):
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


class FirmwareComponent(Strict):
    """One entry of the card's firmware inventory (its Redfish FirmwareInventory id).

    ``kind`` says what an image component replaces (os, nic, bmc, uefi, atf, ...);
    ``updateable`` is false for what no update may write (golden and recovery images,
    CPLDs): an image aimed at such a slot is refused before anything is written.
    """

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    name: str
    kind: str = Field(pattern=r"^[a-z][a-z0-9-]*$")
    updateable: bool = True


class SensorMapping(Strict):
    """How one of the card's BMC sensors maps onto the common metric set (OpenTelemetry's hw.*), where its
    Redfish ReadingType, units or PhysicalContext do not say it: a vendor's own sensor ids, a reading in
    other units (millidegrees), a location the BMC leaves out. Used by the BMC plugin
    (server/telemetry_bmc.py); a sensor no mapping names is mapped by its ReadingType and units."""

    sensor: str = Field(min_length=1, description="the sensor's Redfish Id, or a pattern with * and ?")
    metric: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9_.]*$", description="e.g. hw.temperature")
    unit: str | None = Field(default=None, description="the metric's unit (UCUM), with metric")
    scale: float = Field(default=1.0, gt=0, description="the reading times this is the metric's value")
    location: str | None = Field(default=None, description="hw.sensor_location: soc, nic, board, port0...")
    name: str | None = Field(default=None, description="hw.name, where the BMC's is unhelpful")

    @model_validator(mode="after")
    def _unit_with_metric(self) -> SensorMapping:
        if (self.metric is None) != (self.unit is None):
            raise ValueError("metric and unit go together: name both or neither")
        return self


class FirmwareParameterSpec(Strict):
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

    @model_validator(mode="after")
    def _enum_has_values(self) -> FirmwareParameterSpec:
        if self.type == "enum" and not self.values:
            raise ValueError(f"parameter {self.name!r} is an enum and needs values")
        return self


class DpuModel(Strict):
    """One DPU model as the control plane knows it.

    ``part_numbers`` are patterns (``*`` any run of characters, ``?`` one character, case
    ignored): one model often ships under several part numbers (crypto enabled or not, a
    board revision).
    """

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    vendor: str = Field(min_length=1, description="as the card's BMC reports its Manufacturer")
    family: str = Field(min_length=1, description="the vendor's product line: BlueField, IPU, OCTEON, Pensando DSC")
    model: str = Field(min_length=1, description="as the card's BMC reports its Model")
    part_numbers: list[str] = Field(min_length=1)
    host_pci: list[HostPciSpec] = Field(min_length=1)
    virtual_function: VirtualFunctionSpec | None = None
    cpu: CpuSpec
    memory: MemorySpec
    storage: list[StorageSpec] = Field(min_length=1)
    ports: list[PortSpec] = Field(min_length=1)
    accelerators: list[AcceleratorSpec] = Field(min_length=1)
    firmware: list[FirmwareComponent] = Field(min_length=1)
    firmware_parameters: list[FirmwareParameterSpec] = Field(default_factory=list)
    install_paths: list[InstallPath] = Field(min_length=1, description="the first is used when a DPU names none")
    sensors: list[SensorMapping] = Field(default_factory=list, description="BMC sensors the common set needs told")

    @field_validator("part_numbers")
    @classmethod
    def _patterns(cls, values: list[str]) -> list[str]:
        for value in values:
            if not _PART_PATTERN.match(value):
                raise ValueError(f"{value!r}: a part number may hold letters, digits, . _ / - space and * ? only")
        return values

    @model_validator(mode="after")
    def _consistent(self) -> DpuModel:
        _unique([fw.id for fw in self.firmware], "firmware ids")
        _unique([p.name for p in self.ports], "port names")
        _unique([s.name for s in self.storage], "storage names")
        _unique([p.name for p in self.firmware_parameters], "firmware parameter names")
        _unique(list(self.install_paths), "install paths")
        _unique([p.lower() for p in self.part_numbers], "part numbers")
        return self

    def firmware_of_kind(self, kind: str) -> FirmwareComponent | None:
        return next((fw for fw in self.firmware if fw.kind == kind), None)

    def pci_ids(self) -> list[tuple[str, str, str]]:
        """(vendor id, device id, role) of every PCI function type of the card; its VFs have role "vf"."""
        ids: list[tuple[str, str, str]] = [(f.vendor_id, f.device_id, f.role) for f in self.host_pci]
        if self.virtual_function is not None:
            ids.append((self.virtual_function.vendor_id, self.virtual_function.device_id, "vf"))
        return ids


class GenericModel(Strict):
    """What the control plane assumes of a DPU no model names (``vendors/generic.yaml``): only
    what the Redfish standard promises of any DPU. Its capabilities are unknown, not zero."""

    name: Literal["generic"] = "generic"
    description: str = Field(min_length=1)
    install_paths: list[InstallPath] = Field(min_length=1)
