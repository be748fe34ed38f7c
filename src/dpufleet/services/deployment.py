"""DPUDeployment controller: a bundle of the DPUs' OS/flavor and their services, rolled OS first.

One visit of a DPUDeployment:

1. its DPUSet (named after it, owned by it: deleted with it) gets the bundle's selector, template and
   strategy; the DPUSet's own rollout does the rest (maxUnavailable, canary, health gate, undo,
   windows);
2. until that rollout is complete at the bundle's template, the services wait: a service that does
   not exist yet is not created, one that does keeps its spec (its instances run what they ran);
3. then each service is written as DPUService `<deployment>-<service>` (owned as well), on every
   selected DPU, its `dependsOn` renamed to the bundle's own DPUServices: their upgrades roll with
   the services' machinery (services/upgrade.py) and follow the dependency graph there; a service
   dropped from the bundle is deleted;
4. the status sums it up: the DPUSet's phase and counts, each service's running/desired and upgrade
   phase, `servicesReady` ("2/3"), and the phase: RollingOS, Deploying, Paused, Ready.

Each spec the controller sees (without `paused`) is a revision: `status.revision` numbers it and
`status.history` keeps the last HISTORY of them, a spec seen again taking the next number (as
Kubernetes' Deployments do). `dpufleet deployment undo [--to-revision N]` writes one of them back: an
ordinary change, rolled OS first like any other, so a bundle is undone as one thing.

`paused` holds the whole bundle: the DPUSet gets `paused` (no DPU starts an OS update) and each service
`upgrade.paused` (no instance starts an upgrade); what is under way finishes. A change made while
paused is written but does not start anywhere until the bundle is resumed.

The services are written by this controller, so the API's rule that only admins may deploy a
privileged service or a kernel module applies to the DPUDeployment itself (security/policy.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from ..api.errors import AlreadyExists, Conflict, NotFound
from ..api.kinds import lookup
from ..api.kinds.services import DEPLOYMENT_LABEL, DeploymentRevision, DPUDeploymentSpec
from ..api.meta import Severity, isotime, now
from ..api.selectors import LabelSelector
from ..runtime.conditions import set_condition
from ..runtime.controller import DONE, Key, Mapper, Reconciler, Result
from ..store.reads import Change
from ..store.store import Store
from .desired import digest

log = logging.getLogger(__name__)
WAIT_RETRY = 2.0
HISTORY = 10  # revisions kept in status.history


def service_name(deployment: str, service: str) -> str:
    return f"{deployment}-{service}"


def _owned(deployment: dict[str, Any], name: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    meta = deployment["metadata"]
    return {
        "kind": kind,
        "metadata": {
            "name": name,
            "labels": {DEPLOYMENT_LABEL: meta["name"]},
            "ownerReferences": [
                {"kind": "DPUDeployment", "name": meta["name"], "uid": meta["uid"], "controller": True}
            ],
        },
        "spec": spec,
    }


def _service_spec(name: str, spec: DPUDeploymentSpec, service: str) -> dict[str, Any]:
    body = dict(spec.services[service])
    body["upgrade"] = {**(body.get("upgrade") or {}), "paused": spec.paused}
    body["placement"] = {"mode": "EveryDPU", "selector": spec.selector.model_dump(mode="json", exclude_none=True)}
    body["dependsOn"] = [
        {
            **dep,
            "service": service_name(name, dep["service"]) if dep.get("service") in spec.services else dep["service"],
        }
        for dep in body.get("dependsOn") or []
    ]
    return body


def _apply(store: Store, project: str, desired: dict[str, Any]) -> dict[str, Any]:
    """Create the owned object, or write its spec when it differs (keeping what others set beside it)."""
    kind, name = desired["kind"], desired["metadata"]["name"]
    try:
        current = store.get(kind, name, project)
    except NotFound:
        try:
            return store.create({**desired, "metadata": {**desired["metadata"], "project": project}})
        except AlreadyExists:
            current = store.get(kind, name, project)
    spec = {**current.get("spec", {}), **desired["spec"]}
    if _normal(kind, spec) == _normal(kind, current.get("spec") or {}):
        return current  # the store keeps specs with their defaults: compare them as the kind reads them
    return store.update({**current, "spec": spec})


def _normal(kind: str, spec: dict[str, Any]) -> Any:
    model = lookup(kind).model
    return model.model_validate({"kind": kind, "metadata": {"name": "x"}, "spec": spec}).model_dump(mode="json")["spec"]


def _dpuset_done(dpuset: dict[str, Any]) -> bool:
    status = dpuset.get("status") or {}
    return (
        status.get("observedGeneration") == dpuset["metadata"].get("generation") and status.get("phase") == "Complete"
    )


def bundle_of(spec: dict[str, Any]) -> dict[str, Any]:
    """What a revision is: the spec without `paused` (pausing and resuming change no revision)."""
    return {k: v for k, v in spec.items() if k != "paused"}


def record_revision(status: dict[str, Any], spec: dict[str, Any]) -> bool:
    """Number the spec's revision in `status` (revision, history); True when it is new or seen again."""
    bundle = bundle_of(spec)
    key = digest(bundle)
    history = [DeploymentRevision.model_validate(h) for h in status.get("history") or []]
    if history and history[-1].digest == key:
        return False
    number = max((h.revision for h in history), default=0) + 1
    history = [h for h in history if h.digest != key]  # seen again (an undo): it moves to the top
    history.append(DeploymentRevision(revision=number, digest=key, spec=bundle, seenAt=isotime(now())))
    status["history"] = [h.model_dump(mode="json") for h in history[-HISTORY:]]
    status["revision"] = number
    return True


