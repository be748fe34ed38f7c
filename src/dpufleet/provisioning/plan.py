"""Which image components go to which firmware slot of a DPU, in which order, with which resets,
and through which install path."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..api.kinds import ComponentType, ImageComponent, ImageSpec
from ..lifecycle.planner import StepAction, Unsatisfiable, plan_update
from ..vendors import DpuModel, builtin_catalog
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


def plan_components(
    image: ImageSpec, profile: DpuModel | None, image_name: str, reported: list[dict[str, Any]] | None = None
) -> list[PlannedComponent]:
    """Each image component's firmware slot: by its type on the catalog model; on a generic DPU (no
    model names it) by its name among the slots the DPU's own firmware inventory reports (`reported`,
    status.firmware), which are all a generic DPU is known by."""
    if profile is None:
        return _plan_generic(image, image_name, reported or [])
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


def _plan_generic(image: ImageSpec, image_name: str, reported: list[dict[str, Any]]) -> list[PlannedComponent]:
    slots = {str(f.get("id") or f.get("name")): f for f in reported if f.get("id") or f.get("name")}
    updateable = sorted(name for name, f in slots.items() if f.get("updateable", True) is not False)
    planned = []
    for component in image.components:
        slot = slots.get(component.name)
        if slot is None or slot.get("updateable", True) is False:
            why = "is not updateable" if slot is not None else "is not in its firmware inventory"
            raise StepFailed(
                "NoInstallTarget",
                f"image {image_name!r} component {component.name!r}: this DPU's model is not in the hardware "
                f"catalog (generic), so a component must name one of the updateable firmware slots its BMC "
                f"reports ({', '.join(updateable) or 'none'}); {component.name!r} {why}",
                retryable=False,
            )
        planned.append(PlannedComponent(component, component.name))
    return planned


def choose_install_path(spec: dict[str, Any], profile: DpuModel | None) -> str:
    supported = list(profile.install_paths) if profile else list(builtin_catalog().generic.install_paths)
    wanted = spec.get("installPath")
    if wanted and wanted not in supported:
        model = "this model" if profile else "a generic DPU (its model is not in the hardware catalog)"
        raise StepFailed(
            "InstallPathUnsupported",
            f"spec.installPath {wanted!r} is not supported by {model}; it supports {', '.join(supported)}",
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
