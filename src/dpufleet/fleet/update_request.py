"""UpdateRequest controller: one policy for every update, whoever asked for it.

An update may be asked for by the control plane (an operator, automation), by the DPU's host
(its host agent), by the DPU's own agent (it found a newer approved image) or by a BMC (an
update pushed to it directly). Each becomes an UpdateRequest, and each passes the same checks
before the DPU's spec.image is set:

- the DPU and the image exist, and the image passes signature, compatibility and rollback
  checks for this DPU (images/verify.py): otherwise **Refused**;
- a DPUSet that selects the DPU owns its image: a request for another image than the set's
  template is **Refused** (change the DPUSet instead); a paused or aborted set, a time
  outside its maintenance windows, or a set already at its maxUnavailable make the request
  **Waiting** until that changes;
- a held DPU, or one the provisioner is working on, makes it Waiting too.

Then the request is **Accepted**: the DPU's spec names the image (with the DPU's
resourceVersion as precondition) and provisioning does the work; the request follows the DPU
to **Succeeded** (Ready running the image) or **Failed** (a failed phase, or the spec changed
by someone else: Superseded). Decisions are made one at a time (one worker), so two requests
never both take the last unit of a rollout's budget; every decision is evented and audited.
"""

from __future__ import annotations

import logging
from typing import Any

from ..api.errors import Conflict, NotFound
from ..api.kinds import FAILED_PHASES, WORKING_PHASES, Phase, UpdateSource
from ..api.meta import isotime, now
from ..api.selectors import LabelSelector
from ..crypto.signing import ManifestRefused
from ..images.verify import verify_image_manifest
from ..runtime.controller import DONE, Key, Reconciler, Result
from ..runtime.events import EventRecorder
from ..runtime.status import mutate_status
from ..security.audit import AuditEntry, AuditLog
from ..store.store import Store
from .dpuset import in_window
from .drift import DriftReconciler

log = logging.getLogger(__name__)
SUBJECT = "update-request-controller"
WAIT_SECONDS = 5.0  # a Waiting request looks again this often
FOLLOW_SECONDS = 2.0  # an Accepted one follows its DPU this often
ENDED = frozenset({"Succeeded", "Failed", "Refused"})


class Decision:
    def __init__(self, phase: str, reason: str, message: str) -> None:
        self.phase, self.reason, self.message = phase, reason, message


