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
DPU come up on the new slot from cold. The order mechanism itself is drivers/agent/orders.py.
"""

from __future__ import annotations

from typing import Any

from ...api.meta import isotime, now
from ...store.store import Store
from ..base import InstallProgress, InstallState
from ..redfish.client import RedfishClient, RedfishError
from ..redfish.power import RedfishPower
from .orders import BOOTED, FAILED, FELL_BACK, STAGED, STATUS_FIELD, OrderInstall, Reported


class AgentInstall(OrderInstall):
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
        super().__init__(store, project, dpu, os_target=os_target)
        self.client = client
        self.system = system

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

    async def _addressed(self) -> dict[str, Any]:
        return {}  # the DPU's own agent: it is answered with its own DPU's order

    def _waiting(self, order: dict[str, Any]) -> str:
        return "waiting for the DPU's agent to pick up the order"

    async def _read(self, reported: Reported) -> InstallProgress:
        order_id, order, state, slot = reported.order_id, reported.order, reported.state, reported.slot
        if state == STAGED and not order.get("resetAt"):
            await self._reboot(order_id)
            return InstallProgress(InstallState.RUNNING, 100, f"slot {slot} written; rebooting the DPU into it")
        if state == BOOTED:
            await self._close(order_id)
            return InstallProgress(
                InstallState.SUCCEEDED, 100, f"the DPU booted slot {slot}: {reported.message}".strip()
            )
        if state == FELL_BACK:
            await self._close(order_id)
            return InstallProgress(
                InstallState.FAILED, 100, reported.message or "the new slot did not boot", "SlotBootFailed"
            )
        if state == STAGED:
            return InstallProgress(InstallState.RUNNING, 100, f"waiting for the DPU to boot slot {slot}")
        if state == FAILED:
            await self._close(order_id)
            reason = reported.reason or "AgentInstallFailed"
            return InstallProgress(InstallState.FAILED, reported.percent, reported.message or reason, reason)
        done, total = reported.done, reported.total
        detail = f"agent: {state}" + (f" {done}/{total} bytes" if total else "") + (f" to slot {slot}" if slot else "")
        return InstallProgress(InstallState.RUNNING, reported.percent, detail)

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
