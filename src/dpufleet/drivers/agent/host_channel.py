"""The host-channel install path: the DPU's host pushes the image through the DPU's boot channel (rshim).

For DPUs without a BMC, or whose BMC cannot install. It uses the agent path's order
mechanism (drivers/agent/orders.py): `install` records an order in the DPU's status
(`status.agentInstall.order`) with ``channel: host-channel`` and the serial of the host it is
addressed to (``hostSerial``, from the Host object whose agent pairs with the DPU through PCI
VPD). The host agent of that host -- and no other -- is answered with it on
`GET /agent/v1/install` (server/agent_install.py); it downloads the image (Range resume),
verifies its sha256, resets the DPU through rshim (``SW_RESET 1``), writes the image to the
DPU's boot device and reads the boot log (agent/host_channel.py), reporting
Downloading/Verifying/Writing/Staged and then Booted or FellBack, as a DPU agent does.

No BMC is needed at any step: the push itself resets the DPU and boots the image
(`boots_during_install`, so the Rebooting phase sends no second reset), and the versions the
Configuring phase checks come from the DPU's own agent after that boot (`running_versions`).
A restarted controller polls the same order; the host agent keeps which orders it pushed,
so an image is never pushed twice for one order.
"""

from __future__ import annotations

from typing import Any

from ...api.errors import NotFound
from ..base import InstallNotReady, InstallProgress, InstallState
from ..redfish.client import RedfishError
from .orders import BOOTED, FAILED, FELL_BACK, HOST_CHANNEL, STAGED, STATUS_FIELD, OrderInstall, Reported, order_of


def _unavailable(message: str) -> RedfishError:
    return RedfishError(message, None, "InstallPathUnavailable")


class HostChannelInstall(OrderInstall):
    name = HOST_CHANNEL
    needs_bmc = False
    boots_during_install = True

    async def _host(self, status: dict[str, Any]) -> tuple[str, str]:
        """(Host name, the serial its agent's certificate names): where the order goes."""
        host_name = status.get("host")
        if not host_name:
            raise _unavailable("the DPU has not been seen in a host: the host-channel path needs its host's agent")
        try:
            host = await self.store.call(self.store.get, "Host", host_name, self.project)
        except NotFound:
            raise _unavailable(f"the DPU's host {host_name!r} does not exist") from None
        serial = (host.get("status") or {}).get("serialNumber")
        if not serial:
            raise _unavailable(f"the agent of host {host_name!r} has not reported: it pushes the image")
        return str(host_name), str(serial)

    async def validate(self, target: str) -> None:
        if self.os_target is not None and target != self.os_target:
            raise _unavailable(
                f"the boot channel carries the OS image ({self.os_target}); {target} needs another install path"
            )
        status = await self._status()
        if not status.get("serialNumber"):
            raise _unavailable("the DPU's serial number is not known")
        await self._host(status)

    async def _addressed(self) -> dict[str, Any]:
        """The host whose agent pushes the image, and the DPU it pushes to."""
        status = await self._status()
        host_name, host_serial = await self._host(status)
        return {
            "channel": HOST_CHANNEL,
            "host": host_name,
            "hostSerial": host_serial,
            "dpuSerial": status.get("serialNumber"),
        }

    def _waiting(self, order: dict[str, Any]) -> str:
        return f"waiting for the agent of host {order.get('host')}"

    async def _read(self, reported: Reported) -> InstallProgress:
        order_id, state, message = reported.order_id, reported.state, reported.message
        if state == BOOTED:
            await self._close(order_id)
            return InstallProgress(InstallState.SUCCEEDED, 100, message or "the DPU booted the pushed image")
        if state in (FELL_BACK, FAILED):
            await self._close(order_id)
            reason = reported.reason or ("BootImageRejected" if state == FELL_BACK else "HostPushFailed")
            return InstallProgress(InstallState.FAILED, reported.percent, message or reason, reason)
        if state == STAGED:
            return InstallProgress(InstallState.RUNNING, 100, message or "pushed; the DPU is booting it")
        done, total = reported.done, reported.total
        detail = f"host {reported.order.get('host')}: {state}" + (f" {done}/{total} bytes" if total else "")
        return InstallProgress(InstallState.RUNNING, reported.percent, detail + (f" ({message})" if message else ""))

    async def activate(self) -> None:
        """Nothing to do: pushing the image reset the DPU and booted it (`boots_during_install`)."""

    async def running_versions(self) -> dict[str, str]:
        """The OS version the DPU's own agent reports, from an inventory taken since the order was issued."""
        status = await self._status()
        agent = status.get("agent") or {}
        section = status.get(STATUS_FIELD) or {}
        order = order_of(status) or {}
        seen, version = agent.get("lastInventory"), agent.get("imageVersion")
        issued, booted = order.get("issuedAt"), (section.get("progress") or {}).get("at")
        if not seen or not issued or str(seen) < str(issued):
            raise InstallNotReady("waiting for the DPU's agent to report after the boot")
        if version != order.get("version") and (not booted or str(seen) < str(booted)):
            raise InstallNotReady("waiting for the DPU's agent to report after the boot")
        if self.os_target is None or not version:
            raise InstallNotReady("the DPU's agent reports no OS image version yet")
        return {self.os_target: str(version)}
