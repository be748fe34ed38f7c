"""Which systems of a BMC are DPUs, which are their hosts, and the evidence for each answer.

A BMC says what a system is in more ways than SystemType, and real ones disagree with the
standard: a BlueField-3 BMC of the BF-23.10 era reports its Arm system as "Physical", with no
Manufacturer or Model, and keeps the card's identity on its Card chassis. So a system is a DPU
when the evidence says so, by the first of these rules that holds:

    system-type          the system's SystemType is DPU
    card-chassis         the Card chassis of the system names a catalog model (part number, or
                         manufacturer and model)
    firmware-inventory   the BMC serves one system and its FirmwareInventory holds a catalog
                         model's own components (BlueField's DPU_OS, DPU_NIC, ...)

Nothing else makes a DPU: a system of SystemType Physical with none of this (a host server,
sushy-tools' nodes) is never one. On a host's BMC that also manages its DPU (DMTF's SmartNIC
model), the DPU's card chassis is ContainedBy the host's chassis, or the DPU system names its
HostingComputerSystem: that pairs the two, and the links are evidence too.

Identity is merged from the system, then its card chassis, then (on the card's own BMC) the
service root, every string already trimmed by the crawl (drivers/redfish/inventory.py). This module only reads a crawl; the
BMC controller (inventory/bmc.py) writes what it finds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..drivers.redfish.inventory import BMCInventory, ChassisInfo, SystemInfo
from ..vendors import Catalog, DpuModel

Rule = Literal["system-type", "card-chassis", "firmware-inventory"]


@dataclass(frozen=True)
class RecognizedDPU:
    """A system the evidence shows to be a DPU, with its merged identity and catalog model."""

    system: SystemInfo  # identity merged from the system, its card chassis and the service root
    rule: Rule
    evidence: list[dict[str, Any]]
    card: ChassisInfo | None = None
    model: DpuModel | None = None  # None: a model no catalog entry names (adopted as generic)
    generic: str = "generic"  # the catalog's name for such a model (vendors/generic.yaml)
    matched_by: str | None = None
    host: SystemInfo | None = None  # the host server of the same BMC this DPU sits in
    host_evidence: list[dict[str, Any]] = field(default_factory=list)

    def status(self) -> dict[str, Any]:
        """The DPU's `status.recognition`: the rule that matched, the evidence, what is unknown."""
        return {
            "rule": self.rule,
            "model": self.model.name if self.model else self.generic,
            "matchedBy": self.matched_by,
            "evidence": [*self.evidence, *self.host_evidence],
            "unknown": list(self.system.implausible),
        }


@dataclass(frozen=True)
class Recognition:
    dpus: list[RecognizedDPU]
    others: list[SystemInfo]  # systems that are not DPUs (hosts, plain servers)


def _evidence(source: str, kind: str, value: str | None, detail: str | None = None) -> dict[str, Any]:
    return {"source": source, "kind": kind, "value": value or "", "detail": detail}


def card_of(system: SystemInfo, inventory: BMCInventory) -> ChassisInfo | None:
    """The Card chassis holding `system`: linked either way (Links.Chassis, Links.ComputerSystems);
    else, on a BMC of one system that links no chassis, its one Card chassis that links no system."""
    cards = [c for c in inventory.chassis if (c.chassisType or "").casefold() == "card"]
    linked = [c for c in cards if c.odataId in system.chassisLinks or system.odataId in c.computerSystems]
    if linked:
        return linked[0]
    unlinked = [c for c in cards if not c.computerSystems]
    if len(inventory.systems) == 1 and not system.chassisLinks and len(unlinked) == 1:
        return unlinked[0]
    return None


def _merged(system: SystemInfo, card: ChassisInfo | None, inventory: BMCInventory) -> SystemInfo:
    """The system with its identity completed from its card chassis and, on a BMC of this one
    system (the card's own BMC, not a host server's), the service root's Vendor."""

    def first(*values: str | None) -> str | None:
        return next((v for v in values if v), None)

    own_bmc = inventory.service.vendor if len(inventory.systems) == 1 else None
    return system.model_copy(
        update={
            "manufacturer": first(system.manufacturer, card.manufacturer if card else None, own_bmc),
            "model": first(system.model, card.model if card else None),
            "partNumber": first(system.partNumber, card.partNumber if card else None),
            "serialNumber": first(system.serialNumber, card.serialNumber if card else None),
        }
    )


