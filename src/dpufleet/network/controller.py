"""The network reconcilers: DPUServiceIPAM (blocks per DPU, exhaustion as a condition) and
DPUServiceChain (which DPUs it selects, and how many of them report it programmed)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from ..api.errors import NotFound
from ..api.kinds import DPUServiceChainSpec, DPUServiceIPAMSpec
from ..api.meta import Severity
from ..runtime.conditions import set_condition
from ..runtime.controller import DONE, Key, Mapper, Reconciler, Result
from ..runtime.status import mutate_status_sync
from ..store.reads import Change
from ..store.store import Store
from .ipam import PoolExhausted, allocate, read_blocks, release

EXHAUSTED_RETRY = 10.0


def _selected(store: Store, project: str, selector_doc: dict[str, Any] | None, spec_model: Any) -> list[str]:
    spec = spec_model.model_validate(selector_doc)
    return sorted(
        d["metadata"]["name"]
        for d in store.list("DPU", project).items
        if spec.dpuSelector.matches((d.get("metadata") or {}).get("labels") or {})
    )


def reconcile_ipam(store: Store, project: str, name: str) -> float | None:
    """Give every selected DPU a block, free the blocks of the others; status and Ready say how it went."""
    try:
        doc = store.get("DPUServiceIPAM", name, project)
    except NotFound:
        with contextlib.suppress(NotFound):
            store.delete("IPAMAllocation", name, project)  # the pool is gone: so are its blocks
        return None
    spec = DPUServiceIPAMSpec.model_validate(doc["spec"])
    dpus = _selected(store, project, doc["spec"], DPUServiceIPAMSpec)
    release(store, project, name, set(dpus))
    exhausted: PoolExhausted | None = None
    for dpu in dpus:
        try:
            allocate(store, project, name, spec, dpu)
        except PoolExhausted as exc:
            exhausted = exc
            break
    held = read_blocks(store, project, name).by_dpu
    pools = [p for p in (spec.ipv4, spec.ipv6) if p is not None]
    available = min(p.block_count() for p in pools) - len(held)
    generation = doc["metadata"].get("generation")

    def mutate(status: dict[str, Any]) -> None:
        status["allocated"], status["available"] = len(held), max(0, available)
        if exhausted is not None:
            waiting = len(dpus) - len(held)
            set_condition(
                status,
                "Ready",
                False,
                "PoolExhausted",
                f"{exhausted}; {waiting} selected DPU(s) have no block",
                severity=Severity.ERROR,
                generation=generation,
            )
        else:
            set_condition(status, "Ready", True, "Allocated", f"{len(held)} DPU(s) hold a block", generation=generation)

    with contextlib.suppress(NotFound):
        mutate_status_sync(store, "DPUServiceIPAM", name, mutate, project)
    return EXHAUSTED_RETRY if exhausted is not None else None


def reconcile_chain(store: Store, project: str, name: str) -> None:
    """Count the DPUs the chain selects and those whose agent reports it programmed; Ready once all do."""
    try:
        doc = store.get("DPUServiceChain", name, project)
    except NotFound:
        return
    selected = set(_selected(store, project, doc["spec"], DPUServiceChainSpec))
    generation = doc["metadata"].get("generation")

    def mutate(status: dict[str, Any]) -> None:
        reports = [r for r in status.get("dpus") or [] if r.get("dpu") in selected]
        status["dpus"] = reports
        programmed = sum(1 for r in reports if r.get("programmed"))
        status["selected"], status["programmed"] = len(selected), programmed
        failing = [r for r in reports if r.get("lastError")]
        if failing:
            first = failing[0]
            set_condition(
                status,
                "Ready",
                False,
                "ProgramFailed",
                f"{len(failing)} DPU(s) failed to program it; {first['dpu']}: {first['lastError']}",
                severity=Severity.ERROR,
                generation=generation,
            )
        elif programmed < len(selected) or not selected:
            set_condition(
                status,
                "Ready",
                False,
                "Programming" if selected else "NoDPUs",
                f"{programmed}/{len(selected)} selected DPU(s) report it programmed",
                generation=generation,
            )
        else:
            set_condition(
                status, "Ready", True, "Programmed", f"programmed on {programmed} DPU(s)", generation=generation
            )

    with contextlib.suppress(NotFound):
        mutate_status_sync(store, "DPUServiceChain", name, mutate, project)


class DPUServiceIPAMReconciler(Reconciler):
    kind = "DPUServiceIPAM"
    resync = 60.0
    workers = 1  # one allocator per process; concurrent processes are kept apart by compare-and-swap

    def __init__(self, store: Store) -> None:
        self.store = store

    def watches(self) -> dict[str, Mapper]:
        return {"DPU": self._on_dpu}

    def _on_dpu(self, change: Change) -> list[Key]:
        if change.type == "MODIFIED":
            return []  # labels matter; a DPU's status heartbeat does not (resync catches label changes)
        return [
            Key(change.project, p["metadata"]["name"]) for p in self.store.list("DPUServiceIPAM", change.project).items
        ]

    async def reconcile(self, key: Key) -> Result:
        retry = await asyncio.to_thread(reconcile_ipam, self.store, key.project, key.name)
        return DONE if retry is None else Result(requeue_after=retry)


class DPUServiceChainReconciler(Reconciler):
    """Woken by agents' reports on its status (wake_on_status) as well as by spec changes."""

    kind = "DPUServiceChain"
    resync = 30.0
    wake_on_status = True
    min_interval = 0.5

    def __init__(self, store: Store) -> None:
        self.store = store

    async def reconcile(self, key: Key) -> Result:
        await asyncio.to_thread(reconcile_chain, self.store, key.project, key.name)
        return DONE
