"""Installing: the update plan's install steps, one at a time through the install path, never twice at once.

The plan (fixed at staging, provisioning/plan.py) interleaves installs with resets: at a reset
step the DPU goes to Rebooting, which comes back here while install steps remain. When the
plan ends with live components only, nothing is reset: Installing goes straight to Configuring.

The order of writes makes a restart safe: `installIssuedAt` is saved before the request goes
to the BMC and the task URI right after. Resuming with a task URI polls that task; with only
`installIssuedAt` it first asks the BMC for a task it may already have started (the crash
fell between the request and recording its answer) and adopts it instead of flashing again.
"""

from __future__ import annotations

import re

from ...api.kinds import ImageSpec, Phase, ProvisioningStatus
from ...drivers.base import InstallBusy, InstallProgress, InstallRequest, InstallState
from ...drivers.redfish.client import RedfishError
from ...images.repository import ImageContentError
from ...lifecycle.planner import StepAction
from ..flavor import profile_of
from ..machine import Next, Outcome, PhaseHandler, StepContext, StepFailed, Wait, stamp
from ..plan import PlannedComponent, plan_components, update_plan

_SIGNED_QUERY = re.compile(r"\?expires=\d+&sig=[0-9a-f]+")


class Install(PhaseHandler):
    phase = Phase.INSTALLING

    def reset(self, progress: ProvisioningStatus) -> None:
        progress.taskURI = None
        progress.installIssuedAt = None

    async def handle(self, ctx: StepContext) -> Outcome:
        progress = ctx.progress
        image_name = ctx.image_name
        if progress.plan is not None and progress.taskURI is not None and progress.target:
            # a task in flight: the plan fixed at validation says what it writes, so a poll reads
            # neither the Image nor plans again (it is a BMC request and nothing else)
            step = progress.plan[progress.planStep] if progress.planStep < len(progress.plan) else None
            if step is not None and step["action"] == StepAction.INSTALL:
                driver = await ctx.install_driver(str(progress.installPath))
                try:
                    result = await driver.poll(progress.taskURI)
                except RedfishError as exc:
                    raise StepFailed("BMCError", str(exc)) from None
                return await self._finished(ctx, str(step.get("component")), progress.target, result)
        image = ImageSpec.model_validate((await ctx.get("Image", image_name))["spec"])
        planned = plan_components(image, profile_of(ctx.status), image_name, ctx.status.get("firmware"))
        if progress.plan is None:  # a DPU that was staged before plans existed
            progress.plan = update_plan(planned, ctx.status)
            progress.planStep = 0
            while (  # what it wrote already is not written again
                progress.planStep < len(progress.plan)
                and progress.plan[progress.planStep]["action"] == StepAction.INSTALL
                and progress.plan[progress.planStep].get("component") in progress.componentsDone
            ):
                progress.planStep += 1
        if progress.planStep >= len(progress.plan):
            return Next(Phase.CONFIGURING, f"{len(progress.componentsDone)} component(s) written live: no reset needed")
        step = progress.plan[progress.planStep]
        if step["action"] != StepAction.INSTALL:
            return Next(Phase.REBOOTING, f"{len(progress.componentsDone)} component(s) written; {step.get('why', '')}")
        by_name = {p.component.name: p for p in planned}
        item: PlannedComponent | None = by_name.get(str(step.get("component")))
        if item is None:
            raise StepFailed(
                "PlanOutdated",
                f"the plan installs {step.get('component')!r}, which image {image_name!r} no longer has",
                retryable=False,
            )
        progress.target = item.target
        driver = await ctx.install_driver(str(progress.installPath))
        assert ctx.repository is not None  # staging refused to go on without one
        try:
            url = ctx.repository.signed_url(item.component.sha256, item.file_name, ctx.config.url_ttl)
        except ImageContentError as exc:
            raise StepFailed(exc.reason, exc.message, retryable=False) from None
        request = InstallRequest(url, item.target, item.component.version, item.component.sha256)
        try:
            if progress.taskURI is None and progress.installIssuedAt is not None:
                progress.taskURI = await driver.find_started(request, progress.installIssuedAt)
                if progress.taskURI is None:
                    progress.installIssuedAt = None  # the request never reached the BMC: safe to send
                await ctx.save()
            if progress.taskURI is None:
                writing = f"writing {item.component.name} to {item.target}"
                progress.installIssuedAt = stamp()
                progress.message = writing
                await ctx.save()  # before the request: a restart must know it may have been sent
                try:
                    progress.taskURI = await driver.install(request)
                except InstallBusy:
                    progress.taskURI = await driver.find_started(request, progress.installIssuedAt)
                    if progress.taskURI is None:
                        raise StepFailed("BMCBusy", "the BMC is running another update") from None
                await ctx.record(
                    "InstallStarted", f"{item.component.name} {item.component.version} -> {item.target}", False
                )
                return Wait(ctx.config.poll_seconds, writing)  # saved with its task (a changed field)
            result = await driver.poll(progress.taskURI)
        except RedfishError as exc:
            raise StepFailed("BMCError", str(exc)) from None
        return await self._finished(ctx, item.component.name, item.target, result)

    async def _finished(self, ctx: StepContext, component: str, target: str, result: InstallProgress) -> Outcome:
        """What a polled task's state means for the plan: wait, fail, or the next step."""
        progress = ctx.progress
        if result.state == InstallState.RUNNING:
            return Wait(ctx.config.poll_seconds, f"writing {component} to {target}: {result.percent or 0}%")
        if result.state == InstallState.FAILED:
            self.reset(progress)
            detail = _SIGNED_QUERY.sub("?<signed>", result.message)  # the URL's signature is a credential
            raise StepFailed(result.reason or "InstallTaskFailed", f"{component} -> {target}: {detail}")
        progress.componentsDone.append(component)
        progress.planStep += 1
        self.reset(progress)
        plan = progress.plan or []
        following = plan[progress.planStep] if progress.planStep < len(plan) else None
        if following is None:  # live components only since the last reset: nothing to activate
            return Next(Phase.CONFIGURING, f"{len(progress.componentsDone)} component(s) written live: no reset needed")
        if following["action"] != StepAction.INSTALL:  # the move to Rebooting persists the progress with it
            return Next(
                Phase.REBOOTING, f"{len(progress.componentsDone)} component(s) written; {following.get('why', '')}"
            )
        await ctx.save()
        return Wait(0.0, f"{component} written to {target}")
