"""DPUService controller: places a service's instances on DPUs and keeps its status.

One visit of a service (`schedule_service`, blocking, run in a thread):

1. read the project's DPUs, their DPUAllocations and flavors, and the other services (the snapshot,
   `services/snapshot.py`);
2. work out how many instances are missing (EveryDPU: every DPU that fits; Replicas: N; DPUs: the
   listed ones) and release the ones no longer wanted (fewer replicas, a DPU no longer listed, the
   service deleted);
3. let the pure core (`services/scheduling.py`) choose DPUs, then commit each placement to the DPU's
   DPUAllocation with that record's resourceVersion as precondition, checking the fit again against
   the record as it is: a concurrent scheduler that took the DPU first makes the write fail
   (Conflict) and the record is read and checked again, so a DPU is never overcommitted;
4. mirror the DPU's `status.allocatable` and `status.allocated`, and write the service's status:
   desired / scheduled / running / ready, the instances, and for pending ones the reason in numbers.

Ordering: an instance that depends on a service on the same DPU goes only where that service is
already scheduled; a dependency `Anywhere` must have a scheduled instance first. Services wait
(requeued) until then. Priority orders a batch (the bench places higher priority first); a visit
places one service. A service with priority above 0 whose instances find no room preempts: on a DPU
where only resources are short, the fewest strictly lower-priority instances that make room are
released (never one that another instance there depends on), each recorded as a `Preempted` Event on
its service (which is woken to place it again elsewhere) and a `Preempting` Event on the preemptor.

What runs: each DPU's runtime (agent/services.py) reports its instances into the DPUAllocation's
status (services/reports.py); a change there wakes the services it names, and the visit shows each
instance's phase, readiness and restarts, counts running (at the service's current revision) and
ready, and sets the Running condition (AllRunning, Starting, InstancesFailed with the first reason).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..api.errors import AlreadyExists, Conflict, NotFound
from ..api.kinds import DPUFlavorSpec, DPUServiceSpec, UpgradeStatus, resolve_limit
from ..api.meta import Severity, isotime, now, seconds_since
from ..crypto.signing import ManifestRefused
from ..runtime.conditions import set_condition
from ..runtime.controller import DONE, Key, Mapper, Reconciler, Result
from ..runtime.events import EventRecorder
from ..runtime.status import mutate_status_sync
from ..store.reads import Change
from ..store.store import Store
from .admission import dependency_graph
from .desired import RUNTIME_FIELD, revisions, serving, template_of
from .scheduling import (
    NO_PINNED_CORES,
    Node,
    Placed,
    Request,
    Resources,
    Shape,
    Victim,
    find_cycle,
    place,
    preemption_plan,
)
from .snapshot import DRAIN_ANNOTATION, allocation_sum, node_of, request_of, request_resources, resources_dict
from .trust import verify_service_artifact
from .upgrade import Seen, Step, advance, expected_revision

log = logging.getLogger(__name__)
PENDING_RETRY = 5.0  # a service with pending instances looks again this often
WAITING_RETRY = 2.0  # one waiting for a dependency
UPGRADE_RETRY = 2.0  # one whose instances are being upgraded
CAS_ATTEMPTS = 8
HANDOFF_GRACE = 60.0  # a move's state handoff is given up this long past its steps' timeouts


@dataclass
class Snapshot:
    """A project's fleet as one visit sees it."""

    nodes: list[Node]
    by_name: dict[str, Node]
    allocations: dict[str, dict[str, Any]]  # DPU name -> DPUAllocation document
    services: dict[str, dict[str, Any]]
    flavors: dict[str, DPUFlavorSpec] = field(default_factory=dict)


def read_snapshot(store: Store, project: str) -> Snapshot:
    flavors = {
        f["metadata"]["name"]: DPUFlavorSpec.model_validate(f.get("spec") or {})
        for f in store.list("DPUFlavor", project).items
    }
    allocations = {a["spec"]["dpu"]: a for a in store.list("DPUAllocation", project).items}
    nodes: list[Node] = []
    shapes: dict[Shape, Shape] = {}
    for dpu in store.list("DPU", project).items:
        status, spec = dpu.get("status") or {}, dpu.get("spec") or {}
        flavor = flavors.get(status.get("appliedFlavor") or spec.get("flavor") or "")
        nodes.append(node_of(dpu, allocations.get(dpu["metadata"]["name"]), flavor, shapes))
    nodes.sort(key=lambda n: n.name)
    services = {s["metadata"]["name"]: s for s in store.list("DPUService", project).items}
    return Snapshot(nodes, {n.name: n for n in nodes}, allocations, services, flavors)


def instances_of(snapshot: Snapshot, service: str) -> list[tuple[str, dict[str, Any]]]:
    """(DPU, allocation) of every instance of the service, in DPU order."""
    found = []
    for dpu in sorted(snapshot.allocations):
        for inst in snapshot.allocations[dpu]["spec"].get("instances") or []:
            if inst["service"] == service:
                found.append((dpu, inst))
    return found


# --- the DPU's allocation record, written by compare-and-swap --------------------------------------------------


