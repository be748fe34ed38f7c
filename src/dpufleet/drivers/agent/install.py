"""The agent install path: the DPU's own agent writes the inactive A/B slot; a BMC reset switches to it.

The control plane never pushes to an agent. `install` records an order in the DPU's status
(`status.agentInstall.order`: id, target, version, sha256, file name); the agent, which polls
`GET /agent/v1/install` on the mTLS agent listener, is answered only with its own DPU's order
and a freshly signed download URL. It downloads (resuming with `Range`), verifies the sha256,
writes the inactive slot, marks it for the next boot and reports each stage to
`POST /agent/v1/install/status` (`status.agentInstall.progress`: state, bytes, total, slot).
`poll` reads that progress; once the slot is `Staged` it resets the DPU through its BMC
(once: `order.resetAt` is saved first), and the bootloader tries the new slot, falling back
to the previous one if it does not boot. The agent reports the outcome after the boot:
`Booted` (the install succeeded) or `FellBack` (InstallFailed, reason SlotBootFailed, with
the bootloader's reason; the DPU keeps running the previous version), and the slots
(`status.agentInstall.slots`). `activate` resets once more, so the Rebooting phase sees the
DPU come up on the new slot from cold.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from ...api.errors import NotFound
from ...api.meta import isotime, now
from ...controllers.runtime.status import mutate_status
from ...store.store import Store
from ..base import InstallInterface, InstallProgress, InstallRequest, InstallState
from ..redfish.client import RedfishClient, RedfishError
from ..redfish.power import RedfishPower

STATUS_FIELD = "agentInstall"
HOST_CHANNEL = "host-channel"  # order.channel of an order the DPU's host carries out (drivers/agent/host_channel.py)
# What the agent reports, and how the control plane reads it.
RUNNING_STATES = {"Pending", "Downloading", "Verifying", "Writing"}
STAGED = "Staged"  # written and marked for the next boot
BOOTED = "Booted"  # the DPU came up from the new slot
FELL_BACK = "FellBack"  # the new slot did not boot; the bootloader went back to the previous one
FAILED = "Failed"


def order_of(status: dict[str, Any]) -> dict[str, Any] | None:
    order = (status.get(STATUS_FIELD) or {}).get("order")
    return order if isinstance(order, dict) else None


class AgentInstall(InstallInterface):
    name = "agent"

    def __init__(
        self,
        store: Store,
        project: str,
        dpu: str,
        client: RedfishClient | None,
        system: str | None,
        *,
        os_target: str | None = None,
    ) -> None:
        self.store = store
        self.project = project
        self.dpu = dpu
        self.client = client
        self.system = system
        self.os_target = os_target  # the firmware id of the DPU's OS: the only thing slots hold

    async def _status(self) -> dict[str, Any]:
        try:
            doc = await asyncio.to_thread(self.store.get, "DPU", self.dpu, self.project)
        except NotFound:
            raise RedfishError(f"DPU {self.dpu!r} no longer exists") from None
        return dict(doc.get("status") or {})

    async def _mutate(self, change: Any) -> None:
        def mutate(status: dict[str, Any]) -> None:
            section = dict(status.get(STATUS_FIELD) or {})
            change(section)
            status[STATUS_FIELD] = section

        await mutate_status(self.store, "DPU", self.dpu, mutate, self.project)

    async def validate(self, target: str) -> None:
        if self.os_target is not None and target != self.os_target:
            raise RedfishError(
                f"the agent writes OS slots only ({self.os_target}); {target} needs another install path",
                None,
                "InstallPathUnavailable",
            )
        status = await self._status()
        agent = status.get("agent") or {}
        if not agent.get("lastHeartbeat"):
            raise RedfishError(
                "the DPU's agent has never reported: the agent path needs it running", None, "InstallPathUnavailable"
            )
        slots = (status.get(STATUS_FIELD) or {}).get("slots")
        if slots is None:
            raise RedfishError(
                "the DPU's agent has not reported A/B boot slots (too old, or this OS has none)",
                None,
                "InstallPathUnavailable",
            )
        if self.client is None or self.system is None:
            raise RedfishError("the agent path reboots through the DPU's BMC, and it has none", None, "NoBMC")

    async def install(self, request: InstallRequest) -> str:
        order_id = f"{request.sha256[:12]}-{secrets.token_hex(4)}"
        order = {
            "id": order_id,
            "target": request.target,
            "version": request.version,
            "sha256": request.sha256,
            "fileName": f"{request.target}-{request.version}.bin",
            "issuedAt": isotime(now()),
            "open": True,
        }

        def change(section: dict[str, Any]) -> None:
            section["order"] = order
            section["progress"] = {"id": order_id, "state": "Pending"}

        await self._mutate(change)
        return f"agent:{order_id}"

    async def find_started(self, request: InstallRequest, since: str) -> str | None:
        order = order_of(await self._status())
        if order and order.get("open") and order.get("sha256") == request.sha256:
            return f"agent:{order['id']}"
        return None

    async def _close(self, order_id: str) -> None:
        def change(section: dict[str, Any]) -> None:
            order = section.get("order") or {}
            if order.get("id") == order_id:
                section["order"] = {**order, "open": False}

        await self._mutate(change)

    async def poll(self, handle: str) -> InstallProgress:
        order_id = handle.removeprefix("agent:")
        section = (await self._status()).get(STATUS_FIELD) or {}
        order = section.get("order") or {}
        if order.get("id") != order_id:
            return InstallProgress(InstallState.FAILED, None, "the install order was replaced", "OrderLost")
        progress = section.get("progress") or {}
        if progress.get("id") != order_id:
            return InstallProgress(InstallState.RUNNING, 0, "waiting for the DPU's agent to pick up the order")
        state = str(progress.get("state") or "Pending")
        done, total = progress.get("bytes"), progress.get("total")
        percent = int(done * 100 / total) if isinstance(done, int) and isinstance(total, int) and total else None
        slot = progress.get("slot")
        if state == STAGED and not order.get("resetAt"):
            await self._reboot(order_id)
            return InstallProgress(InstallState.RUNNING, 100, f"slot {slot} written; rebooting the DPU into it")
        if state == BOOTED:
            await self._close(order_id)
            return InstallProgress(
                InstallState.SUCCEEDED, 100, f"the DPU booted slot {slot}: {progress.get('message') or ''}".strip()
            )
        if state == FELL_BACK:
            await self._close(order_id)
            return InstallProgress(
                InstallState.FAILED, 100, str(progress.get("message") or "the new slot did not boot"), "SlotBootFailed"
            )
        if state == STAGED:
            return InstallProgress(InstallState.RUNNING, 100, f"waiting for the DPU to boot slot {slot}")
        if state == FAILED:
            await self._close(order_id)
            reason = str(progress.get("reason") or "AgentInstallFailed")
            return InstallProgress(InstallState.FAILED, percent, str(progress.get("message") or reason), reason)
        detail = f"agent: {state}" + (f" {done}/{total} bytes" if total else "") + (f" to slot {slot}" if slot else "")
        return InstallProgress(InstallState.RUNNING, percent, detail)

    async def _reboot(self, order_id: str) -> None:
        """Reset through the BMC, once: `resetAt` is saved first, so a restarted controller waits instead."""
        if self.client is None or self.system is None:
            raise RedfishError("the agent path reboots through the DPU's BMC, and it has none")

        def change(section: dict[str, Any]) -> None:
            order = section.get("order") or {}
            if order.get("id") == order_id:
                section["order"] = {**order, "resetAt": isotime(now())}

        await self._mutate(change)
        await RedfishPower(self.client, self.system).reset("ForceRestart")

    async def activate(self) -> None:
        if self.client is None or self.system is None:
            raise RedfishError("the agent path reboots through the DPU's BMC, and it has none")
        await RedfishPower(self.client, self.system).reset("ForceRestart")
