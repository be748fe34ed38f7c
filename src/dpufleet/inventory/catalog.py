"""The hardware catalog as inventory uses it: which model a DPU is, and what that model can do.

Redfish tells cores and memory; it does not tell which accelerators a card has or
how fast they are. The vendor catalog (`dpufleet.vendors`, one YAML file per model)
does; a DPU is matched to a model by part number, then by vendor and model, then by
the PCI IDs a host sees.
"""

from __future__ import annotations

from typing import Any

from ..vendors import DpuModel, builtin_catalog


def find_profile(
    *,
    part_number: str | None = None,
    vendor: str | None = None,
    model: str | None = None,
    pci: tuple[str, str] | None = None,
) -> DpuModel | None:
    """The catalog model of a DPU, or None when the catalog does not know it."""
    return builtin_catalog().lookup(part_number=part_number, vendor=vendor, model=model, pci=pci).model


def catalog_capabilities(profile: DpuModel) -> dict[str, Any]:
    """Capabilities as DPU status shows them (camelCase, units in the names)."""
    return {
        "catalogProfile": profile.name,
        "cpu": {"cores": profile.cpu.cores, "model": profile.cpu.model},
        "memoryGiB": round(profile.memory.total_mib / 1024, 1),
        "storage": [{"name": s.name, "kind": s.kind, "sizeGiB": s.size_gib} for s in profile.storage],
        "ports": [{"name": p.name, "speedGbps": p.speed_gbps, "connector": p.connector} for p in profile.ports],
        "maxVFs": profile.virtual_function.max_vfs if profile.virtual_function else 0,
        "accelerators": [
            {
                k: v
                for k, v in {
                    "kind": a.kind,
                    "name": a.name,
                    "algorithms": list(a.algorithms),
                    "throughputGbps": a.throughput_gbps,
                    "opsPerSecond": a.ops_per_second,
                    "iops": a.iops,
                }.items()
                if v is not None
            }
            for a in profile.accelerators
        ],
    }