def _allocation_doc(project: str, dpu: str, instances: list[dict[str, Any]], rv: str | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": dpu, "project": project}
    if rv is not None:
        meta["resourceVersion"] = rv
    return {"kind": "DPUAllocation", "metadata": meta, "spec": {"dpu": dpu, "instances": instances}}


def commit_placement(store: Store, project: str, node: Node, request: Request) -> bool:
    """Add one instance to the DPU's allocation record unless the record, as stored, leaves no room.

    The write carries the record's resourceVersion (or is a create): if another scheduler wrote it
    since it was read, the write fails and the fit is checked again on the record as it now is."""
    instance = {
        "service": request.service,
        "instance": f"{request.service}/{node.name}",
        "cpuMillicores": request.resources.cpu_millicores,
        "memoryMiB": request.resources.memory_mib,
        "hugepagesMiB": request.resources.hugepages_mib,
        "storageMiB": request.resources.storage_mib,
        "accelerators": list(request.accelerators),
        "priority": request.priority,
    }
    for _ in range(CAS_ATTEMPTS):
        try:
            current = store.get("DPUAllocation", node.name, project)
        except NotFound:
            current = None
        instances = list((current or {}).get("spec", {}).get("instances") or [])
        if any(i["service"] == request.service for i in instances):
            return False  # another scheduler placed this service here already
        if (node.allocatable - allocation_sum(instances)).shortage(request.resources) is not None:
            return False  # what the DPU has left no longer fits it
        if request.pinned_cores:  # the cores no instance in the record, as stored, has pinned: the lowest first
            taken = {int(c) for i in instances for c in i.get("cores") or []}
            free = [c for c in node.core_ids if c not in taken]
            if len(free) < request.pinned_cores:
                return False
            instance["cores"] = free[: request.pinned_cores]
        doc = _allocation_doc(
            project,
            node.name,
            [*instances, instance],
            None if current is None else current["metadata"]["resourceVersion"],
        )
        try:
            if current is None:
                store.create(doc)
            else:
                store.update(doc)
        except (Conflict, AlreadyExists):
            continue
        return True
    return False


def recharge(store: Store, project: str, node: Node, request: Request) -> bool | str | None:
    """Make the service's instance on the DPU take what the service asks for now (a host-placed instance
    takes nothing; one moving back to the DPU takes its resources again): True when the record says so,
    what is short when the DPU has no room for the new charge (the record keeps the old), None when it
    was already so. Compare-and-swap, as placing."""
    for _ in range(CAS_ATTEMPTS):
        try:
            current = store.get("DPUAllocation", node.name, project)
        except NotFound:
            return None
        instances = list(current.get("spec", {}).get("instances") or [])
        mine = next((i for i in instances if i["service"] == request.service), None)
        if mine is None:
            return None
        cores = [int(c) for c in mine.get("cores") or []]
        if request_resources(mine) == request.resources and len(cores) == request.pinned_cores:
            return None
        others = [i for i in instances if i is not mine]
        short = (node.allocatable - allocation_sum(others)).shortage(request.resources)
        if short is not None:
            return short
        changed = {**mine, **resources_dict(request.resources)}
        changed.pop("cores", None)
        if request.pinned_cores:  # its cores again: those it has first, then the lowest no other instance pins
            taken = {int(c) for i in others for c in i.get("cores") or []}
            free = [c for c in cores if c in node.core_ids] + [c for c in node.core_ids if c not in taken | set(cores)]
            if len(free) < request.pinned_cores:
                return NO_PINNED_CORES
            changed["cores"] = sorted(free[: request.pinned_cores])
        doc = _allocation_doc(
            project,
            node.name,
            [changed if i is mine else i for i in instances],
            current["metadata"]["resourceVersion"],
        )
        try:
            store.update(doc)
        except Conflict:
            continue
        return True
    return None  # it kept changing: the next visit tries again


def mark_instance(store: Store, project: str, dpu: str, service: str, fields: dict[str, Any]) -> bool:
    """Set (a value) or remove (None) fields of the service's instance in the DPU's allocation record, by
    compare-and-swap: False when the DPU holds no instance of it."""
    for _ in range(CAS_ATTEMPTS):
        try:
            current = store.get("DPUAllocation", dpu, project)
        except NotFound:
            return False
        instances = list(current.get("spec", {}).get("instances") or [])
        mine = next((i for i in instances if i["service"] == service), None)
        if mine is None:
            return False
        changed = {k: v for k, v in {**mine, **fields}.items() if v is not None}
        if changed == mine:
            return True
        doc = _allocation_doc(
            project, dpu, [changed if i is mine else i for i in instances], current["metadata"]["resourceVersion"]
        )
        try:
            store.update(doc)
        except Conflict:
            continue
        return True
    raise Conflict(f"dpuallocation {dpu!r} kept changing while marking {service!r}")


def release(store: Store, project: str, dpu: str, service: str) -> None:
    """Remove the service's instance from the DPU's allocation record (compare-and-swap as well)."""
    for _ in range(CAS_ATTEMPTS):
        try:
            current = store.get("DPUAllocation", dpu, project)
        except NotFound:
            return
        instances = [i for i in current["spec"].get("instances") or [] if i["service"] != service]
        if len(instances) == len(current["spec"].get("instances") or []):
            return
        try:
            store.update(_allocation_doc(project, dpu, instances, current["metadata"]["resourceVersion"]))
        except Conflict:
            continue
        return
    raise Conflict(f"dpuallocation {dpu!r} kept changing while releasing {service!r}")


def mirror_dpu_status(store: Store, project: str, node: Node) -> None:
    """DPU status.allocatable and status.allocated, from the record (what `dpufleet describe dpu` shows)."""
    try:
        record = store.get("DPUAllocation", node.name, project)
        instances = record["spec"].get("instances") or []
        version: int | None = int(record["metadata"]["resourceVersion"])
    except NotFound:
        instances, version = [], None
    allocatable, allocated = resources_dict(node.allocatable), resources_dict(allocation_sum(instances))

    def mutate(status: dict[str, Any]) -> None:
        # two visits of services on one DPU mirror concurrently: the one that read the newer record wins
        if version is not None and int(status.get("allocationVersion") or 0) > version:
            raise _Stale
        status["allocatable"], status["allocated"] = allocatable, allocated
        status["allocationVersion"] = version

    with contextlib.suppress(NotFound, _Stale):  # the DPU was deleted meanwhile, or a newer mirror is there
        mutate_status_sync(store, "DPU", node.name, mutate, project)


class _Stale(Exception):
    """The DPU's status mirrors a newer allocation record than the one this visit read."""


# --- one visit ---------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    requeue_after: float | None = None
    dependencies: frozenset[str] | None = None  # None: the service is gone
    preempted: list[str] = field(default_factory=list)  # services that lost an instance to this visit


def _victims_on(snapshot: Snapshot, node: Node, service: str) -> list[Victim]:
    """The instances on the DPU that may be preempted: not the service's own, and none that another
    instance on the same DPU depends on."""
    instances = ((snapshot.allocations.get(node.name) or {}).get("spec") or {}).get("instances") or []
    needed: set[str] = set()
    for inst in instances:
        deps = ((snapshot.services.get(inst["service"]) or {}).get("spec") or {}).get("dependsOn") or []
        needed.update(d["service"] for d in deps if d.get("scope", "SameDPU") == "SameDPU")
    victims = []
    for inst in instances:
        name = inst["service"]
        if name == service or name in needed:
            continue
        priority = inst.get("priority")
        if priority is None:
            priority = ((snapshot.services.get(name) or {}).get("spec") or {}).get("priority") or 0
        victims.append(Victim(name, int(priority), request_resources(inst)))
    return victims


def _preempt(
    store: Store, project: str, snapshot: Snapshot, request: Request, wanted: int, hosts: Counter[str | None]
) -> tuple[list[Node], list[str]]:
    """Make room for up to `wanted` instances by preempting lower-priority ones (see the module doc)."""
    plan = preemption_plan(
        snapshot.nodes, request, wanted, lambda node: _victims_on(snapshot, node, request.service), hosts
    )
    events = EventRecorder(store, "dpuservice-scheduler")
    committed: list[Node] = []
    preempted: list[str] = []
    preemptor = snapshot.services.get(request.service)
    for node, victims in plan:
        for victim in victims:
            release(store, project, node.name, victim.service)
            node.allocated = node.allocated - victim.resources
            node.services.discard(victim.service)
            preempted.append(victim.service)
            victim_doc = snapshot.services.get(victim.service)
            if victim_doc is not None:
                events.record(
                    victim_doc, "Preempted",
                    f"its instance on dpu/{node.name} was preempted by service {request.service!r} "
                    f"(priority {request.priority} > {victim.priority})", "Warning",
                )  # fmt: skip
        if commit_placement(store, project, node, request):
            committed.append(node)
            node.allocated = node.allocated + request.resources
            node.services.add(request.service)
            if preemptor is not None:
                names = ", ".join(sorted({v.service for v in victims}))
                events.record(preemptor, "Preempting", f"placed on dpu/{node.name} by preempting {names}")
        mirror_dpu_status(store, project, node)
    return committed, preempted


def _entry_of(snapshot: Snapshot, dpu: str, service: str) -> dict[str, Any] | None:
    """The service's instance in the DPU's allocation record, as the snapshot read it."""
    entries = ((snapshot.allocations.get(dpu) or {}).get("spec") or {}).get("instances") or []
    return next((i for i in entries if i["service"] == service), None)


def _leaving(spec: DPUServiceSpec, snapshot: Snapshot, dpu: str) -> bool:
    """The service's instance must leave the DPU: the DPU is draining, the service excludes it
    (`dpufleet service move`), or its labels no longer match the service's selector. A Replicas
    instance is replaced first; others are released."""
    node = snapshot.by_name.get(dpu)
    if node is None:
        return False
    selector = spec.placement.selector
    return (
        node.draining
        or dpu in spec.placement.exclude
        or (not selector.is_empty() and not selector.matches(node.labels))
    )


def _wanted(spec: DPUServiceSpec, snapshot: Snapshot, existing: list[str]) -> tuple[int, list[str]]:
    """How many new instances to place, and which DPUs' instances to release.

    A Replicas instance on a draining DPU is replaced first and released once its replacement is
    placed (`_release_drained`); an EveryDPU or DPUs instance there cannot move and is released."""
    placement = spec.placement
    gone = [d for d in existing if d not in snapshot.by_name]  # the DPU was deleted: place it again
    if placement.mode == "Replicas":
        replicas = placement.replicas or 0
        live = [d for d in existing if d in snapshot.by_name and not _leaving(spec, snapshot, d)]
        return max(0, replicas - len(live)), [*gone, *live[replicas:]]
    drained = [d for d in existing if _leaving(spec, snapshot, d)]
    if placement.mode == "DPUs":
        listed = set(placement.dpus)
        unlisted = [d for d in existing if d not in listed]
        return len(listed - set(existing)), sorted({*gone, *unlisted, *drained})
    return len(snapshot.nodes), sorted({*gone, *drained})  # EveryDPU: every DPU that fits


def schedule_service(store: Store, project: str, name: str) -> Outcome:
    """One visit of a service (see the module doc). Blocking: run it in a thread."""
    snapshot = read_snapshot(store, project)
    doc = snapshot.services.get(name)
    if doc is None or doc["metadata"].get("deletionTimestamp"):
        for dpu, _ in instances_of(snapshot, name):
            release(store, project, dpu, name)
            if dpu in snapshot.by_name:
                mirror_dpu_status(store, project, snapshot.by_name[dpu])
        return Outcome()
    spec = DPUServiceSpec.model_validate(doc["spec"])
    deps = frozenset(d.service for d in spec.dependsOn)
    generation = doc["metadata"].get("generation")
    status: dict[str, Any] = dict(doc.get("status") or {})
    if status.get("runsOn") != spec.placement.runsOn:  # a move begins (services/desired.py reads these)
        status["runsOn"], status["runsOnSince"] = spec.placement.runsOn, isotime(now())
    where = (str(status["runsOn"]), str(status.get("runsOnSince") or ""))
    existing = [dpu for dpu, _ in instances_of(snapshot, name)]
    to_place, to_release = _wanted(spec, snapshot, existing)
    budget = _Budget.of(spec, snapshot, name, existing, where)
    if budget is not None and spec.placement.mode != "Replicas":  # a drained DPU's instance cannot move
        to_release = [d for d in to_release if not _leaving(spec, snapshot, d) or budget.may_release(d)]
    for dpu in to_release:
        release(store, project, dpu, name)
        if dpu in snapshot.by_name:
            mirror_dpu_status(store, project, snapshot.by_name[dpu])
    kept = [d for d in existing if d not in to_release]
    request = request_of(name, spec)
    no_room: dict[str, str] = {}  # DPUs with no room for the new resources: the upgrade holds them back
    for dpu in list(kept):  # a move between host and DPU (or new resources) changes what each one takes
        node, entry = snapshot.by_name.get(dpu), _entry_of(snapshot, dpu, name)
        if node is None or entry is None or request_resources(entry) == request.resources:
            continue  # charged as asked, by the snapshot: no store read per instance
        was_on_host = request_resources(entry) == Resources()
        if (
            request.resources == Resources()
            and (runtime_entry(snapshot, dpu, name, where) or {}).get("runsOn") == "DPU"
        ):
            continue  # on its way to the host: the DPU's instance runs, and is charged, until the host's serves
        done = recharge(store, project, node, request)
        if done is True:
            mirror_dpu_status(store, project, node)
        elif isinstance(done, str) and not was_on_host:
            no_room[dpu] = done
        elif isinstance(done, str):
            # back from the host to a DPU with no room for it: placed again where it fits (or Pending)
            release(store, project, dpu, name)
            mirror_dpu_status(store, project, node)
            node.services.discard(name)  # this visit places it as the DPU now is
            kept.remove(dpu)
            if spec.placement.mode != "EveryDPU":
                to_place += 1

    waiting = _blocked(name, spec, snapshot)
    refused = _trusted(store, project, name, spec, status, generation)
    if refused is not None and waiting is None and not status.get("upgrade"):
        waiting = ("ArtifactRefused", refused)  # never placed: nothing runs it yet
    preempted: list[str] = []
    placed: Placed | None = None
    committed: list[Node] = []
    if waiting is None and to_place:
        start = zlib.crc32(name.encode()) % len(snapshot.nodes) if snapshot.nodes else 0
        hosts = Counter(snapshot.by_name[d].host for d in kept if d in snapshot.by_name)
        placed = place(snapshot.nodes, request, to_place, start, hosts)
        for node in placed.nodes:
            if commit_placement(store, project, node, request):
                committed.append(node)
                mirror_dpu_status(store, project, node)
        short = to_place - len(committed)
        if short > 0 and request.priority > 0 and len(committed) == len(placed.nodes):
            for node in committed:
                hosts[node.host] += 1
            more, preempted = _preempt(store, project, snapshot, request, short, hosts)
            committed += more
    held: set[str] = set()
    if spec.placement.mode == "Replicas":  # a drained DPU's instance goes once its replacement is placed
        replicas = spec.placement.replicas or 0
        draining = [d for d in kept if _leaving(spec, snapshot, d)]
        if spec.handoff is not None and where[0] == "DPU":  # ... and, with a state handoff, serves with its state
            now_there = {*kept, *(n.name for n in committed)}
            held = _state_moves(store, project, snapshot, doc, spec, draining, committed, now_there, where)
        surplus = len(kept) + len(committed) - replicas
        for dpu in draining[: max(0, surplus)]:
            if dpu in held or (budget is not None and not budget.may_release(dpu)):
                continue
            release(store, project, dpu, name)
            mirror_dpu_status(store, project, snapshot.by_name[dpu])
            kept.remove(dpu)
    scheduled = sorted([*kept, *(n.name for n in committed)])
    desired = _desired(spec, len(scheduled), placed)
    pending = max(0, desired - len(scheduled))
    if refused is not None and status.get("upgrade"):  # the instances keep what they run: no upgrade to it
        step = Step(UpgradeStatus.model_validate(status["upgrade"]))
    else:
        step = _upgrade(status, spec, snapshot, name, scheduled, where, no_room)
    status["upgrade"] = step.upgrade.model_dump(mode="json", exclude_none=True)
    _shape_status(
        status, snapshot, name, scheduled, desired, pending, placed, waiting, generation, step.upgrade, where,
    )  # fmt: skip
    if budget is not None:
        budget.condition(status, generation)
    try:
        store.update_status("DPUService", name, status, project)
    except NotFound:
        return Outcome()
    if step.events:
        recorder = EventRecorder(store, "dpuservice-upgrade")
        for reason, message, kind in step.events:
            recorder.record(doc, reason, message, kind)
    if waiting is not None:
        return Outcome(WAITING_RETRY, deps)
    retry = pending or len(committed) < len(placed.nodes if placed else []) or (budget and budget.blocked)
    if step.rolling or held:
        return Outcome(UPGRADE_RETRY, deps, sorted(set(preempted)))
    return Outcome(PENDING_RETRY if retry else None, deps, sorted(set(preempted)))


def _state_moves(
    store: Store,
    project: str,
    snapshot: Snapshot,
    doc: dict[str, Any],
    spec: DPUServiceSpec,
    draining: list[str],
    committed: list[Node],
    scheduled: set[str],
    where: tuple[str, str],
) -> set[str]:
    """The moves of a Replicas service with a state handoff off draining DPUs: the draining DPUs whose
    instance stays this visit.

    A leaving instance that serves is paired with a replacement this visit placed: the two allocation
    records say `stateTo` and `stateFrom`, the leaving DPU's runtime drains its instance and hands its
    state to the control plane (reported as `stateExport`), the replacement's runtime starts with it. The
    leaving instance is released once its replacement serves, or when the leaving DPU hands nothing on
    within three step timeouts and HANDOFF_GRACE (the replacement then starts without it: an Event says
    so). A leaving instance that does not serve has nothing to hand on and goes as any other."""
    assert spec.handoff is not None
    name = str(doc["metadata"]["name"])
    fresh = [n.name for n in committed]
    events = EventRecorder(store, "dpuservice-move")
    limit = spec.handoff.timeoutSeconds * 3 + HANDOFF_GRACE
    held: set[str] = set()
    for dpu in draining:
        target = (_entry_of(snapshot, dpu, name) or {}).get("stateTo")
        old = runtime_entry(snapshot, dpu, name, where) or {}
        if target is None:
            if not fresh or not serving(old) or old.get("runsOn") != "DPU":
                continue
            target = fresh.pop(0)
            mark_instance(store, project, target, name, {"stateFrom": dpu})
            mark_instance(store, project, dpu, name, {"stateTo": target, "stateSince": isotime(now())})
            events.record(doc, "StateHandoff", f"moving from dpu/{dpu} to dpu/{target} with its state")
            held.add(dpu)
            continue
        if target not in scheduled:  # the replacement is gone (its DPU deleted, preempted): start again
            mark_instance(store, project, dpu, name, {"stateTo": None, "stateSince": None})
            held.add(dpu)
            continue
        new = runtime_entry(snapshot, target, name, where) or {}
        if serving(new) and new.get("runsOn") == "DPU":
            size = (old.get("stateExport") or {}).get("bytes")
            mark_instance(store, project, target, name, {"stateFrom": None})
            events.record(doc, "StateHandedOff", f"moved from dpu/{dpu} to dpu/{target} with its state "
                          f"({size if size is not None else 'unknown'} bytes)")  # fmt: skip
            continue
        since = (_entry_of(snapshot, dpu, name) or {}).get("stateSince")
        if seconds_since(since) > limit:
            mark_instance(store, project, target, name, {"stateFrom": None})
            events.record(doc, "StateHandoffAbandoned", f"dpu/{dpu} handed no state on within {limit:g}s: the "
                          f"instance on dpu/{target} starts without it", "Warning")  # fmt: skip
            continue
        held.add(dpu)
    return held


def _trusted(
    store: Store, project: str, name: str, spec: DPUServiceSpec, status: dict[str, Any], generation: int | None
) -> str | None:
    """The Trusted condition (services/trust.py); the refusal's message when the artifact is refused."""
    was: dict[str, Any] = next((c for c in status.get("conditions") or [] if c.get("type") == "Trusted"), {})
    try:
        manifest = verify_service_artifact(store, project, name, spec)
    except ManifestRefused as exc:
        message = f"{exc.reason}: {exc.message}"
        set_condition(status, "Trusted", False, str(exc.reason), message, severity=Severity.WARNING,
                      generation=generation)  # fmt: skip
        if was.get("status") != "False" or was.get("reason") != str(exc.reason):
            with contextlib.suppress(NotFound):
                EventRecorder(store, "dpuservice-trust").record(
                    store.get("DPUService", name, project), "ArtifactRefused", message, "Warning"
                )
        return message
    if manifest is None:
        set_condition(status, "Trusted", True, "Unsigned", "unsigned artifact; the project accepts it",
                      generation=generation)  # fmt: skip
    else:
        signer = manifest.publisher
        set_condition(
            status, "Trusted", True, "Signed",
            f"{manifest.name} {manifest.version} signed by {signer.name} ({signer.publisherClass})",
            generation=generation,
        )  # fmt: skip
    return None


def _upgrade(
    status: dict[str, Any],
    spec: DPUServiceSpec,
    snapshot: Snapshot,
    name: str,
    scheduled: list[str],
    where: tuple[str, str],
    no_room: dict[str, str],
) -> Step:
    """The service's upgrade, one step on (services/upgrade.py): what each DPU runs, from its runtime's report."""
    stored = status.get("upgrade")
    upgrade = UpgradeStatus.model_validate(stored) if stored else None
    seen: dict[str, Seen] = {}
    for dpu in scheduled:
        entry = runtime_entry(snapshot, dpu, name, where)
        if entry is not None and entry.get("revision"):
            seen[dpu] = Seen(
                revision=str(entry["revision"]),
                config_revision=entry.get("configRevision"),
                phase=str(entry.get("phase") or ""),
                ready=bool(entry.get("ready")),
                restarts=int(entry.get("restarts") or 0),
                reason=entry.get("reason"),
            )
    revision, config_revision = revisions(spec)
    return advance(
        upgrade,
        f"{revision}.{config_revision}",
        template_of(spec),
        spec.upgrade,
        scheduled,
        seen,
        now(),
        _dependency_upgrading(spec, snapshot),
        no_room,
        _busy_dpus(name, scheduled, snapshot),
    )


def _busy_dpus(name: str, scheduled: list[str], snapshot: Snapshot) -> dict[str, str]:
    """The DPUs of this service that already upgrade as many other services as they allow at once (their
    annotation services.dpufleet.io/max-upgrading): DPU -> why this one waits there."""
    limits = {d: node.max_upgrading for d in scheduled if (node := snapshot.by_name.get(d)) and node.max_upgrading}
    if not limits:
        return {}
    upgrading: dict[str, list[str]] = {}
    for other, doc in snapshot.services.items():
        if other == name:
            continue
        for dpu in ((doc.get("status") or {}).get("upgrade") or {}).get("inFlight") or {}:
            if dpu in limits:
                upgrading.setdefault(dpu, []).append(other)
    return {
        dpu: f"{len(others)} other service(s) upgrading there ({', '.join(sorted(others)[:3])}; at most {limits[dpu]})"
        for dpu, others in upgrading.items()
        if len(others) >= limits[dpu]
    }


def _dependency_upgrading(spec: DPUServiceSpec, snapshot: Snapshot) -> str | None:
    """A service this one depends on that is upgrading (or whose change is not yet seen): wait for it."""
    for dep in spec.dependsOn:
        doc = snapshot.services.get(dep.service)
        if doc is None:
            continue
        status = doc.get("status") or {}
        phase = (status.get("upgrade") or {}).get("phase")
        if phase in ("Progressing", "Waiting", "Paused") or status.get("observedGeneration") != doc["metadata"].get(
            "generation"
        ):
            return dep.service
    return None


@dataclass
class _Budget:
    """The service's disruption budget for this visit: which drained DPUs' instances may go now.

    Unavailable is what the service would miss: instances not Running and ready, and (Replicas) the
    replicas no ready instance covers. Taking a ready instance away adds one; an unready one costs
    nothing. A drained DPU's instance waits while taking it would exceed maxUnavailable."""

    limit: int
    unavailable: int
    ready: dict[str, bool]
    blocked: list[str] = field(default_factory=list)

    @classmethod
    def of(
        cls, spec: DPUServiceSpec, snapshot: Snapshot, name: str, existing: list[str], where: tuple[str, str]
    ) -> _Budget | None:
        if spec.disruptionBudget is None:
            return None
        ready = {}
        for dpu in existing:
            entry = runtime_entry(snapshot, dpu, name, where) or {}
            ready[dpu] = entry.get("phase") == "Running" and bool(entry.get("ready"))
        total = spec.placement.replicas or 0 if spec.placement.mode == "Replicas" else len(existing)
        limit = resolve_limit(spec.disruptionBudget.maxUnavailable, max(total, 1), minimum=0)
        return cls(limit, total - sum(ready.values()), ready)  # below 0: ready instances to spare

    def may_release(self, dpu: str) -> bool:
        if not self.ready.get(dpu):
            return True
        if self.unavailable + 1 > self.limit:
            self.blocked.append(dpu)
            return False
        self.unavailable += 1
        return True

    def condition(self, status: dict[str, Any], generation: int | None) -> None:
        if self.blocked:
            message = (
                f"{len(self.blocked)} instance(s) on draining DPUs wait ({', '.join(self.blocked[:5])}): "
                f"{max(0, self.unavailable)} unavailable, the disruption budget allows {self.limit}"
            )
            set_condition(status, "DisruptionAllowed", False, "BudgetExhausted", message,
                          severity=Severity.INFO, generation=generation)  # fmt: skip
        else:
            set_condition(status, "DisruptionAllowed", True, "WithinBudget",
                          f"{max(0, self.unavailable)} unavailable of at most {self.limit}",
                          generation=generation)  # fmt: skip


def _desired(spec: DPUServiceSpec, scheduled: int, placed: Placed | None) -> int:
    placement = spec.placement
    if placement.mode == "Replicas":
        return placement.replicas or 0
    if placement.mode == "DPUs":
        return len(placement.dpus)
    return scheduled + (0 if placed is None else max(0, placed.fits - len(placed.nodes)))


def _blocked(name: str, spec: DPUServiceSpec, snapshot: Snapshot) -> tuple[str, str] | None:
    """(reason, message) when the service may not be placed yet: a cycle, or a dependency not scheduled."""
    cycle = find_cycle(dependency_graph(list(snapshot.services.values())))
    if cycle is not None and name in cycle:
        return "DependencyCycle", f"dependency cycle {' -> '.join(cycle)}"
    for dep in spec.dependsOn:
        if dep.service not in snapshot.services:
            return "WaitingForDependency", f"depends on service {dep.service!r}, which does not exist"
        if dep.scope == "Anywhere" and not instances_of(snapshot, dep.service):
            return "WaitingForDependency", f"depends on service {dep.service!r}, which has no scheduled instance"
        if dep.scope == "SameDPU" and not instances_of(snapshot, dep.service):
            return (
                "WaitingForDependency",
                f"depends on service {dep.service!r} on the same DPU; it is scheduled nowhere",
            )
    return None


def _shape_status(
    status: dict[str, Any],
    snapshot: Snapshot,
    name: str,
    scheduled: list[str],
    desired: int,
    pending: int,
    placed: Placed | None,
    waiting: tuple[str, str] | None,
    generation: int | None,
    upgrade: UpgradeStatus,
    where: tuple[str, str],
) -> None:
    instances = []
    running = ready = 0
    failed: list[str] = []
    degraded: list[str] = []
    for dpu in scheduled:
        instance: dict[str, Any] = {
            "name": f"{name}/{dpu}",
            "dpu": dpu,
            "host": snapshot.by_name[dpu].host if dpu in snapshot.by_name else None,
            "phase": "Scheduled",
        }
        seen = runtime_entry(snapshot, dpu, name, where)
        if seen is not None:
            current = seen.get("revision") == expected_revision(upgrade, dpu).partition(".")[0]
            instance.update(
                runsOn=seen.get("runsOn"),
                phase=seen.get("phase") or "Scheduled",
                ready=bool(seen.get("ready")) and current,
                restarts=int(seen.get("restarts") or 0),
                revision=seen.get("revision"),
                reason=seen.get("reason"),
            )
            running += instance["phase"] in ("Running", "Degraded") and current
            ready += instance["ready"]
            if instance["phase"] == "Failed":
                failed.append(f"{dpu}: {seen.get('reason') or 'failed'}")
            elif instance["phase"] == "Degraded":
                degraded.append(f"{dpu}: {seen.get('reason') or 'not ready'}")
        instances.append(instance)
    instances += [{"name": f"{name}/pending-{i}", "phase": "Pending"} for i in range(pending)]
    status.update(
        desired=desired,
        scheduled=len(scheduled),
        running=running,
        ready=ready,
        instances=instances,
        observedGeneration=generation,
    )
    fleet = len(snapshot.nodes)
    if waiting is not None:
        reason, message = waiting
        status["pendingReason"] = message
        set_condition(status, "Scheduled", False, reason, message, severity=Severity.WARNING, generation=generation)
    elif pending:
        fits = placed.fits if placed is not None else 0
        message = placed.report.message(fits, fleet) if placed is not None else f"0/{fleet:,} DPUs fit"
        status["pendingReason"] = message
        set_condition(
            status, "Scheduled", False, "Unschedulable", message, severity=Severity.WARNING, generation=generation
        )
    else:
        status["pendingReason"] = None
        set_condition(
            status, "Scheduled", True, "AllScheduled", f"{len(scheduled)} instance(s) scheduled", generation=generation
        )
    if failed:
        message = f"{running}/{desired} running; {len(failed)} failed: {failed[0]}"
        set_condition(
            status, "Running", False, "InstancesFailed", message, severity=Severity.WARNING, generation=generation
        )
    elif degraded:
        message = f"{ready}/{desired} ready; {len(degraded)} degraded: {degraded[0]}"
        set_condition(
            status, "Running", False, "InstancesDegraded", message, severity=Severity.WARNING, generation=generation
        )
    elif desired and running >= desired:
        set_condition(status, "Running", True, "AllRunning", f"{running} instance(s) running", generation=generation)
    else:
        set_condition(
            status,
            "Running",
            False,
            "Starting",
            f"{running}/{desired} running (the DPUs' runtimes report what they start)",
            severity=Severity.INFO,
            generation=generation,
        )
    _upgrade_condition(status, upgrade, generation)
    if pending or waiting:
        status["phase"] = "Pending"
    elif failed or degraded:
        status["phase"] = "Degraded"
    else:
        status["phase"] = "Running" if desired and running >= desired else "Scheduled"


def _upgrade_condition(status: dict[str, Any], upgrade: UpgradeStatus, generation: int | None) -> None:
    """Upgraded: True once every instance runs the spec's revision; else why not (Progressing, RolledBack...)."""
    if upgrade.phase == "Complete":
        set_condition(status, "Upgraded", True, "Complete", upgrade.message or "at the spec's revision",
                      generation=generation)  # fmt: skip
        return
    severity = Severity.WARNING if upgrade.phase in ("RolledBack", "Halted") else Severity.INFO
    set_condition(status, "Upgraded", False, upgrade.phase, upgrade.message or upgrade.phase,
                  severity=severity, generation=generation)  # fmt: skip


def runtime_entry(
    snapshot: Snapshot, dpu: str, service: str, where: tuple[str, str] = ("DPU", "")
) -> dict[str, Any] | None:
    """What the runtime last reported of the service's instance for this DPU (its DPUAllocation's status).
    `where`: (status.runsOn, status.runsOnSince). The runtime where the service runs, once it serves there
    (a report since the move began), else, during a move, the one it still serves from (services/desired.py
    keeps it there until then). The entry's `runsOn` says which."""
    runs_on, since = where
    status = (snapshot.allocations.get(dpu) or {}).get("status") or {}
    other = "Host" if runs_on == "DPU" else "DPU"
    found: dict[str, dict[str, Any]] = {}
    for side in (runs_on, other):
        for entry in status.get(RUNTIME_FIELD[side]) or []:
            if entry.get("service") == service:
                found[side] = {**entry, "runsOn": side}
    target, old = found.get(runs_on), found.get(other)
    if old is not None and serving(old) and (target is None or not serving(target, since)):
        return old
    return target or old


class DPUServiceReconciler(Reconciler):
    """One per kind: DPUService. Allocations are per DPU (DPUAllocation), written only by this.

    Woken by its services' spec changes, by a change of what scheduling reads of a DPU (phase,
    unschedulable, labels, capabilities, flavor: not every heartbeat), and by a status change of a
    service others depend on; `min_interval` folds a burst of DPU changes into one visit per service."""

    kind = "DPUService"
    resync = 30.0
    min_interval = 1.0
    workers = 2

    def __init__(self, store: Store) -> None:
        self.store = store
        self._wake: Callable[[Key], None] | None = None
        self._services: dict[str, dict[str, frozenset[str]]] = {}  # project -> service -> its dependencies
        self._dpus: dict[tuple[str, str], tuple[object, ...]] = {}
        self._runtime: dict[tuple[str, str], dict[str, tuple[Any, ...]]] = {}  # what each DPU's runtime said

    def watches(self) -> dict[str, Mapper]:
        return {"DPU": self._on_dpu, "DPUService": self._dependents, "DPUAllocation": self._on_runtime}

    def started(self, wake: Callable[[Key], None]) -> None:
        self._wake = wake

    def relisted(self) -> None:
        self._dpus.clear()
        self._runtime.clear()

    def _on_runtime(self, change: Change) -> list[Key]:
        """A DPU's runtime reported a change of phase, readiness, restarts or revision: those services."""
        key = (change.project, change.name)
        before = self._runtime.pop(key, {})
        if change.type == "DELETED":
            return [Key(change.project, s) for s in before]
        status = change.object().get("status") or {}
        now: dict[str, tuple[Any, ...]] = {}
        for where, list_field in RUNTIME_FIELD.items():  # the DPU's runtime, and the host agent's for it
            for e in status.get(list_field) or []:
                now[str(e.get("service"))] = (
                    *now.get(str(e.get("service")), ()),
                    where,
                    e.get("phase"),
                    e.get("ready"),
                    e.get("restarts"),
                    e.get("revision"),
                    e.get("configRevision"),
                    e.get("reason"),
                )
        self._runtime[key] = now
        changed = {s for s in set(before) | set(now) if before.get(s) != now.get(s)}
        return [Key(change.project, s) for s in sorted(changed)]

    def _on_dpu(self, change: Change) -> list[Key]:
        key = (change.project, change.name)
        if change.type == "DELETED":
            self._dpus.pop(key, None)
            return self._all(change.project)
        doc = change.object()
        status, spec = doc.get("status") or {}, doc.get("spec") or {}
        state = (
            status.get("phase"),
            bool(spec.get("unschedulable")),
            bool(((doc.get("metadata") or {}).get("annotations") or {}).get(DRAIN_ANNOTATION)),
            tuple(sorted(((doc.get("metadata") or {}).get("labels") or {}).items())),
            orjson.dumps(status.get("capabilities"), option=orjson.OPT_SORT_KEYS),  # a tenth of repr's cost
            status.get("appliedFlavor") or spec.get("flavor"),
        )
        before = self._dpus.get(key)
        self._dpus[key] = state
        return self._all(change.project) if before != state and (before is not None or change.type == "ADDED") else []

    def _dependents(self, change: Change) -> list[Key]:
        services = self._services.get(change.project) or {}
        return [Key(change.project, name) for name, deps in services.items() if change.name in deps]

    def _all(self, project: str) -> list[Key]:
        return [Key(project, name) for name in self._services.get(project) or {}]

    async def reconcile(self, key: Key) -> Result:
        outcome = await asyncio.to_thread(schedule_service, self.store, key.project, key.name)
        for victim in outcome.preempted:  # placed again elsewhere, or shown pending with the reason
            if self._wake is not None:
                self._wake(Key(key.project, victim))
        known = self._services.setdefault(key.project, {})
        if outcome.dependencies is None:
            known.pop(key.name, None)
        else:
            known[key.name] = outcome.dependencies
        return DONE if outcome.requeue_after is None else Result(requeue_after=outcome.requeue_after)
