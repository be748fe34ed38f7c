"""Drift: a DPU's firmware changed outside dpufleet, reconciled through the one update policy.

The BMC controller records every component version change it did not make itself (an update
pushed through the BMC's Redfish UpdateService, or made by hand). For a DPU at rest on its desired
image (phase Ready, running spec.image), a change to a component of that image means the desired
state and what runs disagree. This module reconciles them, on the crawl that sees the change and on
every later crawl while the disagreement lasts:

- an Image of the DPU's project that brings exactly what the DPU now runs (each of its components at
  the reported version, covering every component that differs from spec.image), and admits the DPU,
  is asked for in an UpdateRequest with source `bmc`. Its name comes from the DPU's generation and
  the versions (`<dpu>-bmc-<hash>`), so a later crawl finds it already filed. The one update policy
  (fleet/update_request.py: signature, rollback, DPUSet, windows, budget) decides: Accepted,
  spec.image names that image and the change is adopted;
- with no such image, or a Refused request, the DPU is drifted: condition Drifted=True (reason
  OutOfBandUpdate, naming the components), a Warning event, and the project's driftPolicy:
  `report` keeps spec.image and changes nothing; `revert` asks provisioning to install spec.image
  again (provisioning/reinstall.py), and is audited.

Drifted turns False when the change is adopted (reason Adopted) or the DPU runs its spec.image
again (a revert, a push back, a new image installed: reason Reconciled).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

from ..api.errors import AlreadyExists, NotFound
from ..api.kinds import DriftPolicy, ImageSpec, Phase, UpdateSource
from ..api.meta import ConditionStatus, Severity
from ..lifecycle.planner import version_key
from ..provisioning.flavor import profile_of
from ..provisioning.machine import StepFailed
from ..provisioning.plan import plan_components
from ..provisioning.reinstall import request_reinstall
from ..runtime.conditions import get_condition, set_condition
from ..runtime.events import EventRecorder
from ..runtime.status import mutate_status_sync
from ..security.audit import AuditEntry, AuditLog
from ..store.store import Store

log = logging.getLogger(__name__)

CONDITION = "Drifted"
SUBJECT = "drift-policy"


@dataclass(frozen=True)
class Difference:
    """A component of the desired image that the DPU runs at another version."""

    component: str  # firmware inventory id
    wanted: str  # the version spec.image brings
    running: str | None  # the version the BMC reports

    def __str__(self) -> str:
        return f"{self.component} {self.wanted} -> {self.running or 'missing'}"


def is_drifted(dpu: dict[str, Any]) -> bool:
    cond = get_condition(dpu.get("status") or {}, CONDITION)
    return cond is not None and cond.get("status") == ConditionStatus.TRUE


def brings(image: dict[str, Any], status: dict[str, Any]) -> dict[str, str] | None:
    """Firmware inventory id -> version the image writes on this DPU; None when it has no slot on its
    model (or does not admit it), as provisioning would refuse it."""
    spec = image.get("spec") or {}
    compat = spec.get("compatibility") or {}
    for allowed, field in (("vendors", "vendor"), ("models", "model"), ("partNumbers", "partNumber")):
        if compat.get(allowed) and str(status.get(field) or "") not in compat[allowed]:
            return None
    try:
        planned = plan_components(
            ImageSpec.model_validate(spec), profile_of(status), image["metadata"]["name"], status.get("firmware")
        )
    except (StepFailed, ValueError):
        return None
    return {p.target: p.component.version for p in planned}


def running_versions(status: dict[str, Any]) -> dict[str, str]:
    return {str(f["id"]): str(f.get("version")) for f in status.get("firmware") or [] if f.get("id")}


class DriftReconciler:
    """Used by the BMC controller (on a crawl) and the UpdateRequest controller (on a decision)."""

    def __init__(self, store: Store, events: EventRecorder) -> None:
        self.store = store
        self.events = events
        self.audit = AuditLog(store)

    # --- on a crawl -------------------------------------------------------------------------------------

    def observe(self, dpu: dict[str, Any], out_of_band: bool) -> None:
        """The BMC controller's hook after a crawl wrote `dpu`: a change made out of band, or a DPU
        already Drifted, is compared with its spec.image."""
        if out_of_band or is_drifted(dpu):
            self.check(dpu)

    def check(self, dpu: dict[str, Any]) -> None:
        """A crawl found out-of-band changes on `dpu`, or it is already Drifted: compare it with its
        spec.image, and adopt, report or clear."""
        if not _at_rest(dpu):
            return
        meta, status = dpu["metadata"], dpu.get("status") or {}
        desired_name = dpu["spec"]["image"]
        try:
            desired = self.store.get("Image", desired_name, meta["project"])
        except NotFound:
            return
        wanted = brings(desired, status)
        if wanted is None:
            return
        running = running_versions(status)
        drift = [Difference(c, v, running.get(c)) for c, v in sorted(wanted.items()) if running.get(c) != v]
        if not drift:
            self._clear(dpu, "Reconciled", f"runs image {desired_name} again")
            return
        changed = "; ".join(map(str, drift))
        candidate = self._adoptable(dpu, drift)
        if candidate is None:
            self.report(dpu, f"{changed}: no image of project {meta['project']} runs these versions")
            return
        self._adopt(dpu, candidate, drift, changed)

    def _adoptable(self, dpu: dict[str, Any], drift: list[Difference]) -> str | None:
        """The newest image bringing exactly what the DPU runs, covering every drifted component."""
        status = dpu.get("status") or {}
        running = running_versions(status)
        drifted = {d.component for d in drift}
        found: list[tuple[tuple[tuple[int, int | str], ...], str]] = []
        for image in self.store.list("Image", dpu["metadata"]["project"]).items:
            if image["metadata"].get("deletionTimestamp"):
                continue
            versions = brings(image, status)
            if versions and drifted <= set(versions) and all(running.get(c) == v for c, v in versions.items()):
                found.append((version_key(str(image["spec"].get("version") or "")), image["metadata"]["name"]))
        return max(found)[1] if found else None

    def _adopt(self, dpu: dict[str, Any], image: str, drift: list[Difference], changed: str) -> None:
        """File the UpdateRequest asking to adopt `image`, once; a refused one leaves the DPU drifted."""
        meta = dpu["metadata"]
        key = f"{meta.get('generation')}:{image}:" + ";".join(f"{d.component}={d.running}" for d in drift)
        name = f"{meta['name']}-bmc-{hashlib.sha256(key.encode()).hexdigest()[:10]}"
        try:
            request = self.store.get("UpdateRequest", name, meta["project"])
        except NotFound:
            request = None
        if request is not None:  # filed by an earlier crawl
            decided = request.get("status") or {}
            if decided.get("phase") == "Refused":
                self.report(dpu, refusal(request, str(decided.get("reason")), str(decided.get("message"))))
            return
        text = f"{changed}: updaterequest/{name} asks to adopt image {image}"
        self._set(dpu, text)  # before the request exists, so its decision is written after this
        doc = {
            "kind": "UpdateRequest",
            "metadata": {"name": name, "project": meta["project"], "labels": {"dpufleet.io/source": "bmc"}},
            "spec": {
                "dpu": meta["name"],
                "image": image,
                "source": UpdateSource.BMC.value,
                "reason": f"pushed through the BMC: {changed}"[:500],
            },
        }
        try:
            self.store.create(doc)
        except AlreadyExists:
            return
        self.events.record(dpu, "AdoptionRequested", text)

    # --- on a decision ------------------------------------------------------------------------------------

    def decided(self, request: dict[str, Any], phase: str, reason: str, message: str) -> None:
        """The update policy decided a `bmc` request: Accepted adopts the change; Refused leaves the DPU drifted."""
        spec, meta = request["spec"], request["metadata"]
        try:
            dpu = self.store.get("DPU", spec["dpu"], meta["project"])
        except NotFound:
            return
        if phase == "Accepted":
            self._clear(dpu, "Adopted", f"updaterequest/{meta['name']} adopted image {spec['image']}")
        elif phase == "Refused" and _at_rest(dpu):
            self.report(dpu, refusal(request, reason, message))

    # --- the condition and the policy ---------------------------------------------------------------------

    def report(self, dpu: dict[str, Any], message: str) -> None:
        """Drifted=True with `message` and what the drift policy does; the policy acts once per message."""
        meta = dpu["metadata"]
        image = dpu["spec"]["image"]
        policy = self._policy(meta["project"])
        if policy == DriftPolicy.REVERT:
            text = f"{message}; driftPolicy revert: re-installing image {image}"
        else:
            text = f"{message}; driftPolicy report: spec.image {image} is kept"
        if not self._set(dpu, text):
            return
        self.events.record(dpu, "Drifted", text, "Warning")
        if policy != DriftPolicy.REVERT:
            return
        result, detail = request_reinstall(self.store, dpu, "drift")
        entry = AuditEntry(
            subject=SUBJECT,
            roles="controller",
            action="dpu:drift-revert",
            kind="DPU",
            project=meta["project"],
            name=meta["name"],
            result=result,
            source=UpdateSource.BMC.value,
            detail=f"{message}: {detail}"[:500],
        )
        try:
            self.audit.record(entry)
        except Exception:
            log.exception("could not audit the revert of %s", meta["name"])

    def _set(self, dpu: dict[str, Any], message: str) -> bool:
        """Drifted=True (OutOfBandUpdate) with `message`; False if it already said so."""
        current = get_condition(dpu.get("status") or {}, CONDITION) or {}
        if (current.get("status"), current.get("message")) == (ConditionStatus.TRUE, message):
            return False
        return self._write(dpu, True, "OutOfBandUpdate", message)

    def _clear(self, dpu: dict[str, Any], reason: str, message: str) -> None:
        if is_drifted(dpu) and self._write(dpu, False, reason, message):  # never drifted: nothing to write
            self.events.record(dpu, "DriftResolved", f"{reason}: {message}")

    def _write(self, dpu: dict[str, Any], value: bool, reason: str, message: str) -> bool:
        """Whether this write changed the condition: of two controllers writing the same, one acts on it."""
        meta = dpu["metadata"]
        changed = False

        def mutate(status: dict[str, Any]) -> None:
            nonlocal changed
            changed = set_condition(
                status,
                CONDITION,
                value,
                reason,
                message,
                severity=None if value else Severity.INFO,  # False is the good state here
                generation=meta.get("generation"),
            )

        dpu["status"] = mutate_status_sync(self.store, "DPU", meta["name"], mutate, meta["project"])["status"]
        return changed

    def _policy(self, project: str) -> DriftPolicy:
        try:
            spec = self.store.get("Project", project, project).get("spec") or {}
        except NotFound:
            return DriftPolicy.REPORT
        return DriftPolicy(spec.get("driftPolicy", DriftPolicy.REPORT))


def refusal(request: dict[str, Any], reason: str, message: str) -> str:
    """The same words whether the decision is reported as it is made or found by a later crawl."""
    asked = request["spec"].get("reason") or "pushed through the BMC"
    return f"{asked}: updaterequest/{request['metadata']['name']} was refused ({reason}): {message}"


def _at_rest(dpu: dict[str, Any]) -> bool:
    """Provisioned here and not being worked on: Ready, running its spec.image."""
    spec, status = dpu.get("spec") or {}, dpu.get("status") or {}
    image = spec.get("image")
    return bool(image) and status.get("phase") == Phase.READY and status.get("installedImage") == image
