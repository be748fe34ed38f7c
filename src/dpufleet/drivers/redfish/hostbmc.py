"""A host's own BMC over Redfish: power, restarts, boot override and hardware info of its ComputerSystem.

The Redfish implementation of drivers/hostpower.py's interface, so the power-action controller drives
a real server through its BMC (Host.spec.bmcRef) the way it drives a DPU's. Redfish has no boot count,
so a boot is marked by the time of the last boot-progress change (BootProgress.LastStateTime), else by
the system's LastResetTime. A BMC that reports neither (sushy-tools' fake driver, older firmware) gives
no mark: a restart is then taken as done once the system is On again, as Ironic's Redfish driver does.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..hostpower import HostPowerError, HostPowerInterface, HostPowerState
from .client import RedfishClient, RedfishError
from .inventory import parse_system
from .power import RedfishPower

BOOT_ENABLED = ("Once", "Continuous", "Disabled")


@dataclass(frozen=True)
class HostHardware:
    """What the host's BMC reports of its hardware; None where it reports nothing (zero is not a fact)."""

    serial_number: str | None
    cpu_model: str | None
    cpu_count: int | None
    memory_gib: float | None


def _boot_mark(system: dict[str, Any]) -> int | None:
    """Redfish has no boot count: the time (ms) of the last boot-progress change, else of the last reset,
    which grows with each boot; None when the system reports neither."""
    progress = system.get("BootProgress") or {}
    for stamp in (progress.get("LastStateTime"), system.get("LastResetTime")):
        if not stamp:
            continue
        try:
            return int(datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp() * 1000)
        except ValueError:
            continue
    return None


def hardware_of(system: dict[str, Any]) -> HostHardware:
    """The host's figures as the DPU crawl reads a system (parse_system: trimmed, zeros unknown)."""
    info = parse_system(system)
    return HostHardware(
        serial_number=info.serialNumber,
        cpu_model=info.processors.model,
        cpu_count=info.processors.count,
        memory_gib=info.memoryGiB,
    )


async def find_host_system(client: RedfishClient) -> str:
    """The @odata.id of the host's ComputerSystem: the first system that is not a DPU's."""
    try:
        root = await client.lasting("/redfish/v1")
        link = client.link(root, "Systems")
        systems = await client.members(link) if link else []
    except RedfishError as exc:
        raise HostPowerError(str(exc)) from None
    for system in systems:
        if str(system.get("SystemType", "")).upper() != "DPU":
            return str(system["@odata.id"])
    raise HostPowerError(f"{client.base_url}: the BMC lists no host system (only DPUs, or none)")


class RedfishHostPower(HostPowerInterface):
    def __init__(self, client: RedfishClient, system: str, *, owns_client: bool = True) -> None:
        self.client = client
        self.system = system  # the host system's @odata.id
        self._power = RedfishPower(client, system)
        self._owns_client = owns_client  # a pooled client (drivers/redfish/pool.py) is closed by its pool

    async def aclose(self) -> None:
        if self._owns_client:
            await self.client.aclose()

    async def _get(self) -> dict[str, Any]:
        try:
            return await self.client.get(self.system)
        except RedfishError as exc:
            raise HostPowerError(str(exc)) from None

    async def validate(self) -> None:
        await self._get()

    async def state(self) -> HostPowerState:
        body = await self._get()
        power = str(body.get("PowerState", "Unknown"))
        progress = body.get("BootProgress") or {}
        last = progress.get("LastState")
        running = last == "OSRunning" if last else power == "On"
        mark = _boot_mark(body)
        return HostPowerState(power_state=power, running=running, boot_count=mark or 0, boot_counted=mark is not None)

    async def get_power_state(self) -> str:
        return (await self.state()).power_state

    async def reset(self, reset_type: str) -> None:
        try:
            await self._power.reset(reset_type)
        except RedfishError as exc:
            raise HostPowerError(str(exc)) from None

    async def set_boot_override(self, target: str, enabled: str = "Once") -> None:
        """Boot the host from `target` (Pxe, Hdd, Cd, UefiHttp...) once or until told otherwise."""
        if enabled not in BOOT_ENABLED:
            raise HostPowerError(f"BootSourceOverrideEnabled {enabled!r}: expected one of {', '.join(BOOT_ENABLED)}")
        boot = (await self._get()).get("Boot") or {}
        allowed = boot.get("BootSourceOverrideTarget@Redfish.AllowableValues")
        if allowed and target not in allowed:
            raise HostPowerError(f"boot target {target!r} is not supported here; the BMC allows {', '.join(allowed)}")
        body = {"Boot": {"BootSourceOverrideTarget": target, "BootSourceOverrideEnabled": enabled}}
        try:
            await self.client.patch(self.system, body)
        except RedfishError as exc:
            raise HostPowerError(str(exc)) from None

    async def boot_override(self) -> tuple[str, str]:
        boot = (await self._get()).get("Boot") or {}
        return str(boot.get("BootSourceOverrideTarget", "None")), str(boot.get("BootSourceOverrideEnabled", "Disabled"))

    async def hardware(self) -> HostHardware:
        return hardware_of(await self._get())


