"""Vendor profiles of emulated DPUs: a catalog model plus how the emulator presents it.

The hardware facts of a model (PCI IDs, ports, accelerators, firmware components,
install paths) are the product's vendor catalog (:mod:`dpufleet.vendors`): the emulator
does not keep its own copy, so an emulated card always is what the control plane
believes that model to be. A profile file (``sim/profiles/*.yaml``) names the catalog
model it ``emulates`` and adds only what is the emulator's: the identity of one card
(part number, serial pattern, MAC OUI), what its OS and BMC show (cpuinfo, disk models,
os-release, DMI, BMC strings), its factory firmware versions, its timings and thermals.

Adding a vendor means adding a catalog file and a profile file, never code.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from dpufleet.vendors import Catalog, DataFileError, DpuModel, builtin_catalog
from dpufleet.vendors.files import invalid, read_mapping
from dpufleet.vendors.schema import Strict

PROFILE_DIR = Path(__file__).with_name("profiles")

_OUI = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){2}$")


def _oui(value: str) -> str:
    value = value.lower()
    if not _OUI.match(value):
        raise ValueError(f"expected a MAC OUI like 'aa:bb:cc', got {value!r}")
    return value


class CpuInfoSpec(Strict):
    """What /proc/cpuinfo and Redfish Processors show beyond the catalog's cores and model."""

    implementer: str
    part: str
    variant: str = "0x0"
    revision: int = 0
    mhz: int = Field(gt=0)
    bogomips: float
    features: str


class OsSpec(Strict):
    id: str
    name: str
    version_id: str
    pretty_name: str
    version_codename: str = ""
    kernel_release: str
    kernel_build: str


class DmiSpec(Strict):
    sys_vendor: str
    product_name: str
    board_vendor: str
    board_name: str
    bios_vendor: str
    chassis_vendor: str


class BmcSpec(Strict):
    manufacturer: str
    model: str
    firmware_id: str
    mac_oui: str
    boot_seconds: float = Field(gt=0)
    reset_seconds: float = Field(gt=0)

    @field_validator("mac_oui")
    @classmethod
    def _mac_oui(cls, value: str) -> str:
        return _oui(value)


class ThermalSpec(Strict):
    idle_celsius: float
    critical_celsius: float
    idle_watts: float
    max_watts: float


# Fields of a profile file; the rest of a VendorProfile is the catalog model it emulates.
_EMULATOR_FIELDS = (
    "name",
    "emulates",
    "part_number",
    "serial_pattern",
    "mac_oui",
    "management_interface",
    "cpuinfo",
    "disk_models",
    "factory_firmware",
    "os",
    "dmi",
    "bmc",
    "thermal",
    "redfish_style",
)

# How an emulated BMC describes its DPU in Redfish. "standard": as DMTF's schema says (SystemType
# DPU, identity on the system). "bf-23.10": as a BlueField-3 BMC of the BF-23.10 era does -- the Arm
# system is "Physical" with no Manufacturer, Model, PartNumber or serial of its own, the identity is
# only on the Card chassis and padded with spaces, and ProcessorSummary/MemorySummary report zeros.
RedfishStyle = Literal["standard", "bf-23.10"]


class VendorProfile(DpuModel):
    """One emulated DPU model: the catalog model it ``emulates`` (every inherited field, filled
    from :mod:`dpufleet.vendors` when the profile loads) plus how the emulator presents it."""

    emulates: str
    part_number: str
    serial_pattern: str
    mac_oui: str
    management_interface: str
    cpuinfo: CpuInfoSpec
    disk_models: dict[str, str]
    factory_firmware: dict[str, str]
    os: OsSpec
    dmi: DmiSpec
    bmc: BmcSpec
    thermal: ThermalSpec
    redfish_style: RedfishStyle = "standard"

    @field_validator("mac_oui")
    @classmethod
    def _mac_oui(cls, value: str) -> str:
        return _oui(value)

    @field_validator("serial_pattern")
    @classmethod
    def _pattern_formats(cls, value: str) -> str:
        try:
            value.format(year=24, week=1, n=1)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"serial_pattern may use only {{year}}, {{week}}, {{n}}: {exc}") from exc
        return value

    @model_validator(mode="after")
    def _fits_the_model(self) -> VendorProfile:
        """What the emulator shows must be a card of the catalog model, no more and no less."""
        if not any(fnmatch.fnmatchcase(self.part_number.casefold(), p.casefold()) for p in self.part_numbers):
            raise ValueError(
                f"part_number {self.part_number!r} is not one of the catalog's part_numbers ({', '.join(self.part_numbers)})"
            )
        ids = {fw.id for fw in self.firmware}
        missing = sorted(ids - set(self.factory_firmware))
        if missing:
            raise ValueError(
                f"factory_firmware needs a version of every firmware component; missing {', '.join(missing)}"
            )
        extra = sorted(set(self.factory_firmware) - ids)
        if extra:
            raise ValueError(f"factory_firmware names components the catalog model lacks: {', '.join(extra)}")
        if self.bmc.firmware_id not in ids:
            raise ValueError(f"bmc.firmware_id {self.bmc.firmware_id!r} is not a firmware component")
        unknown_disks = sorted(set(self.disk_models) - {s.name for s in self.storage})
        if unknown_disks:
            raise ValueError(f"disk_models names disks the catalog model lacks: {', '.join(unknown_disks)}")
        if self.management_interface in {p.name for p in self.ports}:
            raise ValueError("management_interface must differ from the data ports")
        return self

    def serial(self, year: int, week: int, n: int) -> str:
        return self.serial_pattern.format(year=year, week=week, n=n)

    def disk_model(self, name: str) -> str:
        return self.disk_models.get(name, "")


def load_profile(path: Path, catalog: Catalog) -> VendorProfile:
    """One profile file over its catalog model; DataFileError names the file and each field at fault."""
    data = read_mapping(path)
    facts = sorted(set(data) & set(DpuModel.model_fields) - {"name"})
    if facts:
        raise DataFileError(
            path,
            [
                f"{key}: a hardware fact, kept in the vendor catalog (dpufleet/vendors/models/), not here"
                for key in facts
            ],
        )
    unknown = sorted(set(data) - set(_EMULATOR_FIELDS))
    if unknown:
        raise DataFileError(path, [f"{key}: unknown field" for key in unknown])
    emulates = data.get("emulates")
    model = catalog.get(emulates) if isinstance(emulates, str) else None
    if model is None:
        known = ", ".join(sorted(m.name for m in catalog))
        raise DataFileError(path, [f"emulates: {emulates!r} is not a catalog model; known: {known}"])
    merged: dict[str, Any] = {**model.model_dump(), **data}
    try:
        profile = VendorProfile.model_validate(merged)
    except ValidationError as exc:
        raise invalid(path, exc) from None
    if profile.name != path.stem:
        raise DataFileError(path, [f"name: {profile.name!r} must match the file name ({path.stem!r})"])
    return profile


def load_profiles(directories: Iterable[Path] = (), catalog: Catalog | None = None) -> dict[str, VendorProfile]:
    """Load the built-in profiles plus any ``*.yaml`` in extra ``directories``, over ``catalog``
    (by default the built-in vendor catalog).

    A later directory's profile replaces an earlier one of the same name, so a site can
    override a built-in profile without editing the package.
    """
    models = catalog if catalog is not None else builtin_catalog()
    profiles: dict[str, VendorProfile] = {}
    for directory in (PROFILE_DIR, *directories):
        for path in sorted(Path(directory).glob("*.yaml")):
            profile = load_profile(path, models)
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
