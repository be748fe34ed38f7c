"""The hardware catalog: what each DPU model can do, from the vendor profile data files.

Redfish tells cores and memory; it does not tell which accelerators a card has or
how fast they are. The same vendor profiles the emulator uses (one YAML file per
model, `dpufleet/sim/profiles/`) serve as the catalog, matched by part number,
then by vendor and model, then by the PCI IDs a host sees.
"""

from __future__ import annotations

from typing import Any

from ..sim.profiles import VendorProfile, builtin_profiles


def find_profile(
    *,
    part_number: str | None = None,
    vendor: str | None = None,
    model: str | None = None,
    pci: tuple[str, str] | None = None,
) -> VendorProfile | None:
    profiles = list(builtin_profiles().values())
    if part_number:
        for p in profiles:
            if p.part_number.lower() == part_number.lower():
                return p
    if vendor and model:
        for p in profiles:
            if p.vendor.lower() == vendor.lower() and p.model.lower() == model.lower():
                return p
    if pci:
        vid, did = pci[0].lower().removeprefix("0x"), pci[1].lower().removeprefix("0x")
        for p in profiles:
            if any(f.vendor_id == vid and f.device_id == did for f in p.host_pci):
                return p
    return None


def known_pci_ids() -> dict[tuple[str, str], VendorProfile]:
    """(vendor id, device id) of every PCI function a DPU shows its host."""
    return {(f.vendor_id, f.device_id): p for p in builtin_profiles().values() for f in p.host_pci}


def catalog_capabilities(profile: VendorProfile) -> dict[str, Any]:
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
