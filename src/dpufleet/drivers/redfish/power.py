"""Power control of a Redfish ComputerSystem (the DPU's Arm system, or a host)."""

from __future__ import annotations

from enum import StrEnum

from ..base import PowerInterface
from .client import RedfishClient, RedfishError


class PowerState(StrEnum):
    ON = "On"
    OFF = "Off"
    POWERING_ON = "PoweringOn"
    POWERING_OFF = "PoweringOff"


class RedfishPower(PowerInterface):
    def __init__(self, client: RedfishClient, system: str) -> None:
        self.client = client
        self.system = system  # the system's @odata.id

    async def validate(self) -> None:
        await self.client.get(self.system)

    async def get_power_state(self) -> str:
        body = await self.client.get(self.system)
        return str(body.get("PowerState", "Unknown"))

    async def reset(self, reset_type: str) -> None:
        body = await self.client.lasting(self.system)  # only its Reset action is read: that does not change
        action = (body.get("Actions") or {}).get("#ComputerSystem.Reset") or {}
        target = action.get("target")
        if not target:
            raise RedfishError(f"{self.client.url(self.system)}: the system offers no Reset action")
        allowed = action.get("ResetType@Redfish.AllowableValues")
        if allowed and reset_type not in allowed:
            raise RedfishError(f"reset type {reset_type!r} is not supported here; the BMC allows {', '.join(allowed)}")
        await self.client.post(target, {"ResetType": reset_type})
