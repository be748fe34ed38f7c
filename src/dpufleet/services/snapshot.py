"""From stored documents to the scheduler's snapshot: a `Node` per DPU, a `Request` per service.

A DPU's allocatable resources are its capacity from inventory (status.capabilities: CPU cores,
memoryGiB, storage) minus what its flavor reserves (reservedResources, and hugepages, which are
the only memory offered as hugepagesMiB). Its allocated resources are the sum of its DPUAllocation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..api.kinds import DPUFlavorSpec, DPUServiceSpec, Phase
from ..api.meta import MAX_UPGRADING_ANNOTATION, parse_max_upgrading
from ..api.selectors import LabelSelector
from .scheduling import Node, Request, Resources, Shape

_PAGE_MIB = {"2Mi": 2, "1Gi": 1024, "512Mi": 512, "64Ki": 1 / 16}


def reserved_of(flavor: DPUFlavorSpec | None) -> tuple[Resources, int]:
    """What a flavor keeps from services (cores as millicores, memory) and the hugepages it sets up (MiB)."""
    if flavor is None:
        return Resources(), 0
    hugepages = int(sum(_PAGE_MIB[p.pageSize] * p.count for p in flavor.hugepages))
    reserved = flavor.reservedResources
    return Resources(reserved.cpus * 1000, reserved.memoryMiB), hugepages


def capacity_of(status: Mapping[str, Any]) -> Resources:
    caps = status.get("capabilities") or {}
    cores = (caps.get("cpu") or {}).get("cores") or 0
    memory = caps.get("memoryGiB") or 0
    storage = sum(float(s.get("sizeGiB") or 0) for s in caps.get("storage") or [] if isinstance(s, Mapping))
    return Resources(int(cores) * 1000, int(float(memory) * 1024), 0, int(storage * 1024))


def allocatable_of(status: Mapping[str, Any], flavor: DPUFlavorSpec | None) -> Resources:
    capacity = capacity_of(status)
    reserved, hugepages = reserved_of(flavor)
    return Resources(
        max(0, capacity.cpu_millicores - reserved.cpu_millicores),
        max(0, capacity.memory_mib - reserved.memory_mib - hugepages),
        hugepages,
        capacity.storage_mib,
    )


def resources_dict(res: Resources) -> dict[str, int]:
    """As DPU status shows them (status.allocatable, status.allocated)."""
    return {
        "cpuMillicores": res.cpu_millicores,
        "memoryMiB": res.memory_mib,
        "hugepagesMiB": res.hugepages_mib,
        "storageMiB": res.storage_mib,
    }


def shape_of(status: Mapping[str, Any]) -> Shape:
    caps = status.get("capabilities") or {}
    accelerators: set[str] = set()
    offloads: set[str] = set()
    for acc in caps.get("accelerators") or []:
        if isinstance(acc, Mapping):
            accelerators.update(str(acc[k]) for k in ("kind", "name") if acc.get(k))
            offloads.update(str(a).strip().lower() for a in acc.get("algorithms") or [] if str(a).strip())
            if acc.get("kind"):
                offloads.add(str(acc["kind"]).strip().lower())
    return Shape(
        vendor=str(status.get("vendor") or ""),
        model=str(status.get("model") or ""),
        part_number=str(status.get("partNumber") or ""),
        capabilities=frozenset(k for k, v in caps.items() if v not in (None, False, "", [], {})),
        accelerators=frozenset(accelerators),
        os=str((status.get("agent") or {}).get("os") or "").strip(),
        kernel=str((status.get("agent") or {}).get("kernel") or "").strip(),
        offloads=frozenset(offloads),
    )


def allocation_sum(instances: list[dict[str, Any]]) -> Resources:
    total = Resources()
    for inst in instances:
        total = total + request_resources(inst)
    return total


def request_resources(doc: Mapping[str, Any]) -> Resources:
    return Resources(
        int(doc.get("cpuMillicores") or 0),
        int(doc.get("memoryMiB") or 0),
        int(doc.get("hugepagesMiB") or 0),
        int(doc.get("storageMiB") or 0),
    )


DRAIN_ANNOTATION = "dpufleet.io/drain"  # set with spec.unschedulable by `dpufleet dpu drain`


def node_of(
    dpu: Mapping[str, Any],
    allocation: Mapping[str, Any] | None,
    flavor: DPUFlavorSpec | None,
    shapes: dict[Shape, Shape] | None = None,
) -> Node:
    """`shapes` interns the shapes of one snapshot, so the filter decides compatibility once per shape."""
    meta, spec, status = dpu["metadata"], dpu.get("spec") or {}, dpu.get("status") or {}
    shape = shape_of(status)
    if shapes is not None:
        shape = shapes.setdefault(shape, shape)
    instances = list(((allocation or {}).get("spec") or {}).get("instances") or [])
    return Node(
        name=meta["name"],
        host=status.get("host") or spec.get("hostRef"),
        shape=shape,
        labels=meta.get("labels") or {},
        allocatable=allocatable_of(status, flavor),
        allocated=allocation_sum(instances),
        services={str(i["service"]) for i in instances},
        ready=status.get("phase") == Phase.READY,
        unschedulable=bool(spec.get("unschedulable")),
        draining=bool(spec.get("unschedulable")) and bool((meta.get("annotations") or {}).get(DRAIN_ANNOTATION)),
        max_upgrading=_max_upgrading(meta.get("annotations") or {}),
        core_ids=core_ids_of(status, flavor),
        pinned={int(c) for i in instances for c in i.get("cores") or []},
    )


def core_ids_of(status: Mapping[str, Any], flavor: DPUFlavorSpec | None) -> tuple[int, ...]:
    """The cores an instance may pin: the DPU's (capabilities.cpu.cores), less the first ones, which the flavor
    reserves for the DPU's OS (reservedResources.cpus)."""
    cores = int(((status.get("capabilities") or {}).get("cpu") or {}).get("cores") or 0)
    reserved = flavor.reservedResources.cpus if flavor is not None else 0
    return tuple(range(min(reserved, cores), cores))


