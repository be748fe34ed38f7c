"""The scheduler's core: filter then score, a pure function over an in-memory snapshot of the fleet.

Nothing here reads or writes the store: `services/controller.py` builds the snapshot (`Node` per DPU,
`Request` per service) and commits what `place` chose, one compare-and-swap per DPU. Keeping the core
pure is what makes it fast (`dpufleet bench schedule`) and what lets the tests state each rule
without a server.

Filter: a DPU is a candidate when it is Ready and schedulable (not spec.unschedulable, which is how
health quarantines a DPU), compatible (vendor, model and part-number patterns, capabilities,
accelerators; decided once per hardware shape, not per DPU), selected (label selector, the listed
DPUs), does not already hold an instance of the service, honours affinity and anti-affinity, holds
what the service depends on there, keeps the host spread, and has the allocatable resources left.
Each DPU that is not a candidate is counted under the first rule it fails: that count is the
"0/1,000 DPUs fit: 612 incompatible part number, ..." a pending service shows.

Score: the least allocated DPU first (free CPU and memory as fractions of allocatable), then the
host holding fewest instances of the service (spread). A Replicas service stops filtering once it
has enough candidates to choose from (as kube-scheduler's percentageOfNodesToScore), starting where
the previous search stopped; a search that does not find enough has looked at every DPU, so its
counts are exact.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

# Why a DPU does not fit, in the order the filter asks (the first that applies is counted).
NOT_READY = "not Ready"
UNSCHEDULABLE = "unschedulable"
INCOMPATIBLE_VENDOR = "incompatible vendor"
INCOMPATIBLE_MODEL = "incompatible model"
INCOMPATIBLE_PART = "incompatible part number"
INCOMPATIBLE_OS = "incompatible OS"
INCOMPATIBLE_KERNEL = "incompatible kernel"
OS_UNKNOWN = "OS not reported yet (no agent)"
MISSING_CAPABILITY = "missing capability"
MISSING_ACCELERATOR = "missing accelerator"
MISSING_OFFLOAD = "missing offload"
NO_PINNED_CORES = "insufficient cores to pin"
NOT_LISTED = "not listed"
EXCLUDED = "excluded by the service"
PREFERRED = 1000.0  # a preferred DPU outscores any spread or load difference
NOT_SELECTED = "not selected"
ALREADY_THERE = "already holds the service"
AFFINITY = "affinity not met"
ANTI_AFFINITY = "anti-affinity"
DEPENDENCY = "dependency not scheduled there"
HOST_SPREAD = "host spread"
NO_CPU = "insufficient cpu"
NO_MEMORY = "insufficient memory"
NO_HUGEPAGES = "insufficient hugepages"
NO_STORAGE = "insufficient storage"

_UNDECIDED = "?"  # a shape the filter has not decided yet

# Candidates a Replicas search gathers per replica wanted before it stops (and at least this many).
CANDIDATES_PER_REPLICA = 4
MIN_CANDIDATES = 64


@dataclass(frozen=True, slots=True)
class Resources:
    cpu_millicores: int = 0
    memory_mib: int = 0
    hugepages_mib: int = 0
    storage_mib: int = 0

    def __add__(self, other: Resources) -> Resources:
        return Resources(
            self.cpu_millicores + other.cpu_millicores,
            self.memory_mib + other.memory_mib,
            self.hugepages_mib + other.hugepages_mib,
            self.storage_mib + other.storage_mib,
        )

    def __sub__(self, other: Resources) -> Resources:
        return Resources(
            self.cpu_millicores - other.cpu_millicores,
            self.memory_mib - other.memory_mib,
            self.hugepages_mib - other.hugepages_mib,
            self.storage_mib - other.storage_mib,
        )

    def shortage(self, wanted: Resources) -> str | None:
        """The first resource `wanted` needs more of than these (free) resources hold."""
        if wanted.cpu_millicores > self.cpu_millicores:
            return NO_CPU
        if wanted.memory_mib > self.memory_mib:
            return NO_MEMORY
        if wanted.hugepages_mib > self.hugepages_mib:
            return NO_HUGEPAGES
        if wanted.storage_mib > self.storage_mib:
            return NO_STORAGE
        return None


@dataclass(frozen=True, slots=True)
class Shape:
    """The hardware facts compatibility is decided on; DPUs of one shape are decided together."""

    vendor: str
    model: str
    part_number: str
    capabilities: frozenset[str]
    accelerators: frozenset[str]
    os: str = ""  # as the DPU's agent reports it; "" until it has
    kernel: str = ""
    offloads: frozenset[str] = frozenset()  # its accelerators' algorithms and kinds, lowercased


@dataclass(slots=True)
class Node:
    """One DPU in the snapshot. `allocated` and `services` change as the pass places instances."""

    name: str
    host: str | None
    shape: Shape
    labels: dict[str, str]
    allocatable: Resources
    allocated: Resources = field(default_factory=Resources)
    services: set[str] = field(default_factory=set)
    ready: bool = True
    unschedulable: bool = False
    draining: bool = False  # `dpufleet dpu drain`: its instances move elsewhere (Replicas) or stop
    max_upgrading: int | None = None  # services that may upgrade their instance here at once (None: any)
    core_ids: tuple[int, ...] = ()  # the cores an instance may pin: the DPU's, less the flavor's reserved ones
    pinned: set[int] = field(default_factory=set)  # those the placed instances have pinned

    def free_cores(self) -> list[int]:
        return [c for c in self.core_ids if c not in self.pinned]

    @property
    def free(self) -> Resources:
        return self.allocatable - self.allocated

    def shortage(self, wanted: Resources) -> str | None:
        """`free.shortage(wanted)` without building `free` (the filter's hottest line)."""
        alloc, used = self.allocatable, self.allocated
        if wanted.cpu_millicores > alloc.cpu_millicores - used.cpu_millicores:
            return NO_CPU
        if wanted.memory_mib > alloc.memory_mib - used.memory_mib:
            return NO_MEMORY
        if wanted.hugepages_mib > alloc.hugepages_mib - used.hugepages_mib:
            return NO_HUGEPAGES
        if wanted.storage_mib > alloc.storage_mib - used.storage_mib:
            return NO_STORAGE
        return None


@dataclass(frozen=True, slots=True)
class Request:
    """One service's scheduling rules, as the core reads them."""

    service: str
    resources: Resources
    vendors: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    part_numbers: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = ()
    accelerators: tuple[str, ...] = ()
    os: tuple[str, ...] = ()
    kernels: tuple[str, ...] = ()
    offloads: tuple[str, ...] = ()  # lowercased patterns
    pinned_cores: int = 0  # whole cores it needs alone (its resources charge them as millicores too)
    selector: Callable[[dict[str, str]], bool] | None = None
    dpus: frozenset[str] | None = None  # mode DPUs
    every: bool = False  # mode EveryDPU
    replicas: int = 0  # mode Replicas
    max_per_host: int | None = None
    affinity: tuple[str, ...] = ()
    anti_affinity: tuple[str, ...] = ()
    same_dpu_dependencies: tuple[str, ...] = ()
    priority: int = 0
    exclude: frozenset[str] = frozenset()
    prefer: frozenset[str] = frozenset()


@dataclass
class FitReport:
    """How many DPUs were looked at and, for each that did not fit, the first reason."""

    examined: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    def message(self, fits: int, fleet: int) -> str:
        """'0/1,000 DPUs fit: 612 incompatible part number, 301 insufficient memory, 87 unschedulable'."""
        parts = ", ".join(f"{count:,} {reason}" for reason, count in self.reasons.most_common())
        return f"{fits:,}/{fleet:,} DPUs fit" + (f": {parts}" if parts else "")


@dataclass
class Placed:
    """What a pass chose for one service: the DPUs (in choice order) and why the others did not fit."""

    nodes: list[Node]
    report: FitReport
    fits: int


def _matches(value: str, patterns: tuple[str, ...]) -> bool:
    return not patterns or any(fnmatchcase(value, p) for p in patterns)


def incompatibility(shape: Shape, request: Request) -> str | None:
    """Why a DPU of this shape can never run the service, or None."""
    if not _matches(shape.vendor, request.vendors):
        return INCOMPATIBLE_VENDOR
    if not _matches(shape.model, request.models):
        return INCOMPATIBLE_MODEL
    if not _matches(shape.part_number, request.part_numbers):
        return INCOMPATIBLE_PART
    if any(c not in shape.capabilities for c in request.capabilities):
        return MISSING_CAPABILITY
    if any(a not in shape.accelerators for a in request.accelerators):
        return MISSING_ACCELERATOR
    if any(not any(fnmatchcase(have, want) for have in shape.offloads) for want in request.offloads):
        return MISSING_OFFLOAD
    if request.os and not shape.os:
        return OS_UNKNOWN
    if not _matches(shape.os, request.os):
        return INCOMPATIBLE_OS
    if request.kernels and not shape.kernel:
        return OS_UNKNOWN
    if not _matches(shape.kernel, request.kernels):
        return INCOMPATIBLE_KERNEL
    return None


class Filter:
    """The filter for one service over one pass: compatibility cached per shape."""

    def __init__(self, request: Request, host_counts: Counter[str | None]) -> None:
        self.request = request
        self.host_counts = host_counts
        self._shapes: dict[int, str | None] = {}

    def reason(self, node: Node) -> str | None:
        """The first rule `node` fails for the service, or None when it is a candidate."""
        req = self.request
        if not node.ready:
            return NOT_READY
        if node.unschedulable:
            return UNSCHEDULABLE
        shape = node.shape  # keyed by identity: a snapshot shares one Shape among the DPUs that have it
        bad = self._shapes.get(id(shape), _UNDECIDED)
        if bad is _UNDECIDED:
            bad = self._shapes[id(shape)] = incompatibility(shape, req)
        if bad is not None:
            return bad
        if req.dpus is not None and node.name not in req.dpus:
            return NOT_LISTED
        if req.exclude and node.name in req.exclude:
            return EXCLUDED
        if req.selector is not None and not req.selector(node.labels):
            return NOT_SELECTED
        services = node.services
        if req.service in services:
            return ALREADY_THERE
        if req.affinity and not all(s in services for s in req.affinity):
            return AFFINITY
        if req.anti_affinity and any(s in services for s in req.anti_affinity):
            return ANTI_AFFINITY
        if req.same_dpu_dependencies and not all(s in services for s in req.same_dpu_dependencies):
            return DEPENDENCY
        if req.max_per_host is not None and node.host is not None and self.host_counts[node.host] >= req.max_per_host:
            return HOST_SPREAD
        if req.pinned_cores and len(node.free_cores()) < req.pinned_cores:
            return NO_PINNED_CORES
        return node.shortage(req.resources)


def score(node: Node, host_counts: Counter[str | None], prefer: frozenset[str] = frozenset()) -> float:
    """Higher is better: a preferred DPU, then the least allocated one, then the host holding fewest of
    the service's instances."""
    alloc, used = node.allocatable, node.allocated
    cpu = 1 - used.cpu_millicores / alloc.cpu_millicores if alloc.cpu_millicores else 0.0
    memory = 1 - used.memory_mib / alloc.memory_mib if alloc.memory_mib else 0.0
    bonus = PREFERRED if node.name in prefer else 0.0
    return bonus + cpu + memory - (host_counts[node.host] if node.host is not None else 0)


def host_counts_of(nodes: Iterable[Node], service: str) -> Counter[str | None]:
    return Counter(n.host for n in nodes if service in n.services)


def take(node: Node, request: Request) -> None:
    """Record an instance of the service on the node (the snapshot's side of a placement)."""
    node.allocated = node.allocated + request.resources
    node.services.add(request.service)
    if request.pinned_cores:
        node.pinned.update(node.free_cores()[: request.pinned_cores])


def _preferred_first(nodes: list[Node], start: int, prefer: frozenset[str]) -> list[Node]:
    """The DPUs in the order a pass looks at them (from `start`), the preferred ones first."""
    rotated = nodes[start:] + nodes[:start]
    return [n for n in rotated if n.name in prefer] + [n for n in rotated if n.name not in prefer]


def place(
    nodes: list[Node], request: Request, wanted: int, start: int = 0, host_counts: Counter[str | None] | None = None
) -> Placed:
    """Choose up to `wanted` DPUs for new instances of the service and take their resources in the snapshot.

    EveryDPU and DPUs modes examine every DPU; Replicas stops once it has enough candidates, starting at
    `start` (a rotating offset, so successive services do not all crowd the first DPUs). `host_counts`:
    the service's instances per host, when the caller knows them (else counted over every DPU)."""
    if host_counts is None:
        host_counts = host_counts_of(nodes, request.service) if request.max_per_host or request.replicas else Counter()
    flt = Filter(request, host_counts)
    report = FitReport()
    chosen: list[Node] = []
    if wanted <= 0:
        return Placed(chosen, report, 0)
    enough = (
        len(nodes)
        if request.every or request.dpus is not None
        else max(MIN_CANDIDATES, CANDIDATES_PER_REPLICA * wanted)
    )
    candidates: list[Node] = []
    count = len(nodes)
    ordered = _preferred_first(nodes, start, request.prefer) if request.prefer else None
    for i in range(count):
        node = nodes[(start + i) % count] if ordered is None else ordered[i]
        report.examined += 1
        why = flt.reason(node)
        if why is None:
            candidates.append(node)
            if len(candidates) >= enough:
                break
        else:
            report.reasons[why] += 1
    fits = len(candidates)
    if request.every or request.dpus is not None:
        chosen = candidates[:wanted]
        for node in chosen:
            take(node, request)
        return Placed(chosen, report, fits)
    # Replicas: best score first. A placement lowers the score of its host's other DPUs, so a popped
    # candidate is scored again and pushed back if it dropped (scores only fall during a pass).
    heap = [(-score(n, host_counts, request.prefer), k, n) for k, n in enumerate(candidates)]
    heapq.heapify(heap)
    while heap and len(chosen) < wanted:
        negative, k, node = heapq.heappop(heap)
        now = score(node, host_counts, request.prefer)
        if now < -negative:
            heapq.heappush(heap, (-now, k, node))
            continue
        if flt.reason(node) is not None:
            continue
        take(node, request)
        host_counts[node.host] += 1
        chosen.append(node)
    return Placed(chosen, report, fits)


# --- preemption ------------------------------------------------------------------------------------------------

RESOURCE_SHORTAGES = frozenset({NO_CPU, NO_MEMORY, NO_HUGEPAGES, NO_STORAGE})


@dataclass(frozen=True, slots=True)
class Victim:
    """An instance on a DPU that a higher-priority service could preempt."""

    service: str
    priority: int
    resources: Resources


def preemption_plan(
    nodes: list[Node],
    request: Request,
    wanted: int,
    victims_on: Callable[[Node], list[Victim]],
    host_counts: Counter[str | None] | None = None,
) -> list[tuple[Node, list[Victim]]]:
    """DPUs where evicting strictly lower-priority instances makes room for the service, with the fewest,
    lowest-priority victims that do: up to `wanted` of them, cheapest first.

    Only a DPU that fails the filter on resources alone is considered (every other rule holds there);
    `victims_on` lists the instances that may go (the caller leaves out what others depend on there).
    Nothing is changed: the caller releases the victims and commits the placement."""
    if wanted <= 0 or request.priority <= 0:
        return []
    if host_counts is None:
        host_counts = host_counts_of(nodes, request.service)
    flt = Filter(request, host_counts)
    found: list[tuple[tuple[int, int, str], Node, list[Victim]]] = []
    for node in nodes:
        if flt.reason(node) not in RESOURCE_SHORTAGES:
            continue
        chosen: list[Victim] = []
        free = node.free
        eligible = sorted(
            (v for v in victims_on(node) if v.priority < request.priority),
            key=lambda v: (v.priority, -v.resources.cpu_millicores - v.resources.memory_mib, v.service),
        )
        for victim in eligible:
            if free.shortage(request.resources) is None:
                break
            chosen.append(victim)
            free = free + victim.resources
        if chosen and free.shortage(request.resources) is None:
            found.append(((max(v.priority for v in chosen), len(chosen), node.name), node, chosen))
    found.sort(key=lambda item: item[0])
    plan: list[tuple[Node, list[Victim]]] = []
    hosts: Counter[str | None] = Counter(host_counts)
    for _cost, node, chosen in found:
        if len(plan) >= wanted:
            break
        if request.max_per_host is not None and node.host is not None and hosts[node.host] >= request.max_per_host:
            continue
        hosts[node.host] += 1
        plan.append((node, chosen))
    return plan


# --- dependency cycles ----------------------------------------------------------------------------------------


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """A cycle in service -> depends-on edges, as the path that closes it (['a', 'b', 'a']), or None."""
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for dep in graph.get(name, ()):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        path.pop()
        state[name] = 2
        return None

    for name in sorted(graph):
        if name not in state:
            found = visit(name)
            if found:
                return found
    return None