@dataclass(frozen=True)
class MediaSlot:
    """One virtual media device of the host's BMC (a virtual CD, a USB stick)."""

    odata_id: str
    media_types: tuple[str, ...]
    image: str | None
    inserted: bool
    insert_target: str | None
    eject_target: str | None


def _media_slot(body: dict[str, Any]) -> MediaSlot:
    actions = body.get("Actions") if isinstance(body.get("Actions"), dict) else {}
    assert isinstance(actions, dict)

    def target(name: str) -> str | None:
        action = actions.get(name)
        found = action.get("target") if isinstance(action, dict) else None
        return str(found) if isinstance(found, str) and found else None

    types = body.get("MediaTypes")
    image = body.get("Image")
    return MediaSlot(
        odata_id=str(body.get("@odata.id", "")).rstrip("/"),
        media_types=tuple(str(t) for t in types) if isinstance(types, list) else (),
        image=image.strip() or None if isinstance(image, str) else None,
        inserted=body.get("Inserted") is True,
        insert_target=target("#VirtualMedia.InsertMedia"),
        eject_target=target("#VirtualMedia.EjectMedia"),
    )


class RedfishVirtualMedia:
    """The host BMC's virtual media: the slots of the manager that manages the host's system (DMTF's
    Manager.VirtualMedia), an image inserted by URL and ejected through the slot's own actions."""

    def __init__(self, client: RedfishClient, system: str) -> None:
        self.client, self.system = client, system

    async def slots(self) -> list[MediaSlot]:
        try:
            root = await self.client.lasting("/redfish/v1")
            link = self.client.link(root, "Managers")
            managers = await self.client.members(link) if link else []
            mine = [m for m in managers if self.system in _ids((m.get("Links") or {}).get("ManagerForServers"))]
            found: list[MediaSlot] = []
            for manager in mine or managers[:1]:
                media = self.client.link(manager, "VirtualMedia")
                if media:
                    found.extend(_media_slot(b) for b in await self.client.members(media))
            return found
        except RedfishError as exc:
            raise HostPowerError(str(exc)) from None

    async def _slot(self, media_type: str) -> MediaSlot:
        slots = await self.slots()
        if not slots:
            raise HostPowerError(f"{self.client.base_url}: the host's BMC offers no virtual media")
        for slot in slots:
            if media_type in slot.media_types or not slot.media_types:
                return slot
        offered = sorted({t for s in slots for t in s.media_types})
        raise HostPowerError(f"no virtual media slot takes {media_type!r}; the BMC offers {', '.join(offered)}")

    async def insert(self, image: str, media_type: str = "CD") -> MediaSlot:
        """Insert `image` (an http(s) URL the BMC fetches) into the first slot that takes `media_type`;
        a slot already holding that image is left as it is."""
        slot = await self._slot(media_type)
        if slot.inserted and slot.image == image:
            return slot
        if slot.insert_target is None:
            raise HostPowerError(f"{slot.odata_id}: the slot offers no VirtualMedia.InsertMedia action")
        try:
            if slot.inserted and slot.eject_target:
                await self.client.post(slot.eject_target, {})
            await self.client.post(slot.insert_target, {"Image": image, "Inserted": True, "WriteProtected": True})
        except RedfishError as exc:
            raise HostPowerError(str(exc)) from None
        return await self._slot(media_type)

    async def eject(self, media_type: str = "CD") -> None:
        slot = await self._slot(media_type)
        if not slot.inserted:
            return
        if slot.eject_target is None:
            raise HostPowerError(f"{slot.odata_id}: the slot offers no VirtualMedia.EjectMedia action")
        try:
            await self.client.post(slot.eject_target, {})
        except RedfishError as exc:
            raise HostPowerError(str(exc)) from None


def _ids(links: Any) -> list[str]:
    if not isinstance(links, list):
        return []
    return [str(link["@odata.id"]).rstrip("/") for link in links if isinstance(link, dict) and "@odata.id" in link]