def visit(store: Store, project: str, name: str) -> bool:
    """One visit (see the module doc). True while it waits for the OS rollout or the services."""
    try:
        doc = store.get("DPUDeployment", name, project)
    except NotFound:
        return False  # what it owned goes with it (ownerReferences)
    if doc["metadata"].get("deletionTimestamp"):
        return False
    spec = DPUDeploymentSpec.model_validate(doc["spec"])
    generation = doc["metadata"].get("generation")
    status: dict[str, Any] = dict(doc.get("status") or {})
    record_revision(status, doc["spec"])
    os_ready = True
    if spec.dpuSet is not None:
        dpuset = _apply(
            store,
            project,
            _owned(doc, name, "DPUSet", {
                "selector": spec.selector.model_dump(mode="json", exclude_none=True),
                "template": spec.dpuSet.template.model_dump(mode="json", exclude_none=True),
                "strategy": spec.dpuSet.strategy.model_dump(mode="json", exclude_none=True),
                "paused": spec.paused,
            }),
        )  # fmt: skip
        os_ready = _dpuset_done(dpuset)
        ds = dpuset.get("status") or {}
        status["dpuSet"] = {
            "name": name,
            "phase": ds.get("phase") or "Pending",
            "dpus": ds.get("dpus", 0),
            "updated": ds.get("updated", 0),
            "ready": ds.get("ready", 0),
        }
    existing = {
        s["metadata"]["name"]: s
        for s in store.list("DPUService", project, LabelSelector(matchLabels={DEPLOYMENT_LABEL: name})).items
    }
    summaries: dict[str, dict[str, Any]] = {}
    settled = 0
    for service in spec.services:
        owned = service_name(name, service)
        current = existing.get(owned)
        if os_ready:
            current = _apply(store, project, _owned(doc, owned, "DPUService", _service_spec(name, spec, service)))
        st = (current or {}).get("status") or {}
        upgrade = (st.get("upgrade") or {}).get("phase")
        fresh = current is not None and st.get("observedGeneration") == current["metadata"].get("generation")
        done = fresh and upgrade == "Complete" and st.get("desired", 0) > 0 and st.get("running") == st.get("desired")
        settled += done
        summaries[service] = {
            "dpuService": owned,
            "desired": st.get("desired", 0),
            "running": st.get("running", 0),
            "upgrade": upgrade or ("WaitingForOS" if not os_ready else "Pending"),
        }
    for stale in sorted(set(existing) - {service_name(name, s) for s in spec.services}):
        with contextlib.suppress(NotFound):
            store.delete("DPUService", stale, project)
    status["services"] = summaries
    status["servicesReady"] = f"{settled}/{len(spec.services)}"
    status["observedGeneration"] = generation
    if spec.paused and (not os_ready or settled < len(spec.services)):
        phase, message = (
            "Paused",
            (
                f"paused at revision {status['revision']}: nothing more starts (`dpufleet deployment resume {name}`); "
                + ("the OS rollout holds" if not os_ready else f"{settled}/{len(spec.services)} service(s) settled")
            ),
        )
    elif not os_ready:
        phase, message = "RollingOS", f"the DPUSet rolls the bundle's OS first ({status['dpuSet']['phase']})"
    elif settled < len(spec.services):
        phase, message = (
            "Deploying",
            f"{settled}/{len(spec.services)} service(s) run everywhere at the bundle's revision",
        )
    else:
        phase, message = "Ready", f"the OS and {len(spec.services)} service(s) run on every selected DPU"
    status["phase"] = phase
    set_condition(status, "Ready", phase == "Ready", phase, message,
                  severity=None if phase == "Ready" else Severity.INFO, generation=generation)  # fmt: skip
    try:
        store.update_status("DPUDeployment", name, status, project)
    except (NotFound, Conflict):
        return True
    return phase not in ("Ready", "Paused")


class DPUDeploymentReconciler(Reconciler):
    """One per kind: DPUDeployment. Woken by changes of the DPUSet and the DPUServices it owns."""

    kind = "DPUDeployment"
    resync = 60.0
    workers = 2

    def __init__(self, store: Store) -> None:
        self.store = store

    def watches(self) -> dict[str, Mapper]:
        return {"DPUSet": self._owner, "DPUService": self._owner}

    @staticmethod
    def _owner(change: Change) -> list[Key]:
        owner = ((change.object().get("metadata") or {}).get("labels") or {}).get(DEPLOYMENT_LABEL)
        return [Key(change.project, owner)] if owner else []

    async def reconcile(self, key: Key) -> Result:
        waiting = await asyncio.to_thread(visit, self.store, key.project, key.name)
        return Result(requeue_after=WAIT_RETRY) if waiting else DONE