class UpdateRequestReconciler(Reconciler):
    kind = "UpdateRequest"
    workers = 1  # decisions one at a time: a rollout's last free slot is never given twice

    def __init__(self, store: Store, clock: Any = now) -> None:
        self.store = store
        self.clock = clock
        self.events = EventRecorder(store, SUBJECT)
        self.audit = AuditLog(store)
        self.drift = DriftReconciler(store, self.events)

    async def reconcile(self, key: Key) -> Result:
        try:
            request = await self.store.call(self.store.get, "UpdateRequest", key.name, key.project)
        except NotFound:
            return DONE
        if request["metadata"].get("deletionTimestamp"):
            return DONE
        phase = (request.get("status") or {}).get("phase")
        if phase in ENDED:
            return DONE
        if phase == "Accepted":
            return await self._follow(request)
        decision, accepted_generation = await self.store.call(self._decide, request)
        await self._record(request, decision, generation=accepted_generation)
        if request["spec"].get("source") == UpdateSource.BMC and decision.phase in ("Accepted", "Refused"):
            # a change pushed through the BMC: adopted, or the DPU stays drifted (fleet/drift.py)
            await self.store.call(self.drift.decided, request, decision.phase, decision.reason, decision.message)
        if decision.phase == "Waiting":
            return Result(requeue_after=WAIT_SECONDS)
        if decision.phase == "Accepted":
            return Result(requeue_after=FOLLOW_SECONDS)
        return DONE

    # --- the decision -----------------------------------------------------------------------------------

    def _decide(self, request: dict[str, Any]) -> tuple[Decision, int | None]:
        spec, project = request["spec"], request["metadata"]["project"]
        try:
            dpu = self.store.get("DPU", spec["dpu"], project)
        except NotFound:
            return Decision("Refused", "DPUNotFound", f"dpu {spec['dpu']!r} does not exist"), None
        try:
            image = self.store.get("Image", spec["image"], project)
        except NotFound:
            return Decision("Refused", "ImageNotFound", f"image {spec['image']!r} does not exist"), None
        try:
            verify_image_manifest(image, dpu, self.store)
        except ManifestRefused as refused:
            return Decision("Refused", refused.reason.value, refused.message), None
        dpu_spec, dpu_status = dpu.get("spec") or {}, dpu.get("status") or {}
        if dpu_status.get("installedImage") == spec["image"] and dpu_spec.get("image") == spec["image"]:
            return Decision("Succeeded", "AlreadyRunning", f"dpu {spec['dpu']} already runs {spec['image']}"), None
        if dpu_spec.get("held"):
            return Decision("Waiting", "DPUHeld", "the DPU is held (spec.held): waiting for its release"), None
        if dpu_status.get("phase") in WORKING_PHASES:
            return Decision("Waiting", "Provisioning", f"the DPU is {dpu_status.get('phase')}: waiting"), None
        owner = self._owning_set(dpu)
        if owner is not None:
            waiting = self._set_says(owner, spec["image"])
            if waiting is not None:
                return waiting, None
        patch: dict[str, Any] = {
            "metadata": {"resourceVersion": dpu["metadata"]["resourceVersion"]},
            "spec": {"image": spec["image"]} | ({"flavor": spec["flavor"]} if spec.get("flavor") else {}),
        }
        try:
            updated = self.store.patch("DPU", spec["dpu"], patch, project)
        except Conflict:
            return Decision("Waiting", "DPUChanged", "the DPU changed while deciding: deciding again"), None
        generation = int(updated["metadata"].get("generation") or 0)
        via = f" (DPUSet {owner['metadata']['name']})" if owner is not None else ""
        return (
            Decision("Accepted", "Accepted", f"dpu {spec['dpu']} is updating to {spec['image']}{via}"),
            generation,
        )

    def _owning_set(self, dpu: dict[str, Any]) -> dict[str, Any] | None:
        """The oldest DPUSet selecting the DPU (as the DPUSet controller decides ownership)."""
        labels = dpu["metadata"].get("labels") or {}
        sets = [
            s
            for s in self.store.list("DPUSet", dpu["metadata"]["project"]).items
            if not s["metadata"].get("deletionTimestamp")
            and LabelSelector.model_validate(s["spec"].get("selector") or {}).matches(labels)
        ]
        sets.sort(key=lambda s: (s["metadata"].get("creationTimestamp") or "", s["metadata"]["name"]))
        return sets[0] if sets else None

    def _set_says(self, dpuset: dict[str, Any], image: str) -> Decision | None:
        name, spec = dpuset["metadata"]["name"], dpuset.get("spec") or {}
        template = (spec.get("template") or {}).get("image")
        if template and template != image:
            return Decision(
                "Refused",
                "ManagedByDPUSet",
                f"DPUSet {name} manages this DPU's image (template {template}); change the DPUSet, or take the "
                "DPU out of its selector",
            )
        if spec.get("aborted") or spec.get("paused"):
            what = "aborted" if spec.get("aborted") else "paused"
            return Decision("Waiting", "RolloutPaused", f"DPUSet {name} is {what}: waiting for it to resume")
        strategy = spec.get("strategy") or {}
        windows = strategy.get("windows") or []
        if windows and not in_window(windows, self.clock()):
            return Decision("Waiting", "OutsideWindow", f"DPUSet {name}: updates start only inside its windows")
        status = dpuset.get("status") or {}
        limit = int(status.get("maxUnavailable") or 0)
        if limit and int(status.get("unavailable") or 0) >= limit:
            return Decision(
                "Waiting",
                "RolloutBudget",
                f"DPUSet {name} has {status.get('unavailable')} unavailable DPU(s), its maxUnavailable is {limit}",
            )
        return None

    # --- following an accepted request ------------------------------------------------------------------

    async def _follow(self, request: dict[str, Any]) -> Result:
        spec, project = request["spec"], request["metadata"]["project"]
        status = request.get("status") or {}
        try:
            dpu = await self.store.call(self.store.get, "DPU", spec["dpu"], project)
        except NotFound:
            await self._record(request, Decision("Failed", "DPUDeleted", f"dpu {spec['dpu']} was deleted"))
            return DONE
        dpu_status = dpu.get("status") or {}
        if (dpu.get("spec") or {}).get("image") != spec["image"]:
            await self._record(
                request, Decision("Failed", "Superseded", f"dpu {spec['dpu']}'s spec.image was changed meanwhile")
            )
            return DONE
        phase = dpu_status.get("phase")
        if phase == Phase.READY and dpu_status.get("installedImage") == spec["image"]:
            await self._record(request, Decision("Succeeded", "Updated", f"dpu {spec['dpu']} runs {spec['image']}"))
            return DONE
        if phase in FAILED_PHASES:
            progress = dpu_status.get("provisioning") or {}
            reason = str(progress.get("reason") or phase)
            await self._record(
                request, Decision("Failed", reason, f"dpu {spec['dpu']} is {phase}: {progress.get('message') or ''}")
            )
            return DONE
        if status.get("message") != f"dpu {spec['dpu']}: {phase}":
            await self._record(request, Decision("Accepted", "Accepted", f"dpu {spec['dpu']}: {phase}"), quiet=True)
        return Result(requeue_after=FOLLOW_SECONDS)

    # --- recording ----------------------------------------------------------------------------------------

    async def _record(
        self, request: dict[str, Any], decision: Decision, *, generation: int | None = None, quiet: bool = False
    ) -> None:
        meta = request["metadata"]
        before = request.get("status") or {}
        stamp = isotime(now())

        def mutate(status: dict[str, Any]) -> None:
            status.update(phase=decision.phase, reason=decision.reason, message=decision.message)
            if decision.phase != "Waiting" and not status.get("decidedAt"):
                status["decidedAt"] = stamp
            if generation is not None:
                status["generation"] = generation
            if decision.phase in ENDED:
                status["finishedAt"] = stamp

        same = (before.get("phase"), before.get("reason"), before.get("message")) == (
            decision.phase,
            decision.reason,
            decision.message,
        )
        if same:
            return
        updated = await mutate_status(self.store, "UpdateRequest", meta["name"], mutate, meta["project"], request)
        if quiet or (before.get("phase"), before.get("reason")) == (decision.phase, decision.reason):
            return
        warning = decision.phase in ("Refused", "Failed")
        self.events.post(updated, decision.reason, decision.message, "Warning" if warning else "Normal")
        if decision.phase in ("Accepted", "Refused"):
            entry = AuditEntry(
                subject=SUBJECT,
                roles="controller",
                action=f"update-request:{decision.phase.lower()}",
                kind="UpdateRequest",
                project=meta["project"],
                name=meta["name"],
                result=decision.reason,
                code=200 if decision.phase == "Accepted" else 409,
                source=str(request["spec"].get("source") or "control-plane"),
                detail=f"dpu {request['spec']['dpu']} -> image {request['spec']['image']}: {decision.message}"[:500],
            )
            try:
                await self.store.call(self.audit.record, entry)
            except Exception:
                log.exception("could not audit update request %s", meta["name"])
