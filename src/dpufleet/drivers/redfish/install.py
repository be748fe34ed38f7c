"""Install path through a BMC's UpdateService: Redfish SimpleUpdate (UEFI HTTP boot and virtual
media are in netboot.py).

redfish-update (BlueField and Bare Metal Manager style): the BMC fetches the image from
the repository's signed URL, writes it to a FirmwareInventory target and reports a Task;
a reset activates it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..base import InstallBusy, InstallInterface, InstallProgress, InstallRequest, InstallState
from .client import RedfishClient, RedfishError
from .power import RedfishPower

_SIMPLE_UPDATE = "#UpdateService.SimpleUpdate"
_FAILED_TASK_STATES = {"Exception", "Killed", "Cancelled", "Interrupted", "Suspended"}


@dataclass(frozen=True)
class BootState:
    """What tells a reboot happened: the power state and the last boot progress with its time."""

    power_state: str | None
    last_state: str | None
    last_state_time: str | None

    @property
    def running(self) -> bool:
        return self.power_state == "On" and self.last_state == "OSRunning"


async def find_dpu_system(client: RedfishClient, serial: str | None) -> str:
    """The @odata.id of the DPU's ComputerSystem (SystemType DPU, matching serial if given)."""
    root = await client.lasting("/redfish/v1")
    link = client.link(root, "Systems")
    if not link:
        raise RedfishError(f"{client.base_url}: the BMC lists no Systems")
    systems = await client.members(link)
    dpus = [s for s in systems if str(s.get("SystemType", "")).upper() == "DPU"] or systems
    for system in dpus:
        if serial is None or system.get("SerialNumber") == serial:
            return str(system["@odata.id"])
    raise RedfishError(f"{client.base_url}: no DPU system with serial {serial!r}")


async def read_boot(client: RedfishClient, system: str) -> BootState:
    body = await client.get(system)
    progress: dict[str, Any] = body["BootProgress"] if isinstance(body.get("BootProgress"), dict) else {}
    return BootState(
        power_state=body.get("PowerState"),
        last_state=progress.get("LastState"),
        last_state_time=progress.get("LastStateTime"),
    )


def _message(task: dict[str, Any]) -> str:
    texts = [str(m.get("Message")) for m in task.get("Messages") or [] if isinstance(m, dict) and m.get("Message")]
    return "; ".join(texts[-2:])


class RedfishUpdateInstall(InstallInterface):
    name = "redfish-update"

    def __init__(self, client: RedfishClient, system: str, reset_type: str = "ForceRestart") -> None:
        self.client = client
        self.system = system
        self.reset_type = reset_type

    async def _service(self) -> dict[str, Any]:
        root = await self.client.lasting("/redfish/v1")
        link = self.client.link(root, "UpdateService")
        if not link:
            raise RedfishError(f"{self.client.base_url}: the BMC has no UpdateService")
        return await self.client.lasting(link)

    async def _inventory_item(self, service: dict[str, Any], target: str) -> str:
        inventory = self.client.link(service, "FirmwareInventory")
        if not inventory:
            raise RedfishError(f"{self.client.base_url}: the UpdateService has no FirmwareInventory")
        return f"{urlsplit(self.client.url(inventory)).path.rstrip('/')}/{target}"

    async def validate(self, target: str) -> None:
        service = await self._service()
        if _SIMPLE_UPDATE not in (service.get("Actions") or {}):
            raise RedfishError(f"{self.client.base_url}: the UpdateService offers no SimpleUpdate")
        item = await self.client.get(await self._inventory_item(service, target))
        if not item.get("Updateable", False):
            raise RedfishError(f"firmware {target!r} is not updateable through this BMC")

    async def install(self, request: InstallRequest) -> str:
        service = await self._service()
        action = (service.get("Actions") or {}).get(_SIMPLE_UPDATE) or {}
        target_uri = action.get("target")
        if not target_uri:
            raise RedfishError(f"{self.client.base_url}: the UpdateService offers no SimpleUpdate")
        body = {
            "ImageURI": request.image_url,
            "TransferProtocol": "HTTPS" if request.image_url.startswith("https://") else "HTTP",
            "Targets": [await self._inventory_item(service, request.target)],
        }
        try:
            _status, payload, headers = await self.client.post(target_uri, body)
        except RedfishError as exc:
            if exc.status == 409:
                raise InstallBusy(str(exc)) from None
            raise
        location = headers.get("Location") or (payload or {}).get("@odata.id")
        if not location:
            raise RedfishError("SimpleUpdate answered without a task to follow (no Location)")
        return str(urlsplit(location).path if location.startswith("http") else location)

    async def find_started(self, request: InstallRequest, since: str) -> str | None:
        root = await self.client.lasting("/redfish/v1")
        tasks_service = self.client.link(root, "Tasks")
        if not tasks_service:
            return None
        service = await self.client.lasting(tasks_service)
        link = self.client.link(service, "Tasks")
        if not link:
            return None
        for task in await self.client.members(link):
            name = str(task.get("Name", ""))
            started = str(task.get("StartTime", ""))
            if request.sha256 in name or (started and started >= since[:19]):
                return str(task["@odata.id"])
        return None

    async def poll(self, handle: str) -> InstallProgress:
        task = await self.client.get(handle)
        state = str(task.get("TaskState", ""))
        percent = task.get("PercentComplete") if isinstance(task.get("PercentComplete"), int) else None
        if state == "Completed":
            if task.get("TaskStatus") == "Critical":
                return InstallProgress(InstallState.FAILED, percent, _message(task) or "the task completed Critical")
            return InstallProgress(InstallState.SUCCEEDED, 100, _message(task))
        if state in _FAILED_TASK_STATES:
            return InstallProgress(InstallState.FAILED, percent, _message(task) or f"task {state}")
        return InstallProgress(InstallState.RUNNING, percent, _message(task))

    async def activate(self) -> None:
        await RedfishPower(self.client, self.system).reset(self.reset_type)


INSTALL_PATHS: dict[str, type[RedfishUpdateInstall]] = {
    RedfishUpdateInstall.name: RedfishUpdateInstall,
}  # the other paths: drivers/redfish/netboot.py, drivers/agent/install.py; all by name in drivers/registry.py
