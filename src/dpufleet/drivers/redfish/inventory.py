"""Crawling a BMC's Redfish tree into an inventory: identity, systems, firmware.

Requests are issued level by level, concurrently within a level, because a real
BMC is slow per request but serves a few at once.

What a device reports is read as it is, not as the standard says it should be: every string
is trimmed (real BMCs pad serial numbers with spaces), a zero processor count or memory size
is a disabled summary rather than a fact and is read as unknown (None, noted in the system's
``implausible``), and a firmware version with no number in it is kept raw and flagged
(``FirmwareInfo.versionParsed``) while the crawl goes on. The links that tie resources
together (a system's chassis, a card chassis ContainedBy the host's, a DPU's offloaded network
device functions) are kept, so recognition (inventory/recognition.py) can tell a DPU from its host.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, Field, ValidationError

from .client import RedfishClient, RedfishError

# A version string a person (or a version comparison) can read: at least one run of digits.
_VERSION = re.compile(r"\d+")


class ServiceInfo(BaseModel):
    vendor: str | None = None
    product: str | None = None
    redfishVersion: str | None = None
    uuid: str | None = None


class ProcessorInfo(BaseModel):
    count: int | None = None
    model: str | None = None
    cores: int | None = None


class SystemInfo(BaseModel):
    id: str
    odataId: str
    systemType: str | None = None
    manufacturer: str | None = None
    model: str | None = None
    partNumber: str | None = None
    serialNumber: str | None = None
    sku: str | None = None
    uuid: str | None = None
    powerState: str | None = None
    bootProgress: str | None = None
    health: str | None = None
    processors: ProcessorInfo = Field(default_factory=ProcessorInfo)
    memoryGiB: float | None = None
    resetTypes: list[str] = Field(default_factory=list)
    macAddresses: list[str] = Field(default_factory=list)
    hostName: str | None = None
    chassisLinks: list[str] = Field(default_factory=list, description="Links.Chassis (@odata.id)")
    hostingSystem: str | None = Field(default=None, description="Links.HostingComputerSystem of a DPU system")
    offloadedFunctions: list[str] = Field(
        default_factory=list, description="Links.OffloadedNetworkDeviceFunctions of a DPU system"
    )
    consoles: list[ConsoleInfo] = Field(default_factory=list, description="ComputerSystem.SerialConsole")
    implausible: list[str] = Field(
        default_factory=list, description="figures the device reported that are not facts (read as unknown)"
    )

    @property
    def is_dpu(self) -> bool:
        return (self.systemType or "").upper() == "DPU"


class ConsoleInfo(BaseModel):
    """A console a BMC offers (Manager.SerialConsole/GraphicalConsole/CommandShell, or the newer
    ComputerSystem.SerialConsole with one entry per protocol and its port)."""

    kind: str = Field(description="serial, graphical or shell")
    enabled: bool | None = None
    connectTypes: list[str] = Field(default_factory=list, description="SSH, IPMI, Telnet, KVMIP, ...")
    ports: dict[str, int] = Field(default_factory=dict, description="port per protocol, where the BMC says")
    source: str = Field(default="", description="the resource that reported it (@odata.id)")


class ManagerInfo(BaseModel):
    id: str
    odataId: str = ""
    model: str | None = None
    firmwareVersion: str | None = None
    health: str | None = None
    managerForServers: list[str] = Field(default_factory=list, description="Links.ManagerForServers (@odata.id)")
    consoles: list[ConsoleInfo] = Field(default_factory=list)
    virtualMedia: str | None = Field(default=None, description="its VirtualMedia collection (@odata.id)")


class ChassisInfo(BaseModel):
    id: str
    odataId: str = ""
    chassisType: str | None = None
    manufacturer: str | None = None
    model: str | None = None
    partNumber: str | None = None
    serialNumber: str | None = None
    containedBy: str | None = Field(default=None, description="Links.ContainedBy (@odata.id)")
    computerSystems: list[str] = Field(default_factory=list, description="Links.ComputerSystems (@odata.id)")


class FirmwareInfo(BaseModel):
    id: str
    name: str | None = None
    version: str
    updateable: bool = False
    versionParsed: bool = Field(default=True, description="false: the version holds no number; kept raw")


class BMCInventory(BaseModel):
    service: ServiceInfo
    systems: list[SystemInfo] = Field(default_factory=list)
    managers: list[ManagerInfo] = Field(default_factory=list)
    chassis: list[ChassisInfo] = Field(default_factory=list)
    firmware: list[FirmwareInfo] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)


def _str(value: Any) -> str | None:
    """A reported string, trimmed; None for a non-string or a blank one."""
    if not isinstance(value, str):
        return None
    return value.strip() or None


def _link(value: Any) -> str | None:
    """The @odata.id of a Redfish link object, trimmed of a trailing slash."""
    target = _str(_obj(value).get("@odata.id"))
    return target.rstrip("/") if target else None


def _links(value: Any) -> list[str]:
    return [t for t in (_link(v) for v in _list(value)) if t]


def _count(value: Any, field: str, implausible: list[str]) -> int | None:
    """A count the device reports; zero (a disabled summary, not a fact) and nonsense are unknown."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    if value <= 0:
        implausible.append(f"{field}={value}")
        return None
    return value


