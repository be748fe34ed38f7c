"""Configuring: read the firmware inventory back and check that every component runs its new version.

The status then shows the firmware as the BMC reports it, the image installed and the flavor
validated for this DPU (its kernel, sysctl and config-file parts are applied on the DPU by
its agent). A version that did not change means the install did not take: ConfigureFailed
with reason VersionMismatch.
"""

from __future__ import annotations

from ...api.kinds import ImageSpec
from ...drivers.redfish.client import RedfishError
from ...drivers.redfish.inventory import crawl
from ..flavor import profile_of
from ..machine import Next, Outcome, Phase, PhaseHandler, StepContext, StepFailed
from ..plan import plan_components


class Configure(PhaseHandler):
    phase = Phase.CONFIGURING

    async def handle(self, ctx: StepContext) -> Outcome:
        image_name = ctx.image_name
        image = ImageSpec.model_validate((await ctx.get("Image", image_name))["spec"])
        planned = plan_components(image, profile_of(ctx.status), image_name)
        try:
            client, _system = await ctx.redfish()
            inventory = await crawl(client, macs=False)
        except RedfishError as exc:
            raise StepFailed("BMCError", str(exc)) from None
        versions = {fw.id: fw.version for fw in inventory.firmware}
        wrong = [
            f"{p.target} runs {versions.get(p.target)!r}, not {p.component.version!r}"
            for p in planned
            if versions.get(p.target) != p.component.version
        ]
        if wrong:
            raise StepFailed("VersionMismatch", "; ".join(wrong), retryable=False)
        ctx.status_updates["firmware"] = [
            fw.model_dump() for fw in inventory.firmware
        ]  # as the BMC controller writes it
        return Next(Phase.READY, f"image {image_name} {image.version} running")
