"""Crawling a BMC's Redfish tree into an inventory: identity, systems, firmware.

Requests are issued level by level, concurrently within a level, because a real
BMC is slow per request but serves a few at once.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, Field, ValidationError

from .client import RedfishClient, RedfishError


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

    @property
    def is_dpu(self) -> bool:
        return (self.systemType or "").upper() == "DPU"


class ManagerInfo(BaseModel):
    id: str
    model: str | None = None
    firmwareVersion: str | None = None
    health: str | None = None


class ChassisInfo(BaseModel):
    id: str
    chassisType: str | None = None
    manufacturer: str | None = None
    model: str | None = None
    partNumber: str | None = None
    serialNumber: str | None = None


class FirmwareInfo(BaseModel):
    id: str
    name: str | None = None
    version: str
    updateable: bool = False


class BMCInventory(BaseModel):
    service: ServiceInfo
    systems: list[SystemInfo] = Field(default_factory=list)
    managers: list[ManagerInfo] = Field(default_factory=list)
    chassis: list[ChassisInfo] = Field(default_factory=list)
    firmware: list[FirmwareInfo] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)

    def dpu_systems(self) -> list[SystemInfo]:
        """Systems that are DPUs (SystemType DPU); a BMC of a DPU card with one plain system counts too."""
        dpus = [s for s in self.systems if s.is_dpu]
        return dpus


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


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


def parse_system(body: dict[str, Any]) -> SystemInfo:
    summary, memory, boot = (
        _obj(body.get("ProcessorSummary")),
        _obj(body.get("MemorySummary")),
        _obj(body.get("BootProgress")),
    )
    reset = _obj(_obj(body.get("Actions")).get("#ComputerSystem.Reset"))
    gib = memory.get("TotalSystemMemoryGiB")
    return SystemInfo(
        id=str(body.get("Id", "")),
        odataId=str(body.get("@odata.id", "")),
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
            count=summary.get("Count") if isinstance(summary.get("Count"), int) else None,
            model=_str(summary.get("Model")),
            cores=summary.get("CoreCount") if isinstance(summary.get("CoreCount"), int) else None,
        ),
        memoryGiB=float(gib) if isinstance(gib, int | float) else None,
        resetTypes=[str(v) for v in _list(reset.get("ResetType@Redfish.AllowableValues"))],
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
    root = root or await client.service_root()
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
                model=_str(m.get("Model")),
                firmwareVersion=_str(m.get("FirmwareVersion")),
                health=_health(m),
            )
            for m in await client.members(managers_link)
        ]

    async def chassis() -> list[ChassisInfo]:
        if not chassis_link:
            return []
        return [
            ChassisInfo(
                id=str(c.get("Id", "")),
                chassisType=_str(c.get("ChassisType")),
                manufacturer=_str(c.get("Manufacturer")),
                model=_str(c.get("Model")),
                partNumber=_str(c.get("PartNumber")),
                serialNumber=_str(c.get("SerialNumber")),
            )
            for c in await client.members(chassis_link)
        ]

    async def firmware() -> list[FirmwareInfo]:
        if not update_link:
            return []
        service = await client.get(update_link)
        inventory_link = client.link(service, "FirmwareInventory")
        if not inventory_link:
            return []
        return [
            FirmwareInfo(
                id=str(f.get("Id", "")),
                name=_str(f.get("Name")),
                version=str(f.get("Version", "")),
                updateable=bool(f.get("Updateable", False)),
            )
            for f in await client.members(inventory_link)
        ]

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
