"""`dpufleet bench schedule`: placements per second of the scheduler's core, and peak memory.

The core (`services/scheduling.py`) is a pure function over an in-memory snapshot, so this bench
measures it alone: no server, no store. It builds a fleet of N DPUs (three hardware shapes, two
DPUs per host, a rack label) and M services, then places every service's instances, highest
priority first, as one scheduling pass would, and counts the placements:

- one service in fifty is EveryDPU for one vendor (a DaemonSet: a third of the fleet each);
- the rest are Replicas (1 to 10, at most one per host for one in three), some with a rack selector,
  some needing an accelerator, some with anti-affinity to the previous service.

Committing placements to the store (one compare-and-swap per DPU) is not timed here.
"""

from __future__ import annotations

import resource
import time
import tracemalloc
from collections import Counter
from dataclasses import dataclass

from ..api.selectors import LabelSelector
from ..services.scheduling import Node, Request, Resources, Shape, place
from .harness import bench_console, result_table

TARGET_PER_SECOND = 10_000
SHAPES = (
    Shape("NVIDIA", "BlueField-3", "900-9D3B6-00CV-AA0", frozenset({"cpu", "memoryGiB", "os"}), frozenset({"crypto"})),
    Shape("Intel", "IPU E2100", "E2100-CCQDA2", frozenset({"cpu", "memoryGiB", "os"}), frozenset({"compression"})),
    Shape("AMD", "Pensando DSC2", "DSC2-200", frozenset({"cpu", "memoryGiB"}), frozenset({"crypto", "regex"})),
)


@dataclass
class ScheduleBenchResult:
    dpus: int
    services: int
    instances_wanted: int
    placements: int
    seconds: float
    peak_traced_mib: float
    peak_rss_mib: float
    split: PassFigures

    @property
    def per_second(self) -> float:
        return self.placements / self.seconds if self.seconds else 0.0

    def figures(self) -> dict[str, object]:
        return {
            "bench": "schedule",
            "dpus": self.dpus,
            "services": self.services,
            "instances_wanted": self.instances_wanted,
            "placements": self.placements,
            "seconds": round(self.seconds, 4),
            "placements_per_second": round(self.per_second, 1),
            "every_dpu_placements": self.split.every,
            "replica_placements": self.split.replicas,
            "replica_placements_per_second": round(self.split.replicas / self.split.replicas_seconds, 1)
            if self.split.replicas_seconds
            else 0.0,
            "peak_traced_mib": round(self.peak_traced_mib, 1),
            "peak_rss_mib": round(self.peak_rss_mib, 1),
            "target_placements_per_second": TARGET_PER_SECOND,
            "target_met": self.per_second >= TARGET_PER_SECOND,
        }


def build_fleet(dpus: int) -> list[Node]:
    return [
        Node(
            name=f"dpu-{i:06d}",
            host=f"host-{i // 2:06d}",
            shape=SHAPES[i % len(SHAPES)],
            labels={"rack": f"r{i // 40 % 25}"},
            allocatable=Resources(16_000, 32_768, 2048, 102_400),
        )
        for i in range(dpus)
    ]


def build_services(services: int) -> list[tuple[Request, int]]:
    """(request, instances wanted) per service; EveryDPU wants as many as the fleet has."""
    made: list[tuple[Request, int]] = []
    for i in range(services):
        name = f"svc-{i:05d}"
        if i % 50 == 0:
            vendor = SHAPES[i // 50 % len(SHAPES)].vendor
            made.append((Request(name, Resources(100, 64), vendors=(vendor,), every=True, priority=100), -1))
            continue
        replicas = 1 + i % 10
        rack = f"r{i % 25}"
        made.append(
            (
                Request(
                    name,
                    Resources(250, 256),
                    selector=LabelSelector(matchLabels={"rack": rack}).matches if i % 7 == 0 else None,
                    accelerators=("crypto",) if i % 5 == 0 else (),
                    replicas=replicas,
                    max_per_host=1 if i % 3 == 0 else None,
                    anti_affinity=(f"svc-{i - 1:05d}",) if i % 11 == 0 else (),
                    priority=i % 3,
                ),
                replicas,
            )
        )
    made.sort(key=lambda pair: -pair[0].priority)
    return made


@dataclass
class PassFigures:
    """Placements and seconds of one pass, split by mode (EveryDPU places thousands per filter pass)."""

    every: int = 0
    every_seconds: float = 0.0
    replicas: int = 0
    replicas_seconds: float = 0.0


def schedule_all(nodes: list[Node], services: list[tuple[Request, int]]) -> PassFigures:
    figures = PassFigures()
    for index, (request, wanted) in enumerate(services):
        started = time.perf_counter()
        placed = place(
            nodes, request, len(nodes) if wanted < 0 else wanted, start=index * 97 % len(nodes), host_counts=Counter()
        )
        took = time.perf_counter() - started
        if request.every:
            figures.every += len(placed.nodes)
            figures.every_seconds += took
        else:
            figures.replicas += len(placed.nodes)
            figures.replicas_seconds += took
    return figures


def run_schedule_bench(dpus: int = 10_000, services: int = 1_000, as_json: bool = False) -> ScheduleBenchResult:
    console = bench_console(as_json)
    console.print(f"[bold]bench schedule[/]: {dpus:,} DPUs, {services:,} services, the scheduler's core in-process")
    tracemalloc.start()
    nodes = build_fleet(dpus)
    requests = build_services(services)
    wanted = sum(len(nodes) // len(SHAPES) if w < 0 else w for _, w in requests)
    tracemalloc.stop()  # tracing doubles the cost of the pass: the pass is timed untraced
    started = time.perf_counter()
    split = schedule_all(nodes, requests)
    seconds = time.perf_counter() - started
    placements = split.every + split.replicas
    tracemalloc.start()  # then run again traced, on a fresh fleet, for its memory
    schedule_all(build_fleet(dpus), build_services(services))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = ScheduleBenchResult(dpus, services, wanted, placements, seconds, peak / 2**20, rss, split)
    table = result_table("schedule")
    table.add_row("instances placed", f"{placements:,} of ~{wanted:,} wanted", "")
    table.add_row("time", f"{seconds:.3f} s", "")
    table.add_row("placements per second", f"{result.per_second:,.0f}", f">= {TARGET_PER_SECOND:,}")
    replica_rate = result.figures()["replica_placements_per_second"]
    table.add_row(f"  of which Replicas ({split.replicas:,})", f"{replica_rate:,.0f} /s", "")
    table.add_row(
        f"  of which EveryDPU ({split.every:,})", f"{split.every / max(split.every_seconds, 1e-9):,.0f} /s", ""
    )
    table.add_row("peak memory of snapshot + pass (traced)", f"{result.peak_traced_mib:,.1f} MiB", "")
    table.add_row("process peak memory (RSS)", f"{rss:,.0f} MiB", "")
    console.print(table)
    return result
