"""What one DPU should run: the instances its DPUAllocation holds, each with its service's artifact and config.

The agent asks for this over the agent protocol (`GET /agent/v1/services`; the host agent asks for each
DPU its host carries, `?dpu=NAME`, for the instances placed on the host) and keeps the last answer on
the DPU, so that after a reboot it starts the same instances before the control plane is reachable.
An instance whose service is being deleted is left out (the runtime stops it).

What an instance runs (artifact, config, resources, probes...) comes from the service's upgrade
(services/upgrade.py): a DPU it holds back, or whose upgrade failed, gets the current revision
(`status.upgrade.template`), the others the update revision (`updateTemplate`). A spec change reaches
no DPU before the controller has seen it and chosen the DPUs that move first.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from ..api.agent_services import DesiredInstance, DesiredServices
from ..api.errors import NotFound
from ..api.kinds import DPUServiceSpec
from ..images.verify import project_spec
from ..store.store import Store
from .trust import publisher_class

# What a revision covers: the spec's fields an instance runs with (placement, priority and the upgrade
# strategy move no running instance).
TEMPLATE_FIELDS = ("artifact", "config", "resources", "restartPolicy", "privileged", "probes", "handoff")


def digest(value: object) -> str:
    """A short, stable digest of a JSON value (keys sorted): what names a revision."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def revisions(spec: DPUServiceSpec) -> tuple[str, str]:
    """(revision, configRevision): what needs a new container when it changes, and the config files alone."""
    runs: dict[str, object] = {
        "artifact": spec.artifact.model_dump(mode="json", exclude={"signedManifest"}),  # re-signing restarts nothing
        "env": spec.config.env,
        "args": spec.config.args,
        "resources": spec.resources.model_dump(mode="json"),
        "privileged": spec.privileged,
        "probes": spec.probes.model_dump(mode="json"),
    }
    if spec.handoff is not None:  # absent for every other service: their revisions stay what they were
        runs["handoff"] = spec.handoff.model_dump(mode="json")
    files = [f.model_dump(mode="json") for f in spec.config.files]
    if spec.config.reload is None:
        runs["files"] = files  # the service cannot reload them: new files are a new container
    return digest(runs), digest(files)


def template_of(spec: DPUServiceSpec) -> dict[str, Any]:
    """The part of the spec a revision runs, as stored in `status.upgrade.template`."""
    dumped = spec.model_dump(mode="json", exclude_none=True)
    return {name: dumped[name] for name in TEMPLATE_FIELDS if name in dumped}


def held_spec(spec: DPUServiceSpec, template: dict[str, Any]) -> DPUServiceSpec:
    """The spec as the current revision ran it: the spec with the template's fields put back."""
    return DPUServiceSpec.model_validate({**spec.model_dump(mode="json"), **template})


def desired_instance(service: str, instance: str, spec: DPUServiceSpec) -> DesiredInstance:
    """One instance of a service as the runtime runs it, with the revisions that say when to restart it."""
    revision, config_revision = revisions(spec)
    return DesiredInstance(
        service=service,
        instance=instance,
        revision=revision,
        configRevision=config_revision,
        artifact=spec.artifact,
        files=spec.config.files,
        reload=spec.config.reload,
        env=spec.config.env,
        args=spec.config.args,
        resources=spec.resources,
        restartPolicy=spec.restartPolicy,
        privileged=spec.privileged,
        probes=spec.probes,
        handoff=spec.handoff,
        after=sorted(d.service for d in spec.dependsOn if d.scope == "SameDPU"),
    )


def _held_back(upgrade: dict[str, Any]) -> frozenset[str]:
    """The DPUs the upgrade keeps on the current revision: held, or whose upgrade failed."""
    return frozenset([*(upgrade.get("held") or []), *(f.get("dpu") for f in upgrade.get("failed") or [])])


def runs_template(doc: dict[str, Any], dpu: str) -> dict[str, Any] | None:
    """What the service's upgrade says this DPU runs: the current revision's template while it holds the
    DPU back (or its upgrade failed there), else the update revision's. None before the controller's first
    visit (the spec, then). Never the spec as just written: the controller decides when a DPU moves."""
    upgrade = (doc.get("status") or {}).get("upgrade") or {}
    if dpu in _held_back(upgrade):
        return upgrade.get("template") or None
    return upgrade.get("updateTemplate") or None


@dataclass(frozen=True)
class _Rendered:
    """One version of a service (its resourceVersion), as every DPU that holds it is served it."""

    back: frozenset[str]
    current: DesiredInstance  # instance name left empty: each DPU's is filled in
    update: DesiredInstance
    runs_on: str  # placement.runsOn as the controller has seen it (status.runsOn): DPU or Host
    since: str  # when it became that (status.runsOnSince): reports older than that are of the last stint
    current_class: str = "unsigned"  # the publisher class of each one's artifact (serviceSandboxes' key)
    update_class: str = "unsigned"


_RENDERED: OrderedDict[tuple[str, str, str], _Rendered] = OrderedDict()
_RENDERED_MAX = 4096
_LOCK = threading.Lock()


