"""Host power: reset a server that carries DPUs.

The interface is what the power-action controller needs: reset, and the state it waits on (is the
host's OS running again, a mark that grows with each boot). Its Redfish implementation drives the
host's own BMC (drivers/redfish/hostbmc.py, Host.spec.bmcRef); HttpHostPower below is a small HTTP
power endpoint (Host.spec.powerURL) for hosts without one.

- ``GET {url}`` -> ``{"powerState": "On", "osRunning": true, "bootCount": 3}``
- ``POST {url}/reset`` ``{"resetType": "ForceRestart"}`` -> 202
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import httpx

from .base import PowerInterface


class HostPowerError(Exception):
    """The host's power endpoint refused or could not be reached."""


@dataclass(frozen=True)
class HostPowerState:
    power_state: str
    running: bool
    boot_count: int
    # False when the host reports nothing that grows with each boot (a Redfish BMC with neither
    # BootProgress.LastStateTime nor LastResetTime): a restart is then done once the host is On again.
    boot_counted: bool = True


class HostPowerInterface(PowerInterface):
    @abc.abstractmethod
    async def state(self) -> HostPowerState:
        """The host's power state, whether its OS runs, and its boot count."""

    async def aclose(self) -> None:
        """Release connections."""


class HttpHostPower(HostPowerInterface):
    def __init__(self, url: str, token: str | None = None, timeout: float = 10.0, verify: bool = True) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(headers=headers, timeout=timeout, verify=verify)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            response = await self._http.request(method, url, json=body)
        except httpx.HTTPError as exc:
            raise HostPowerError(f"{url}: {type(exc).__name__}: {exc}") from None
        try:
            data = response.json() if response.content else {}
        except ValueError:
            data = {}
        if response.status_code >= 400:
            why = data.get("error") if isinstance(data, dict) else None
            raise HostPowerError(f"{method} {url}: HTTP {response.status_code}: {why or response.text[:200]}")
        if not isinstance(data, dict):
            raise HostPowerError(f"{method} {url}: the answer is not a JSON object")
        return data

    async def validate(self) -> None:
        await self._call("GET", self.url)

    async def state(self) -> HostPowerState:
        body = await self._call("GET", self.url)
        return HostPowerState(
            power_state=str(body.get("powerState", "Unknown")),
            running=bool(body.get("osRunning")),
            boot_count=int(body.get("bootCount") or 0),
        )

    async def get_power_state(self) -> str:
        return (await self.state()).power_state

    async def reset(self, reset_type: str) -> None:
        await self._call("POST", f"{self.url}/reset", {"resetType": reset_type})