def parse_firmware(body: dict[str, Any]) -> FirmwareInfo:
    """One FirmwareInventory member; a version with no number in it is kept raw and flagged."""
    raw = body.get("Version")
    version = raw.strip() if isinstance(raw, str) else ("" if raw is None else str(raw))
    return FirmwareInfo(
        id=str(body.get("Id", "")).strip(),
        name=_str(body.get("Name")),
        version=version,
        updateable=body.get("Updateable") is True,
        versionParsed=isinstance(raw, str) and bool(_VERSION.search(version)),
    )


def parse_chassis(body: dict[str, Any]) -> ChassisInfo:
    links = _obj(body.get("Links"))
    return ChassisInfo(
        id=str(body.get("Id", "")).strip(),
        odataId=str(body.get("@odata.id", "")).rstrip("/"),
        chassisType=_str(body.get("ChassisType")),
        manufacturer=_str(body.get("Manufacturer")),
        model=_str(body.get("Model")),
        partNumber=_str(body.get("PartNumber")),
        serialNumber=_str(body.get("SerialNumber")),
        containedBy=_link(links.get("ContainedBy")),
        computerSystems=_links(links.get("ComputerSystems")),
    )


def _health(resource: dict[str, Any]) -> str | None:
    status = resource.get("Status")
    return _str(status.get("Health")) if isinstance(status, dict) else None


def parse_service_root(root: dict[str, Any]) -> ServiceInfo:
    oem = _obj(root.get("Oem"))
    vendor = _str(root.get("Vendor")) or (next(iter(oem), None) if oem else None)
    return ServiceInfo(
        vendor=vendor,
        product=_str(root.get("Product")),
        redfishVersion=_str(root.get("RedfishVersion")),
        uuid=_str(root.get("UUID")),
    )


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


_CONSOLES = {"SerialConsole": "serial", "GraphicalConsole": "graphical", "CommandShell": "shell"}
_SYSTEM_CONSOLE_PROTOCOLS = ("SSH", "IPMI", "Telnet", "WebSocket")


