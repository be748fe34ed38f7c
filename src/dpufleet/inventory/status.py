"""A DPU's status as its sources describe it: the BMC's Redfish crawl, the DPU's agent, the host's agent.

Three writers describe one DPU, each at its own pace (a crawl every few minutes, an agent report
every few seconds, the host agent when it inventories), each with a read-modify-write of the
status (runtime/status.py). They share one merge rule so that none undoes another:

- a source **owns** the fields it is the authority on and writes them as it last saw them;
- it **fills** fields another source owns only while nobody has written them (absent, None or
  empty): the agent's CPU and memory figures until a BMC reports them, the host agent's card
  identity for a DPU no BMC describes;
- it **replaces its own evidence** and leaves everyone else's (`status.evidence`, keyed by the
  source family: `bmc/<bmc>`, `agent`, `host-agent/<host>`).

Who owns what:

    BMC (crawl)   bmc, vendor, model, partNumber, serialNumber, bmcSystem, firmware, updateHistory,
                  health, powerState, bootProgress, lastSeen, remaining, recognition, Inventoried,
                  ModelKnown; fills host (a host server on the same BMC, DMTF's SmartNIC model); capabilities
                  cpu and memoryGiB (when the BMC reports them) and accelerators (from the catalog);
                  the rest of the catalog's capabilities are filled
    DPU agent     agent, lastSeen, capabilities.os, AgentConnected; fills serialNumber and
                  capabilities cpu and memoryGiB
    host agent    host; fills partNumber, vendor, model

The functions below only shape a status dict; the callers (inventory/bmc.py, reports.py) read
the sources and write the result.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from ..api.agent import HostDpu, Inventory
from ..api.meta import Severity, isotime
from ..drivers.redfish.inventory import BMCInventory, SystemInfo
from ..runtime.conditions import set_condition, summarize_ready
from ..vendors import DpuModel
from .catalog import catalog_capabilities

UPDATE_HISTORY_KEPT = 50
DPU_IDENTITY_STEPS = ["Inventoried"]
# Provisioning phases in which a changed firmware version is provisioning's own doing
PROVISIONING_WRITES = frozenset({"StagingImage", "Installing", "Rebooting", "Configuring"})


def _unset(value: Any) -> bool:
    return value is None or value == "" or value == {} or value == []


def merge(target: dict[str, Any], *, owned: Mapping[str, Any] = {}, filled: Mapping[str, Any] = {}) -> None:
    """The merge rule: `owned` fields are written as given; `filled` ones (of no value: skipped) only
    where `target` has none yet."""
    for key, value in filled.items():
        if not _unset(value) and _unset(target.get(key)):
            target[key] = value
    target.update(owned)


def replace_evidence(status: dict[str, Any], family: str, entries: Iterable[dict[str, Any]]) -> None:
    """The source family's evidence (`family` or `family/...`) replaced by `entries`; others' kept."""
    kept = [
        e
        for e in status.get("evidence") or []
        if not (str(e.get("source", "")) == family or str(e.get("source", "")).startswith(family + "/"))
    ]
    status["evidence"] = [*kept, *entries]


# --- the BMC's Redfish crawl ------------------------------------------------------------------------------


def firmware_changes(status: dict[str, Any], inventory: BMCInventory, stamp: str) -> list[dict[str, Any]]:
    """Components whose version differs from the last crawl, each as an update-history entry.

    A change while dpufleet is provisioning the DPU is its own doing; any other change was
    pushed through the BMC (Redfish) or made by hand, and is reconciled into inventory and
    reported, so the fleet's record of what runs where stays true; fleet/drift.py then
    reconciles it with the DPU's spec.image.
    """
    before = {f.get("id"): f.get("version") for f in status.get("firmware") or [] if f.get("id")}
    if not before:
        return []  # first inventory: nothing changed, it was only learned
    phase = ((status.get("provisioning") or {}).get("phase")) or ""
    ours = phase in PROVISIONING_WRITES
    return [
        {
            "time": stamp,
            "component": f.id,
            "from": before[f.id],
            "to": f.version,
            "source": "provisioning" if ours else "out-of-band",
        }
        for f in inventory.firmware
        if f.id in before and before[f.id] != f.version
    ]


def apply_crawl(
    status: dict[str, Any],
    *,
    bmc: str,
    inventory: BMCInventory,
    system: SystemInfo,
    part_number: str | None,
    profile: DpuModel | None,
    stamp: str,
    generation: Any,
    recognition: dict[str, Any] | None = None,
    host: str | None = None,
    host_evidence: Iterable[dict[str, Any]] = (),
) -> list[dict[str, Any]]:
    """What one crawl of BMC `bmc` says about the DPU of `system`; returns its firmware changes.

    `recognition` is why the crawl takes the system for a DPU (inventory/recognition.py); `host`
    the host server the same BMC shows it in, with the links that say so (`host_evidence`)."""
    changes = firmware_changes(status, inventory, stamp)
    if changes:
        status["updateHistory"] = [*(status.get("updateHistory") or []), *changes][-UPDATE_HISTORY_KEPT:]
    catalog = catalog_capabilities(profile) if profile is not None else {}
    owned_caps: dict[str, Any] = {k: v for k, v in catalog.items() if k == "accelerators"}
    if system.processors.cores or system.processors.model:
        owned_caps["cpu"] = {"cores": system.processors.cores, "model": system.processors.model}
    if system.memoryGiB:
        owned_caps["memoryGiB"] = system.memoryGiB
    caps: dict[str, Any] = dict(status.get("capabilities") or {})
    merge(caps, owned=owned_caps, filled={k: v for k, v in catalog.items() if k != "accelerators"})
    merge(
        status,
        owned={
            "bmc": bmc,
            "vendor": system.manufacturer or inventory.service.vendor,
            "model": system.model,
            "partNumber": part_number,
            "serialNumber": system.serialNumber,
            "bmcSystem": system.odataId or None,
            "firmware": [f.model_dump() for f in inventory.firmware],
            "capabilities": caps,
            "health": system.health,
            "powerState": system.powerState,
            "bootProgress": system.bootProgress,
            "lastSeen": stamp,
            **({"recognition": recognition} if recognition is not None else {}),
        },
        filled={"host": host},
    )
    source = f"bmc/{bmc}"
    replace_evidence(
        status,
        "bmc",
        [
            {"source": source, "kind": "serial", "value": system.serialNumber},
            *({"source": source, "kind": "mac", "value": mac} for mac in system.macAddresses),
            *host_evidence,
        ],
    )
    set_model_known(status, profile, system, generation)
    reserved = status.get("allocated") or {}
    cores = (caps.get("cpu") or {}).get("cores") or 0
    # allocated is what DPU services take (services/ writes it in millicores and MiB)
    used_cores = float(reserved.get("cpuMillicores", 0)) / 1000
    used_gib = float(reserved.get("memoryMiB", 0)) / 1024
    status["remaining"] = {
        "cores": max(0, cores - int(used_cores + 0.999)),
        "memoryGiB": max(0.0, float(caps.get("memoryGiB") or 0) - used_gib),
    }
    set_condition(status, "Inventoried", True, "RedfishCrawled", f"through BMC {bmc}", generation=generation)
    if not status.get("phase"):
        status["phase"] = "Discovered"
    if not status.get("provisioning"):  # once provisioning runs, it owns the Ready summary
        summarize_ready(status, DPU_IDENTITY_STEPS, generation)
    return changes


def set_model_known(status: dict[str, Any], profile: DpuModel | None, system: SystemInfo, generation: Any) -> None:
    """ModelKnown: the catalog names the DPU's model; False (GenericModel) flags a DPU adopted as a
    generic one, inventoried from what it reports with its catalog capabilities unknown."""
    if profile is not None:
        set_condition(status, "ModelKnown", True, "CatalogModel", profile.name, generation=generation)
        return
    said = ", ".join(f"{k} {v!r}" for k, v in (("vendor", system.manufacturer), ("model", system.model),
                     ("part number", system.partNumber)) if v) or "no vendor, model or part number"  # fmt: skip
    set_condition(
        status, "ModelKnown", False, "GenericModel",
        f"no catalog model matches ({said}): adopted as a generic DPU, capabilities unknown; "
        "add the model to the catalog (docs/guide/discovery.md)",
        severity=Severity.WARNING, generation=generation,
    )  # fmt: skip


# --- the DPU's agent ----------------------------------------------------------------------------------------


def apply_agent_report(
    status: dict[str, Any],
    *,
    serial: str,
    agent_version: str,
    received: datetime,
    sent_at: datetime | None,
    inventory: Inventory | None,
) -> None:
    """A heartbeat (and with `inventory`, the OS inventory) from the DPU's own agent."""
    stamp = isotime(received)
    agent = dict(status.get("agent") or {})
    agent.update(version=agent_version, lastHeartbeat=stamp)
    if sent_at is not None:
        sent = sent_at if sent_at.tzinfo else sent_at.replace(tzinfo=UTC)
        agent.update(sentAt=isotime(sent), clockSkewSeconds=round((sent - received).total_seconds(), 3))
    merge(status, owned={"lastSeen": stamp}, filled={"serialNumber": serial})
    if inventory is not None:
        inv = inventory
        agent.update(
            lastInventory=stamp,
            os=inv.os.pretty_name,
            kernel=inv.kernel_release,
            imageVersion=inv.os.image_version,
            filesystems=[f.model_dump() for f in inv.filesystems],
        )
        caps = dict(status.get("capabilities") or {})
        merge(
            caps,
            owned={
                "os": {
                    "disks": [d.model_dump(exclude_none=True) for d in inv.disks],
                    "nics": [n.model_dump(exclude_none=True) for n in inv.nics],
                }
            },
            filled={
                "cpu": {"cores": inv.cpu.count, "model": inv.cpu.model} if inv.cpu.count else None,
                "memoryGiB": round(inv.memory.total_bytes / 2**30, 1) if inv.memory.total_bytes else None,
            },
        )
        status["capabilities"] = caps
        replace_evidence(
            status,
            "agent",
            ({"source": "agent", "kind": "mac", "value": n.mac.lower(), "detail": n.name} for n in inv.nics if n.mac),
        )
    status["agent"] = agent
    set_condition(status, "AgentConnected", True, "Heartbeat", f"agent {agent_version}")


# --- the host's agent ---------------------------------------------------------------------------------------


def apply_host_pairing(status: dict[str, Any], *, host: str, serial: str, slot: str, card: HostDpu | None) -> None:
    """The host agent saw this DPU's serial in PCI slot `slot` of `host` (its VPD); `card`: what it read
    of the card, identity for a DPU no BMC describes (host-channel installs need its model)."""
    merge(
        status,
        owned={"host": host},
        filled={"partNumber": card.part_number, "vendor": card.vendor, "model": card.model} if card else {},
    )
    replace_evidence(
        status,
        "host-agent",
        [{"source": f"host-agent/{host}", "kind": "pci-vpd-serial", "value": serial, "detail": f"slot {slot}"}],
    )
