"""Rebooting: activate what was written with a reset through the BMC, and see the DPU come back.

A reboot is seen, not assumed: the boot progress before the reset is saved (with the reset
time, before the reset is sent), and the DPU counts as rebooted once it runs again with a
newer boot, or after it was seen down. A reboot that never completes ends in RebootFailed
with reason RebootTimeout when the phase's time is up. An install path that boots the new
image as part of the install (`boots_during_install`: host-channel, whose push resets the
DPU) sends no reset here.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any

from ...api.errors import AlreadyExists, NotFound
from ...api.kinds import Phase, ProvisioningStatus
from ...api.meta import now
from ...drivers.redfish.client import RedfishError
from ...drivers.redfish.install import read_boot
from ...lifecycle.planner import StepAction
from ..machine import Next, Outcome, PhaseHandler, StepContext, StepFailed, Wait, stamp


def parse_stamp(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


class Reboot(PhaseHandler):
    phase = Phase.REBOOTING

    def reset(self, progress: ProvisioningStatus) -> None:
        progress.resetIssuedAt = None
        progress.resetsSent = 0
        progress.baselineBootTime = None
        progress.baselineBootState = None
        progress.sawDown = False

    def _done(self, ctx: StepContext, message: str) -> Outcome:
        """This reset step of the plan is done: back to Installing while install steps remain."""
        progress = ctx.progress
        plan = progress.plan or []
        if progress.planStep < len(plan) and plan[progress.planStep]["action"] != StepAction.INSTALL:
            progress.planStep += 1
        self.reset(progress)
        progress.powerAction = None
        if progress.planStep < len(plan):
            return Next(Phase.INSTALLING, f"{message}; {len(plan) - progress.planStep} plan step(s) left")
        return Next(Phase.CONFIGURING, message)

    async def handle(self, ctx: StepContext) -> Outcome:
        progress = ctx.progress
        plan = progress.plan or []
        step = plan[progress.planStep] if progress.planStep < len(plan) else None
        if step is not None and step["action"] == StepAction.RESET_HOST:
            return await self._host_reset(ctx, step)
        driver = await ctx.install_driver(str(progress.installPath))
        if driver.boots_during_install and progress.resetIssuedAt is None:
            # the install itself reset the DPU into the new image (host-channel, with no BMC): no second reset
            return self._done(ctx, f"{driver.name} booted the DPU into the new image during the install")
        try:
            client, system = await ctx.redfish()
            boot = await read_boot(client, system)
            if progress.resetIssuedAt is None:
                progress.baselineBootTime = boot.last_state_time
                progress.baselineBootState = boot.last_state
                progress.resetIssuedAt = stamp()
                await self._send_reset(ctx, "reset sent")  # saved before it is sent: a restart waits for this boot
                return Wait(ctx.config.poll_seconds, "reset sent")
        except RedfishError as exc:
            raise StepFailed("BMCError", str(exc)) from None
        if not boot.running:
            if not progress.sawDown:
                progress.sawDown = True
                await ctx.save()
            return Wait(ctx.config.poll_seconds, f"booting: {boot.power_state}, {boot.last_state}")
        newer = boot.last_state_time != progress.baselineBootTime or progress.baselineBootState != "OSRunning"
        if progress.sawDown or newer:
            return self._done(ctx, f"the DPU runs again ({boot.last_state} at {boot.last_state_time})")
        issued = parse_stamp(progress.resetIssuedAt)
        lost = issued is not None and (now() - issued).total_seconds() > ctx.config.reset_grace_seconds
        if lost and progress.resetsSent < 2:
            # recorded but never taken: the control plane stopped between saving and sending it
            progress.resetIssuedAt = stamp()
            try:
                await self._send_reset(ctx, "the reset was not taken: sent again")
            except RedfishError as exc:
                raise StepFailed("BMCError", str(exc)) from None
            return Wait(ctx.config.poll_seconds, "the reset was not taken: sent again")
        return Wait(ctx.config.poll_seconds, "waiting for the reset to take effect")

    @staticmethod
    async def _send_reset(ctx: StepContext, message: str) -> None:
        """Count the reset and save progress (its baseline and time with it) before sending it; the
        message is the one the wait after it shows, so that wait writes nothing more."""
        ctx.progress.resetsSent += 1
        ctx.progress.message = message
        await ctx.save()
        driver = await ctx.install_driver(str(ctx.progress.installPath))
        await driver.activate()

    async def _host_reset(self, ctx: StepContext, step: dict[str, Any]) -> Outcome:
        """A component that needs its host reset: a PowerAction resets the DPU and its host in the
        host's boot order (fleet/power.py), and this step waits for it to end."""
        progress = ctx.progress
        generation = progress.generation or 1
        name = progress.powerAction or f"{ctx.name}-update-g{generation}-s{progress.planStep}"[:253]
        if progress.powerAction is None:
            progress.powerAction = name
            await ctx.save()  # before the create: a restart finds the action instead of resetting twice
        try:
            action = await ctx.get("PowerAction", name)
        except NotFound:
            doc = {
                "kind": "PowerAction",
                "metadata": {
                    "name": name,
                    "project": ctx.project,
                    "labels": {"dpufleet.io/dpu": ctx.name, "dpufleet.io/purpose": "update"},
                },
                "spec": {"target": {"kind": "DPU", "name": ctx.name}, "mode": "both", "resetType": "ForceRestart"},
            }
            with contextlib.suppress(AlreadyExists):
                await ctx.store.call(ctx.store.create, doc)
            await ctx.record("HostResetRequested", f"poweraction/{name}: {step.get('why', '')}", False)
            return Wait(ctx.config.poll_seconds, f"host reset requested (poweraction/{name})")
        status = action.get("status") or {}
        phase = status.get("phase")
        if phase == "Succeeded":
            return self._done(ctx, f"the DPU and its host run again (poweraction/{name})")
        if phase == "Failed":
            progress.powerAction = None  # a retry creates a new action
            raise StepFailed(
                str(status.get("reason") or "HostResetFailed"), f"poweraction/{name}: {status.get('message') or ''}"
            )
        return Wait(
            ctx.config.poll_seconds, f"resetting the DPU and its host (poweraction/{name}: {phase or 'Pending'})"
        )
