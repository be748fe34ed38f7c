"""Checking a DPUFlavor against the DPU it is for, before anything is applied.

A flavor that does not fit can brick a DPU (DPF issue 17: hugepages larger than the
memory). Every check names the field at fault, so the refusal tells the user what to fix;
a flavor with any problem is never applied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..api.kinds import DPUFlavorSpec
from ..inventory.catalog import find_profile
from ..vendors import DpuModel, FirmwareParameterSpec, builtin_catalog

_PAGE_BYTES = {"64Ki": 64 * 1024, "2Mi": 2 * 1024**2, "512Mi": 512 * 1024**2, "1Gi": 1024**3}
_MiB = 1024**2


@dataclass(frozen=True)
class FlavorProblem:
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class FlavorDoesNotFit(Exception):
    def __init__(self, flavor: str, dpu: str, problems: list[FlavorProblem]) -> None:
        self.problems = problems
        detail = "; ".join(str(p) for p in problems)
        super().__init__(f"flavor {flavor!r} does not fit DPU {dpu!r}: {detail}")


def profile_of(status: dict[str, Any]) -> DpuModel | None:
    """The catalog entry of a DPU: the model its inventory was matched to, else by identity."""
    caps = status.get("capabilities") or {}
    name = caps.get("catalogProfile")
    matched = builtin_catalog().get(name) if isinstance(name, str) else None
    if matched is not None:
        return matched
    return find_profile(part_number=status.get("partNumber"), vendor=status.get("vendor"), model=status.get("model"))


def check_flavor(spec: DPUFlavorSpec, status: dict[str, Any], profile: DpuModel | None) -> list[FlavorProblem]:
    """Every way `spec` does not fit the DPU whose status (inventory) is given; empty when it fits."""
    problems: list[FlavorProblem] = []
    caps = status.get("capabilities") or {}
    memory_gib = caps.get("memoryGiB")
    cores = (caps.get("cpu") or {}).get("cores")
    memory_mib = int(float(memory_gib) * 1024) if isinstance(memory_gib, int | float) else None

    reserved = spec.reservedResources
    if memory_mib is None and (reserved.memoryMiB or spec.hugepages):
        problems.append(FlavorProblem("status.capabilities.memoryGiB", "the DPU's memory is not known yet"))
    if isinstance(cores, int) and reserved.cpus > cores:
        problems.append(
            FlavorProblem("spec.reservedResources.cpus", f"reserves {reserved.cpus} CPUs; the DPU has {cores}")
        )
    if memory_mib is not None and reserved.memoryMiB > memory_mib:
        problems.append(
            FlavorProblem(
                "spec.reservedResources.memoryMiB", f"reserves {reserved.memoryMiB} MiB; the DPU has {memory_mib} MiB"
            )
        )
    if memory_mib is not None and spec.hugepages:
        total = 0
        for index, pages in enumerate(spec.hugepages):
            size = _PAGE_BYTES[pages.pageSize] * pages.count
            total += size
            if size // _MiB > memory_mib:
                problems.append(
                    FlavorProblem(
                        f"spec.hugepages[{index}].count",
                        f"{pages.count} x {pages.pageSize} = {size // _MiB} MiB of hugepages; "
                        f"the DPU has {memory_mib} MiB of memory",
                    )
                )
        available = memory_mib - reserved.memoryMiB
        if total // _MiB > available and not any(p.field.startswith("spec.hugepages") for p in problems):
            problems.append(
                FlavorProblem(
                    "spec.hugepages",
                    f"{total // _MiB} MiB of hugepages in all; {available} MiB remain after reservedResources",
                )
            )
    problems.extend(_firmware_parameter_problems(spec, caps, profile))
    return problems


def _firmware_parameter_problems(
    spec: DPUFlavorSpec, caps: dict[str, Any], profile: DpuModel | None
) -> list[FlavorProblem]:
    if not spec.firmwareParameters:
        return []
    if profile is None:
        return [
            FlavorProblem(
                "spec.firmwareParameters", "the DPU's model is not in the hardware catalog: no parameters known"
            )
        ]
    known = {p.name: p for p in profile.firmware_parameters}
    problems = []
    for name, value in spec.firmwareParameters.items():
        field = f"spec.firmwareParameters.{name}"
        param = known.get(name)
        if param is None:
            allowed = ", ".join(sorted(known)) or "none"
            problems.append(FlavorProblem(field, f"unknown for {profile.vendor} {profile.model}; known: {allowed}"))
            continue
        problem = _check_value(param, value, caps)
        if problem:
            problems.append(FlavorProblem(field, problem))
    return problems


def _check_value(param: FirmwareParameterSpec, value: str | int | bool, caps: dict[str, Any]) -> str | None:
    if param.type == "bool":
        return None if isinstance(value, bool) else f"must be true or false, not {value!r}"
    if param.type == "enum":
        return None if str(value) in param.values else f"{value!r} is not one of {', '.join(param.values)}"
    if param.type == "string":
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        return f"must be an integer, not {value!r}"
    if param.minimum is not None and value < param.minimum:
        return f"{value} is below the minimum {param.minimum}"
    if param.maximum is not None and value > param.maximum:
        return f"{value} is above the maximum {param.maximum}"
    if param.limit == "max_vfs":
        max_vfs = caps.get("maxVFs")
        if not isinstance(max_vfs, int):
            return "the DPU's virtual function limit (capabilities.maxVFs) is not known"
        if value > max_vfs:
            return f"{value} virtual functions; the device supports at most {max_vfs}"
    return None
