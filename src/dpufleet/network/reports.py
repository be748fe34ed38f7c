"""An agent's network report: each chain's state on its DPU goes into the chain's status.dpus, and each
repair the agent made becomes an Event on the object it repaired."""

from __future__ import annotations

import contextlib
from typing import Any

from ..api.agent_network import NetworkReport
from ..api.errors import NotFound
from ..api.meta import isotime, now
from ..runtime.events import EventRecorder
from ..runtime.status import mutate_status_sync
from ..store.store import Store


def _same(a: dict[str, Any] | None, b: dict[str, Any]) -> bool:
    return a is not None and {k: v for k, v in a.items() if k != "at"} == {k: v for k, v in b.items() if k != "at"}


def record_network_report(store: Store, events: EventRecorder, project: str, dpu: str, report: NetworkReport) -> None:
    at = isotime(now())
    # One read of every chain first: a report names every chain of the DPU, most of them unchanged,
    # and a read-and-compare per chain (8 agents, 500 chains, every second) was the server's work.
    docs: dict[str, dict[str, Any]] = {}
    if len(report.chains) > 1:
        docs = {doc["metadata"]["name"]: doc for doc in store.list("DPUServiceChain", project).items}
    for chain in report.chains:
        entry = {"dpu": dpu, **chain.model_dump(exclude={"name"}), "at": at}
        doc = docs.get(chain.name)
        if doc is not None:
            entries = (doc.get("status") or {}).get("dpus") or []
            if _same(next((r for r in entries if r.get("dpu") == dpu), None), entry):
                continue

        def mutate(status: dict[str, Any], entry: dict[str, Any] = entry) -> None:
            others = [r for r in status.get("dpus") or [] if r.get("dpu") != dpu]
            before = next((r for r in status.get("dpus") or [] if r.get("dpu") == dpu), None)
            if _same(before, entry):
                raise _Unchanged
            status["dpus"] = sorted([*others, entry], key=lambda r: str(r["dpu"]))

        with contextlib.suppress(NotFound, _Unchanged):
            mutate_status_sync(store, "DPUServiceChain", chain.name, mutate, project, current=doc)  # as just read
    for repair in report.repairs:
        with contextlib.suppress(NotFound):
            obj = store.get(repair.kind, repair.name, project)
            events.record(obj, "DriftRepaired", f"{dpu}: {repair.message}", "Warning")


class _Unchanged(Exception):
    """The DPU's entry says what it said: no write (a report every few seconds would be a write each)."""