def _max_upgrading(annotations: Mapping[str, str]) -> int | None:
    """The DPU's limit on services upgrading there at once (checked when the DPU is written; None if absent)."""
    text = annotations.get(MAX_UPGRADING_ANNOTATION)
    try:
        return parse_max_upgrading(text) if text is not None else None
    except ValueError:
        return None


def request_of(name: str, spec: DPUServiceSpec) -> Request:
    res, compat, placement = spec.resources, spec.compatibility, spec.placement
    selector: LabelSelector | None = None if placement.selector.is_empty() else placement.selector
    # an instance run on the host (placement.runsOn Host) takes nothing from its DPU: charged 0
    charged = placement.runsOn == "DPU"
    return Request(
        service=name,
        resources=Resources(res.charged_millicores, res.memoryMiB, res.hugepagesMiB, res.storageMiB)
        if charged
        else Resources(),
        vendors=tuple(compat.vendors),
        models=tuple(compat.models),
        part_numbers=tuple(compat.partNumbers),
        capabilities=tuple(compat.capabilities),
        os=tuple(compat.os),
        kernels=tuple(compat.kernels),
        offloads=tuple(o.strip().lower() for o in compat.offloads),
        pinned_cores=res.pinnedCores if charged else 0,
        accelerators=tuple(res.accelerators),
        selector=selector.matches if selector is not None else None,
        dpus=frozenset(placement.dpus) if placement.mode == "DPUs" else None,
        every=placement.mode == "EveryDPU",
        replicas=placement.replicas or 0,
        max_per_host=placement.maxPerHost,
        affinity=tuple(placement.affinity),
        anti_affinity=tuple(placement.antiAffinity),
        exclude=frozenset(placement.exclude),
        prefer=frozenset(placement.prefer),
        same_dpu_dependencies=tuple(d.service for d in spec.dependsOn if d.scope == "SameDPU"),
        priority=spec.priority,
    )