def _rule(
    system: SystemInfo, card: ChassisInfo | None, inventory: BMCInventory, catalog: Catalog, source: str
) -> tuple[Rule, list[dict[str, Any]]] | None:
    """The first rule that shows `system` to be a DPU, with its evidence; None: it is not one."""
    if system.is_dpu:
        return "system-type", [_evidence(source, "system-type", system.systemType, system.odataId)]
    if card is not None:
        match = catalog.lookup(part_number=card.partNumber, vendor=card.manufacturer, model=card.model)
        if match.model is not None:
            value = card.partNumber if match.matched_by == "part-number" else f"{card.manufacturer} {card.model}"
            return "card-chassis", [
                _evidence(source, f"chassis-{match.matched_by}", value, f"{card.odataId} -> {match.model.name}")
            ]
    if len(inventory.systems) == 1:
        scores = catalog.with_firmware(f.id for f in inventory.firmware)
        if scores:
            own = {fw.id.casefold() for name in scores for fw in catalog.models[name].firmware if fw.kind != "bmc"}
            ids = sorted(f.id for f in inventory.firmware if f.id.casefold() in own)
            return "firmware-inventory", [
                _evidence(source, "firmware-inventory", ",".join(ids), f"UpdateService -> {', '.join(sorted(scores))}")
            ]
    return None


def _model(system: SystemInfo, inventory: BMCInventory, catalog: Catalog) -> tuple[DpuModel | None, str | None]:
    match = catalog.lookup(part_number=system.partNumber, vendor=system.manufacturer, model=system.model)
    if match.model is None:
        match = catalog.lookup_firmware(f.id for f in inventory.firmware)
    return match.model, match.matched_by


def _host_of(
    dpu: SystemInfo, card: ChassisInfo | None, others: list[SystemInfo], inventory: BMCInventory, source: str
) -> tuple[SystemInfo | None, list[dict[str, Any]]]:
    """The host server of the same BMC that holds this DPU, by DMTF's SmartNIC links."""
    if dpu.hostingSystem:
        host = next((s for s in others if s.odataId == dpu.hostingSystem), None)
        if host is not None:
            return host, [_evidence(source, "redfish-hosting-system", host.odataId, dpu.odataId)]
    if card is not None and card.containedBy:
        host = next((s for s in others if card.containedBy in s.chassisLinks), None)
        if host is None:  # the host's chassis lists its system (Links.ComputerSystems) instead
            outer = next((c for c in inventory.chassis if c.odataId == card.containedBy), None)
            host = next((s for s in others if outer is not None and s.odataId in outer.computerSystems), None)
        if host is not None:
            found = [_evidence(source, "redfish-contained-by", card.containedBy, f"{card.odataId} -> {host.odataId}")]
            found += [_evidence(source, "redfish-offloaded-function", f, dpu.odataId) for f in dpu.offloadedFunctions]
            return host, found
    return None, []


def recognize(inventory: BMCInventory, catalog: Catalog, source: str) -> Recognition:
    """Every system of one crawl, as a DPU (with its rule and evidence) or not; DPUs paired with
    the host server of the same BMC when the links say so. `source` names the evidence's source."""
    found: list[tuple[SystemInfo, ChassisInfo | None, Rule, list[dict[str, Any]]]] = []
    others: list[SystemInfo] = []
    for system in inventory.systems:
        card = card_of(system, inventory)
        matched = _rule(system, card, inventory, catalog, source)
        if matched is None:
            others.append(system)
        else:
            found.append((system, card, *matched))
    dpus = []
    for system, card, rule, evidence in found:
        merged = _merged(system, card, inventory)
        model, matched_by = _model(merged, inventory, catalog)
        host, host_evidence = _host_of(system, card, others, inventory, source)
        if card is not None and rule != "card-chassis":
            evidence = [*evidence, _evidence(source, "card-chassis", card.partNumber, card.odataId)]
        for manager in inventory.managers[:1]:
            shown = " ".join(v for v in (manager.model, manager.firmwareVersion) if v)
            evidence = [*evidence, _evidence(source, "manager", shown or manager.id, f"Managers/{manager.id}")]
        dpus.append(
            RecognizedDPU(merged, rule, evidence, card, model, catalog.generic.name, matched_by, host, host_evidence)
        )
    return Recognition(dpus, others)
