"""StagingImage: make sure every component's content is in the repository and is what it claims.

Content uploaded to the repository is hashed again now (it may have rotted or been replaced);
content given by URL is mirrored, keeping it only if its digest matches. A mismatch is never
retried by itself (the same bytes would mismatch again): the DPU waits in StagingImageFailed
with reason DigestMismatch, and the bad blob is removed so a good upload can replace it.
The install path is then asked whether it can install each component here.
"""

from __future__ import annotations

import contextlib

from ...api.kinds import ImageSpec, Phase
from ...crypto.signing import ManifestRefused
from ...drivers.redfish.client import RedfishError
from ...images.repository import DigestMismatch, ImageContentError
from ...images.verify import verify_image_manifest
from ..flavor import profile_of
from ..machine import Next, Outcome, PhaseHandler, StepContext, StepFailed
from ..plan import plan_components


class StageImage(PhaseHandler):
    phase = Phase.STAGING_IMAGE

    async def handle(self, ctx: StepContext) -> Outcome:
        repo = ctx.repository
        if repo is None:
            raise StepFailed("NoRepository", "this controller has no image repository configured", retryable=False)
        image_name = ctx.image_name
        image_doc = await ctx.get("Image", image_name)
        image = ImageSpec.model_validate(image_doc["spec"])
        try:  # the signed manifest: trusted publisher, allowed class, digests, compatibility, no rollback
            manifest = await ctx.store.call(verify_image_manifest, image_doc, ctx.dpu, ctx.store)
        except ManifestRefused as refused:
            raise StepFailed(refused.reason.value, refused.message, retryable=False) from None
        ctx.progress.manifestSequence = manifest.sequence if manifest is not None else None
        planned = plan_components(image, profile_of(ctx.status), image_name, ctx.status.get("firmware"))
        for item in planned:
            component = item.component
            try:
                if repo.stat(component.sha256) is None and component.url:
                    ctx.progress.message = f"mirroring {component.name} from {component.url}"
                    await ctx.save()  # a download takes a while: the DPU is seen staging meanwhile
                    await repo.mirror(component.url, component.sha256)
                blob = await repo.verify(component.sha256)
            except DigestMismatch as exc:
                with contextlib.suppress(OSError):
                    repo.path(component.sha256).unlink(missing_ok=True)  # never serve it; make room for good content
                raise StepFailed(
                    "DigestMismatch", f"component {component.name}: {exc.message}", retryable=False
                ) from None
            except ImageContentError as exc:
                raise StepFailed(exc.reason, f"component {component.name}: {exc.message}") from None
            if component.size is not None and blob.size != component.size:
                raise StepFailed(
                    "SizeMismatch",
                    f"component {component.name}: {blob.size} bytes stored, {component.size} declared",
                    retryable=False,
                )
            driver = await ctx.install_driver(str(ctx.progress.installPath))
            try:
                await driver.validate(item.target)
            except RedfishError as exc:
                raise StepFailed("InstallPathUnavailable", str(exc)) from None
        return Next(Phase.INSTALLING, f"{len(planned)} component(s) verified in the repository")
