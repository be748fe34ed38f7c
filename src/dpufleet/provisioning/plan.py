"""Which image components go to which firmware slot of a DPU, and through which install path."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..api.kinds import ComponentType, ImageComponent, ImageSpec
from ..sim.profiles import VendorProfile
from .machine import StepFailed

# Image component type -> the firmware kind of the vendor profile's inventory it replaces.
_FIRMWARE_KIND = {
    ComponentType.OS: "os",
    ComponentType.NIC_FIRMWARE: "nic",
    ComponentType.BMC_FIRMWARE: "bmc",
    ComponentType.UEFI: "uefi",
    ComponentType.ATF: "atf",
}


@dataclass(frozen=True)
class PlannedComponent:
    component: ImageComponent
    target: str  # firmware inventory id

    @property
    def file_name(self) -> str:
        """`<target>-<version>.bin`: BMCs (and the emulator) read the version from the file name."""
        return f"{self.target}-{self.component.version}.bin"


def plan_components(image: ImageSpec, profile: VendorProfile | None, image_name: str) -> list[PlannedComponent]:
    if profile is None:
        raise StepFailed("UnknownModel", "the DPU's model is not in the hardware catalog", retryable=False)
    planned = []
    for component in image.components:
        kind = _FIRMWARE_KIND.get(component.type)
        firmware = profile.firmware_of_kind(kind) if kind else None
        if firmware is None or not firmware.updateable:
            raise StepFailed(
                "NoInstallTarget",
                f"image {image_name!r} component {component.name!r} (type {component.type}) has no updateable "
                f"firmware slot on {profile.vendor} {profile.model}",
                retryable=False,
            )
        planned.append(PlannedComponent(component, firmware.id))
    return planned


def choose_install_path(spec: dict[str, Any], profile: VendorProfile | None) -> str:
    supported = list(profile.install_paths) if profile else ["redfish-update"]
    wanted = spec.get("installPath")
    if wanted and wanted not in supported:
        raise StepFailed(
            "InstallPathUnsupported",
            f"spec.installPath {wanted!r} is not supported by this model; it supports {', '.join(supported)}",
            retryable=False,
        )
    return str(wanted or supported[0])
