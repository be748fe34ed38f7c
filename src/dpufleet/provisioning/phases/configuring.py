"""Configuring: read the written components' versions back and check that each runs its new version.

Only the FirmwareInventory items of the written components are read (a few requests, not a
crawl of the whole service). The status then shows their versions as the BMC reports them, the image installed and the flavor
validated for this DPU (its kernel, sysctl and config-file parts are applied on the DPU by
its agent). A version that did not change means the install did not take: ConfigureFailed
with reason VersionMismatch. An install path that sees the versions itself (host-channel, for
DPUs with no reachable BMC: the DPU's own agent reports them) is asked instead of the BMC.
"""

from __future__ import annotations

from typing import Any

from ...api.kinds import ImageSpec, Phase
from ...drivers.base import InstallNotReady
from ...drivers.redfish.client import RedfishError
from ...drivers.redfish.inventory import firmware_versions
from ..flavor import profile_of
from ..machine import Next, Outcome, PhaseHandler, StepContext, StepFailed, Wait
from ..plan import PlannedComponent, plan_components


class Configure(PhaseHandler):
    phase = Phase.CONFIGURING

    async def handle(self, ctx: StepContext) -> Outcome:
        image_name = ctx.image_name
        image = ImageSpec.model_validate((await ctx.get("Image", image_name))["spec"])
        planned = plan_components(image, profile_of(ctx.status), image_name, ctx.status.get("firmware"))
        driver = await ctx.install_driver(str(ctx.progress.installPath))
        try:
            seen = await driver.running_versions()
        except InstallNotReady as wait:
            return Wait(ctx.config.poll_seconds, str(wait))
        except RedfishError as exc:
            raise StepFailed("BMCError", str(exc)) from None
        if seen is not None:
            return _check(ctx, planned, seen, f"image {image_name} {image.version} running", None)
        try:
            client, _system = await ctx.redfish()
            versions = await firmware_versions(client, sorted({p.target for p in planned}))
        except RedfishError as exc:
            raise StepFailed("BMCError", str(exc)) from None
        return _check(ctx, planned, versions, f"image {image_name} {image.version} running", None)


def _check(
    ctx: StepContext,
    planned: list[PlannedComponent],
    versions: dict[str, str],
    done: str,
    firmware: list[dict[str, Any]] | None,
) -> Outcome:
    """`firmware`: the BMC's whole inventory; None when only `versions` is known (the written components:
    their versions replace those in the status; the BMC controller's refresh reads the rest)."""
    wrong = [
        f"{p.target} runs {versions.get(p.target)!r}, not {p.component.version!r}"
        for p in planned
        if versions.get(p.target) != p.component.version
    ]
    if wrong:
        raise StepFailed("VersionMismatch", "; ".join(wrong), retryable=False)
    if firmware is None:  # no BMC read: the versions the path saw replace those in the status
        firmware = [
            {**fw, "version": versions[fw["id"]]} if fw.get("id") in versions else fw
            for fw in ctx.status.get("firmware") or []
        ]
    ctx.status_updates["firmware"] = firmware  # as the BMC controller writes it
    return Next(Phase.READY, done)
