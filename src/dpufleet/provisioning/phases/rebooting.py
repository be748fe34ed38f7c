"""Rebooting: activate what was written with a reset through the BMC, and see the DPU come back.

A reboot is seen, not assumed: the boot progress before the reset is saved (with the reset
time, before the reset is sent), and the DPU counts as rebooted once it runs again with a
newer boot, or after it was seen down. A reboot that never completes ends in RebootFailed
with reason RebootTimeout when the phase's time is up.
"""

from __future__ import annotations

from datetime import datetime

from ...api.kinds import ProvisioningStatus
from ...api.meta import now
from ...drivers.redfish.client import RedfishError
from ...drivers.redfish.install import read_boot
from ..machine import Next, Outcome, Phase, PhaseHandler, StepContext, StepFailed, Wait, stamp


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

    async def handle(self, ctx: StepContext) -> Outcome:
        progress = ctx.progress
        try:
            client, system = await ctx.redfish()
            boot = await read_boot(client, system)
            if progress.resetIssuedAt is None:
                progress.baselineBootTime = boot.last_state_time
                progress.baselineBootState = boot.last_state
                progress.resetIssuedAt = stamp()
                await ctx.save()  # before the reset: a restart waits for this boot, it does not reset again
                await self._send_reset(ctx)
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
            return Next(Phase.CONFIGURING, f"the DPU runs again ({boot.last_state} at {boot.last_state_time})")
        issued = parse_stamp(progress.resetIssuedAt)
        lost = issued is not None and (now() - issued).total_seconds() > ctx.config.reset_grace_seconds
        if lost and progress.resetsSent < 2:
            # recorded but never taken: the control plane stopped between saving and sending it
            progress.resetIssuedAt = stamp()
            await ctx.save()
            try:
                await self._send_reset(ctx)
            except RedfishError as exc:
                raise StepFailed("BMCError", str(exc)) from None
            return Wait(ctx.config.poll_seconds, "the reset was not taken: sent again")
        return Wait(ctx.config.poll_seconds, "waiting for the reset to take effect")

    @staticmethod
    async def _send_reset(ctx: StepContext) -> None:
        ctx.progress.resetsSent += 1
        await ctx.save()
        driver = await ctx.install_driver(str(ctx.progress.installPath))
        await driver.activate()
