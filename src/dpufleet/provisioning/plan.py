"""Which image components go to which firmware slot of a DPU, in which order, with which resets,
and through which install path."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..api.kinds import ComponentType, ImageComponent, ImageSpec
from ..lifecycle.planner import StepAction, Unsatisfiable, plan_update
from ..vendors import DpuModel
from .machine import StepFailed

# Image component type -> the firmware kind of the catalog model's inventory it replaces.
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


def plan_components(image: ImageSpec, profile: DpuModel | None, image_name: str) -> list[PlannedComponent]:
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


def choose_install_path(spec: dict[str, Any], profile: DpuModel | None) -> str:
    supported = list(profile.install_paths) if profile else ["redfish-update"]
    wanted = spec.get("installPath")
    if wanted and wanted not in supported:
        raise StepFailed(
            "InstallPathUnsupported",
            f"spec.installPath {wanted!r} is not supported by this model; it supports {', '.join(supported)}",
            retryable=False,
        )
    return str(wanted or supported[0])


def update_plan(planned: list[PlannedComponent], status: dict[str, Any]) -> list[dict[str, Any]]:
    """The steps that write `planned` to this DPU (lifecycle/planner.py): every component, ordered by
    its dependencies, with one reset after each run of disruptive ones and none after live ones.

    Requirements are checked against the DPU's firmware inventory. An impossible request is
    refused for good, with every reason.
    """
    installed = {
        str(f["id"]): str(f["version"]) for f in status.get("firmware") or [] if f.get("id") and f.get("version")
    }
    for item in planned:  # a component is known by its name in the image, by its slot on the DPU
        if item.component.name != item.target and item.target in installed:
            installed.setdefault(item.component.name, installed[item.target])
    try:
        plan = plan_update(installed, [p.component for p in planned], reinstall=True)
    except Unsatisfiable as exc:
        raise StepFailed("UpdateUnsatisfiable", "; ".join(exc.reasons), retryable=False) from None
    return [
        {
            "action": str(step.action),
            **({"component": step.component} if step.component else {}),
            **({"from": step.from_version} if step.from_version else {}),
            **({"to": step.to_version} if step.to_version else {}),
            "impact": str(step.impact),
            **({"why": step.why} if step.why else {}),
        }
        for step in plan.steps
    ]


def describe_plan(steps: list[dict[str, Any]]) -> str:
    installs = sum(1 for s in steps if s["action"] == StepAction.INSTALL)
    reboots = sum(1 for s in steps if s["action"] == StepAction.REBOOT_DPU)
    hosts = sum(1 for s in steps if s["action"] == StepAction.RESET_HOST)
    text = f"{installs} install(s), {reboots} DPU reboot(s), {hosts} host reset(s)"
    return text + ("" if reboots or hosts else ": a live update, nothing is reset")