def _enabled(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def parse_manager_consoles(body: dict[str, Any]) -> list[ConsoleInfo]:
    """A Manager's consoles (SerialConsole, GraphicalConsole, CommandShell), where it reports them."""
    source = str(body.get("@odata.id", "")).rstrip("/")
    found: list[ConsoleInfo] = []
    for prop, kind in _CONSOLES.items():
        console = _obj(body.get(prop))
        if not console:
            continue
        found.append(ConsoleInfo(
            kind=kind, enabled=_enabled(console.get("ServiceEnabled")),
            connectTypes=[t for t in (_str(v) for v in _list(console.get("ConnectTypesSupported"))) if t],
            source=source,
        ))  # fmt: skip
    return found


def parse_system_consoles(body: dict[str, Any]) -> list[ConsoleInfo]:
    """ComputerSystem.SerialConsole (v1_13 on): one object per protocol, each with ServiceEnabled and Port."""
    console = _obj(body.get("SerialConsole"))
    entries = {p: _obj(console.get(p)) for p in _SYSTEM_CONSOLE_PROTOCOLS if _obj(console.get(p))}
    if not entries:
        return []
    states = {p: _enabled(e.get("ServiceEnabled")) for p, e in entries.items()}
    enabled = True if any(states.values()) else False if all(v is False for v in states.values()) else None
    ports: dict[str, int] = {}
    for protocol, entry in entries.items():
        port = entry.get("Port")
        if states[protocol] is not False and isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536:
            ports[protocol] = port  # 0 or out of range: not a port, not recorded
    return [ConsoleInfo(
        kind="serial", enabled=enabled, connectTypes=[p for p, v in states.items() if v is not False], ports=ports,
        source=str(body.get("@odata.id", "")).rstrip("/"),
    )]  # fmt: skip


def parse_system(body: dict[str, Any]) -> SystemInfo:
    summary, memory, boot = (
        _obj(body.get("ProcessorSummary")),
        _obj(body.get("MemorySummary")),
        _obj(body.get("BootProgress")),
    )
    reset = _obj(_obj(body.get("Actions")).get("#ComputerSystem.Reset"))
    links = _obj(body.get("Links"))
    gib = memory.get("TotalSystemMemoryGiB")
    implausible: list[str] = []
    if isinstance(gib, int | float) and not isinstance(gib, bool) and gib <= 0:
        implausible.append(f"MemorySummary.TotalSystemMemoryGiB={gib}")
        gib = None
    return SystemInfo(
        id=str(body.get("Id", "")).strip(),
        odataId=str(body.get("@odata.id", "")).rstrip("/"),
        systemType=_str(body.get("SystemType")),
        manufacturer=_str(body.get("Manufacturer")),
        model=_str(body.get("Model")),
        partNumber=_str(body.get("PartNumber")),
        serialNumber=_str(body.get("SerialNumber")),
        sku=_str(body.get("SKU")),
        uuid=_str(body.get("UUID")),
        powerState=_str(body.get("PowerState")),
        bootProgress=_str(boot.get("LastState")),
        health=_health(body),
        processors=ProcessorInfo(
            count=_count(summary.get("Count"), "ProcessorSummary.Count", implausible),
            model=_str(summary.get("Model")),
            cores=_count(summary.get("CoreCount"), "ProcessorSummary.CoreCount", implausible),
        ),
        memoryGiB=float(gib) if isinstance(gib, int | float) and not isinstance(gib, bool) else None,
        resetTypes=[str(v) for v in _list(reset.get("ResetType@Redfish.AllowableValues"))],
        hostName=_str(body.get("HostName")),
        chassisLinks=_links(links.get("Chassis")),
        hostingSystem=_link(links.get("HostingComputerSystem")),
        offloadedFunctions=_links(links.get("OffloadedNetworkDeviceFunctions")),
        consoles=parse_system_consoles(body),
        implausible=implausible,
    )


async def _optional(coro: Any, warnings: list[str]) -> Any:
    try:
        return await coro
    except RedfishError as exc:
        warnings.append(str(exc))
        return None


async def crawl(client: RedfishClient, root: dict[str, Any] | None = None, *, macs: bool = True) -> BMCInventory:
    """Read identity, systems, managers, chassis and firmware inventory from one BMC.

    Missing optional parts (a BMC without UpdateService, a broken member) become
    warnings; authentication and reachability failures raise.
    """
    if root is None:
        root = await client.service_root()
    else:
        client.learn_features(root)
    inv = BMCInventory(service=parse_service_root(root))
    warnings = inv.warnings
    systems_link, managers_link = client.link(root, "Systems"), client.link(root, "Managers")
    chassis_link, update_link = client.link(root, "Chassis"), client.link(root, "UpdateService")

    async def systems() -> list[SystemInfo]:
        if not systems_link:
            return []
        bodies = await client.members(systems_link)
        found = [parse_system(body) for body in bodies]
        if macs:
            await asyncio.gather(*(_system_macs(client, b, s, warnings) for b, s in zip(bodies, found, strict=True)))
        return found

    async def managers() -> list[ManagerInfo]:
        if not managers_link:
            return []
        return [
            ManagerInfo(
                id=str(m.get("Id", "")),
                odataId=str(m.get("@odata.id", "")).rstrip("/"),
                model=_str(m.get("Model")),
                firmwareVersion=_str(m.get("FirmwareVersion")),
                health=_health(m),
                managerForServers=_links(_obj(m.get("Links")).get("ManagerForServers")),
                consoles=parse_manager_consoles(m),
                virtualMedia=_link(m.get("VirtualMedia")),
            )
            for m in await client.members(managers_link)
        ]

    async def chassis() -> list[ChassisInfo]:
        if not chassis_link:
            return []
        return [parse_chassis(c) for c in await client.members(chassis_link)]

    async def firmware() -> list[FirmwareInfo]:
        if not update_link:
            return []
        service = await client.get(update_link)
        inventory_link = client.link(service, "FirmwareInventory")
        if not inventory_link:
            return []
        found = [parse_firmware(f) for f in await client.members(inventory_link)]
        warnings.extend(
            f"firmware {f.id}: version {f.version!r} is not a version number; kept as reported"
            for f in found
            if not f.versionParsed
        )
        return found

    try:
        return await _crawl_parts(client, inv, systems, managers, chassis, firmware)
    except (TypeError, AttributeError, KeyError, ValidationError) as exc:
        # a BMC answering JSON of the wrong shape is a device problem, reported as such, not a crash
        raise RedfishError(
            f"{client.base_url}: malformed Redfish: {type(exc).__name__}: {exc}", None, "MalformedRedfish"
        ) from None


async def _crawl_parts(
    client: RedfishClient, inv: BMCInventory, systems: Any, managers: Any, chassis: Any, firmware: Any
) -> BMCInventory:
    warnings = inv.warnings
    found_systems, found_managers, found_chassis, found_firmware = await asyncio.gather(
        systems(),
        _optional(managers(), warnings),
        _optional(chassis(), warnings),
        _optional(firmware(), warnings),
    )
    inv.systems = found_systems
    inv.managers = found_managers or []
    inv.chassis = found_chassis or []
    inv.firmware = found_firmware or []
    return inv


async def _system_macs(client: RedfishClient, body: dict[str, Any], system: SystemInfo, warnings: list[str]) -> None:
    try:
        link = client.link(body, "EthernetInterfaces")
        if not link:
            return
        for nic in await client.members(link):
            mac = _str(nic.get("MACAddress")) or _str(nic.get("PermanentMACAddress"))
            if mac:
                system.macAddresses.append(mac.lower())
    except RedfishError as exc:
        warnings.append(f"system {system.id}: ethernet interfaces: {exc}")


async def firmware_versions(client: RedfishClient, ids: list[str]) -> dict[str, str]:
    """The running version of a few FirmwareInventory items, by id: what a check after an update needs,
    without crawling the whole service (a BMC answers a request in about 0.3 s)."""
    root = await client.lasting("/redfish/v1")
    update_link = client.link(root, "UpdateService")
    if not update_link:
        raise RedfishError(f"{client.base_url}: the BMC has no UpdateService")
    inventory_link = client.link(await client.lasting(update_link), "FirmwareInventory")
    if not inventory_link:
        raise RedfishError(f"{client.base_url}: the UpdateService has no FirmwareInventory")
    base = inventory_link.rstrip("/")
    try:
        items = await asyncio.gather(*(client.get(f"{base}/{quote(fw_id, safe='')}") for fw_id in ids))
        return {fw_id: str(item.get("Version", "")) for fw_id, item in zip(ids, items, strict=True)}
    except (TypeError, AttributeError) as exc:
        raise RedfishError(
            f"{client.base_url}: malformed Redfish: {type(exc).__name__}: {exc}", None, "MalformedRedfish"
        ) from None