def _render(project: str, doc: dict[str, Any]) -> _Rendered:
    """Every DPU asks every few seconds; a service changes far less often: its two renderings are made once
    per resourceVersion (any write makes a new one) and kept for the next DPUs that ask."""
    meta = doc["metadata"]
    # the uid too: a resourceVersion is unique within one store only (a service deleted and made again, another
    # store in the same process, a store restored from a backup)
    key = (project, str(meta["name"]), f"{meta.get('uid')}@{meta.get('resourceVersion')}")
    with _LOCK:
        found = _RENDERED.get(key)
        if found is not None:
            _RENDERED.move_to_end(key)
            return found
    spec = DPUServiceSpec.model_validate(doc["spec"])
    upgrade = (doc.get("status") or {}).get("upgrade") or {}
    current, update = (
        held_spec(spec, t) if t else spec for t in (upgrade.get("template"), upgrade.get("updateTemplate"))
    )
    rendered = _Rendered(
        _held_back(upgrade),
        desired_instance(key[1], "", current),
        desired_instance(key[1], "", update),
        str((doc.get("status") or {}).get("runsOn") or spec.placement.runsOn),
        str((doc.get("status") or {}).get("runsOnSince") or ""),
        publisher_class(current),
        publisher_class(update),
    )
    with _LOCK:
        _RENDERED[key] = rendered
        while len(_RENDERED) > _RENDERED_MAX:
            _RENDERED.popitem(last=False)
    return rendered


RUNTIME_FIELD = {"DPU": "instances", "Host": "hostInstances"}  # whose report, in the DPUAllocation's status


def serving(entry: dict[str, Any], since: str = "") -> bool:
    """A runtime's report of an instance says it serves: Running and ready, reported at `since` or later (a
    report from before a move began is of the instance the last move stopped, not of the one it starts)."""
    return entry.get("phase") == "Running" and bool(entry.get("ready")) and str(entry.get("at") or "") >= since


def desired_services(store: Store, project: str, dpu: str, where: str = "DPU") -> DesiredServices:
    """What the runtime at `where` runs for `dpu`: the DPU's own agent (DPU), or the host agent of the host
    that carries it (Host), each the instances whose service's placement.runsOn names it. A move (runsOn
    changed) starts an instance at the new place while the old keeps it, until the new reports it ready."""
    try:
        allocation = store.get("DPUAllocation", dpu, project)
    except NotFound:
        return DesiredServices(dpu=dpu)
    status = allocation.get("status") or {}
    other = "Host" if where == "DPU" else "DPU"
    here = {str(e.get("service")) for e in status.get(RUNTIME_FIELD[where]) or []}
    there = {str(e.get("service")): e for e in status.get(RUNTIME_FIELD[other]) or []}
    instances: list[DesiredInstance] = []
    sandboxes: dict[str, str] | None = None  # the project's serviceSandboxes, read once the first is placed
    for placed in (allocation.get("spec") or {}).get("instances") or []:
        try:
            doc = store.get("DPUService", placed["service"], project)
        except NotFound:
            continue
        if (doc.get("metadata") or {}).get("deletionTimestamp"):
            continue
        rendered = _render(project, doc)
        service = str(placed["service"])
        moving_off = service in here and not serving(there.get(service) or {}, rendered.since)
        if rendered.runs_on != where and not moving_off:
            continue  # runs at the other place (or moves there, and serves there now)
        held = dpu in rendered.back
        chosen = rendered.current if held else rendered.update
        update: dict[str, Any] = {
            "service": service,
            "instance": placed["instance"],
            "serviceUID": doc["metadata"].get("uid"),
        }
        if sandboxes is None:
            sandboxes = dict(project_spec(store, project).get("serviceSandboxes") or {})
        sandbox = sandboxes.get(rendered.current_class if held else rendered.update_class, "standard")
        if sandbox != "standard":
            update["sandbox"] = sandbox
        if placed.get("cores"):
            update["cores"] = [int(c) for c in placed["cores"]]
        if where == "DPU" and chosen.handoff is not None:
            update.update(_moving_state(store, project, dpu, service, placed))
        instances.append(chosen.model_copy(update=update))
    return DesiredServices(dpu=dpu, instances=sorted(instances, key=lambda i: i.service))


def _runtime_entry(store: Store, project: str, dpu: str, service: str) -> dict[str, Any]:
    """What the DPU's own runtime last reported of the service's instance there ({} for nothing)."""
    try:
        status = store.get("DPUAllocation", dpu, project).get("status") or {}
    except NotFound:
        return {}
    return next((dict(e) for e in status.get("instances") or [] if e.get("service") == service), {})


def exported_state(store: Store, project: str, source: str, service: str, to: str) -> dict[str, Any] | None:
    """What the service's instance on `source` reports it exported for `to` (stateExport), if it has."""
    export = _runtime_entry(store, project, source, service).get("stateExport") or {}
    return dict(export) if export.get("to") == to else None


def _moving_state(store: Store, project: str, dpu: str, service: str, placed: dict[str, Any]) -> dict[str, Any]:
    """A move between DPUs with a state handoff (the controller pairs the two instances in their DPUs'
    allocation records): the leaving one is told where its state goes; the new one where it comes from
    and, once the leaving one has exported it, its digest (the agent API adds a URL to fetch it)."""
    found: dict[str, Any] = {}
    target = placed.get("stateTo")
    if target and (
        exported_state(store, project, dpu, service, str(target)) is not None
        or _runtime_entry(store, project, str(target), service).get("awaitingState")
    ):  # it drains once the new instance has pulled its artifact, and stays so once it has handed its state on
        found["stateTo"] = str(target)
    source = placed.get("stateFrom")
    if source:
        found["stateFrom"] = str(source)
        export = exported_state(store, project, str(source), service, dpu)
        if export is not None:
            found["stateSha256"] = str(export["sha256"])
    return found
