"""What is installed: signed Images and the DPUFlavors that configure a DPU after install."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ...crypto.signing import ManifestRefused, parse_signed_manifest
from ..meta import Status, Strict
from .base import Resource
from .registry import _PHASE, Column, KindInfo, register

# --- Image ------------------------------------------------------------------------------------------------


class ComponentType(StrEnum):
    OS = "os"
    NIC_FIRMWARE = "nic-firmware"
    BMC_FIRMWARE = "bmc-firmware"
    UEFI = "uefi"
    ATF = "atf"
    FPGA_BITSTREAM = "fpga-bitstream"
    AGENT = "agent"
    OTHER = "other"


class UpdateImpact(StrEnum):
    """What installing a component does to the DPU and its host."""

    LIVE = "live"  # no reset: agent, services, firmware with in-service update
    DPU_RESET = "dpu-reset"  # the DPU reboots; the host stays up without the DPU's functions meanwhile
    HOST_RESET = "host-reset"  # the host must reboot or power-cycle


class ComponentRequirement(Strict):
    component: str
    minVersion: str | None = None
    maxVersion: str | None = None


class ImageComponent(Strict):
    name: str = Field(description="the firmware inventory id it replaces, e.g. DPU_OS, DPU_NIC, BMC_Firmware")
    type: ComponentType
    version: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int | None = Field(default=None, ge=0)
    url: str | None = None
    impact: UpdateImpact = UpdateImpact.DPU_RESET
    requires: list[ComponentRequirement] = Field(default_factory=list)
    conflicts: list[ComponentRequirement] = Field(default_factory=list)
    after: list[str] = Field(default_factory=list, description="components updated before this one")


class Compatibility(Strict):
    vendors: list[str] = Field(default_factory=list)
    models: list[str] = Field(default_factory=list)
    partNumbers: list[str] = Field(default_factory=list)


def signed_manifest(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """A `signedManifest` field's check (images and services): the envelope parses, or ValueError says why."""
    if value is not None:
        try:
            parse_signed_manifest(json.dumps(value))
        except ManifestRefused as exc:
            raise ValueError(f"not a signed manifest: {exc.message}") from None
    return value


class ImageSpec(Strict):
    version: str
    components: list[ImageComponent] = Field(min_length=1)
    compatibility: Compatibility = Field(default_factory=Compatibility)
    signedManifest: dict[str, Any] | None = Field(
        default=None,
        description="the publisher's signed manifest (`dpufleet image sign`): {manifest, signatures}; verified "
        "at staging against the trusted Publishers, the components' sha256 and the DPU",
    )

    @field_validator("signedManifest")
    @classmethod
    def _signed_manifest(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return signed_manifest(value)


class ImageComponentStatus(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    sha256: str
    available: bool = False
    size: int | None = None
    verifiedAt: str | None = None
    error: str | None = None


class ImageStatus(Status):
    components: list[ImageComponentStatus] = Field(default_factory=list)


class Image(Resource):
    kind: Literal["Image"] = "Image"
    spec: ImageSpec
    status: ImageStatus = Field(default_factory=ImageStatus)


# --- DPUFlavor --------------------------------------------------------------------------------------------


class ConfigFile(Strict):
    path: str = Field(pattern=r"^/")
    content: str
    mode: str = Field(default="0644", pattern=r"^0?[0-7]{3,4}$")
    operation: Literal["override", "append"] = "override"


class Hugepages(Strict):
    pageSize: Literal["2Mi", "1Gi", "512Mi", "64Ki"] = "2Mi"
    count: int = Field(ge=0)


class ReservedResources(Strict):
    cpus: int = Field(default=0, ge=0)
    memoryMiB: int = Field(default=0, ge=0)


class DPUFlavorSpec(Strict):
    kernelParameters: list[str] = Field(default_factory=list)
    sysctl: dict[str, str] = Field(default_factory=dict)
    configFiles: list[ConfigFile] = Field(default_factory=list)
    firmwareParameters: dict[str, str | int | bool] = Field(default_factory=dict)
    reservedResources: ReservedResources = Field(default_factory=ReservedResources)
    hugepages: list[Hugepages] = Field(default_factory=list)


class DPUFlavor(Resource):
    kind: Literal["DPUFlavor"] = "DPUFlavor"
    spec: DPUFlavorSpec = Field(default_factory=DPUFlavorSpec)
    status: Status = Field(default_factory=Status)


register(
    KindInfo(
        "Image",
        "images",
        Image,
        ("image", "img"),
        (Column("VERSION", "spec.version"), Column("COMPONENTS", "spec.components[*].name"), _PHASE),
    )
)

register(
    KindInfo(
        "DPUFlavor",
        "dpuflavors",
        DPUFlavor,
        ("dpuflavor", "flavor", "flavors"),
        (Column("HUGEPAGES", "spec.hugepages[*].count"), Column("KERNEL-PARAMS", "spec.kernelParameters")),
    )
)
