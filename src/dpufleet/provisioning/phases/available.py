"""Available (and Discovered, Ready): the spec asks for an image this DPU does not run.

Before anything touches the host or the device, check that the image exists and is
compatible with this model, that the flavor fits the DPU's inventory, and that an update plan
exists (provisioning/plan.py: the order of the writes and the resets between them). A problem here
is never retried by itself: it waits in ValidationFailed until the user fixes the spec
(which restarts provisioning) or runs `dpufleet dpu retry`.
"""

from __future__ import annotations

from pydantic import ValidationError

from ...api.errors import NotFound
from ...api.kinds import DPUFlavorSpec, ImageSpec, Phase
from ..flavor import check_flavor, profile_of
from ..machine import Next, Outcome, PhaseHandler, StepContext, StepFailed
from ..plan import choose_install_path, describe_plan, plan_components, update_plan


class Validate(PhaseHandler):
    phase = Phase.AVAILABLE

    async def handle(self, ctx: StepContext) -> Outcome:
        spec, status = ctx.spec, ctx.status
        image_name = ctx.image_name
        try:
            image = ImageSpec.model_validate((await ctx.get("Image", image_name))["spec"])
        except NotFound:
            raise StepFailed("ImageNotFound", f"image {image_name!r} does not exist", retryable=False) from None
        profile = profile_of(status)
        compat = image.compatibility
        if compat.vendors and (status.get("vendor") or "") not in compat.vendors:
            raise StepFailed(
                "ImageIncompatible",
                f"image {image_name!r} is for vendors {compat.vendors}; this DPU is {status.get('vendor')!r}",
                retryable=False,
            )
        if compat.models and (status.get("model") or "") not in compat.models:
            raise StepFailed(
                "ImageIncompatible",
                f"image {image_name!r} is for models {compat.models}; this DPU is {status.get('model')!r}",
                retryable=False,
            )
        if compat.partNumbers and (status.get("partNumber") or "") not in compat.partNumbers:
            raise StepFailed(
                "ImageIncompatible",
                f"image {image_name!r} is for part numbers {compat.partNumbers}; this DPU is "
                f"{status.get('partNumber')!r}",
                retryable=False,
            )
        planned = plan_components(image, profile, image_name, status.get("firmware"))
        # the order of the writes and the resets between them: fixed now, before the host is touched
        ctx.progress.plan = update_plan(planned, status)
        ctx.progress.planStep = 0
        ctx.progress.installPath = choose_install_path(spec, profile)
        ctx.progress.imageVersion = image.version
        flavor_name = ctx.progress.flavor
        if flavor_name:
            try:
                flavor = DPUFlavorSpec.model_validate((await ctx.get("DPUFlavor", flavor_name)).get("spec") or {})
            except NotFound:
                raise StepFailed("FlavorNotFound", f"flavor {flavor_name!r} does not exist", retryable=False) from None
            except ValidationError as exc:
                raise StepFailed("FlavorInvalid", f"flavor {flavor_name!r}: {exc}", retryable=False) from None
            problems = check_flavor(flavor, status, profile)
            if problems:
                detail = "; ".join(str(p) for p in problems)
                raise StepFailed(
                    "FlavorDoesNotFit", f"flavor {flavor_name!r} does not fit this DPU: {detail}", retryable=False
                )
        return Next(
            Phase.PREPARING_HOST,
            f"image {image_name} {image.version} fits; flavor {flavor_name or 'none'}; "
            f"plan: {describe_plan(ctx.progress.plan)}",
        )
