"""Given a DPUSet with maxUnavailable 1 about to start its next update, when another DPU of the set
becomes unavailable after the set counted its DPUs but before the wave is written (a DPU hangs while
the wave is being chosen), then no update starts: the wave is checked again inside its write
transaction, on both databases."""

from __future__ import annotations

import asyncio
from typing import Any

from dpufleet.fleet.dpuset import DPUSetReconciler
from dpufleet.runtime.controller import Key
from dpufleet.store.store import Store

IMAGE = "os-recheck"


def _fleet(store: Store, hosts: dict[str, str]) -> None:
    for name, host in hosts.items():
        store.create(
            {"kind": "DPU", "metadata": {"name": name, "labels": {"rollout": "yes"}}, "spec": {"hostRef": host}}
        )
        store.update_status("DPU", name, {"phase": "Ready", "installedImage": "os-old"})
    store.create(
        {
            "kind": "DPUSet",
            "metadata": {"name": "wave"},
            "spec": {
                "selector": {"matchLabels": {"rollout": "yes"}},
                "template": {"image": IMAGE},
                "strategy": {"type": "RollingUpdate", "maxUnavailable": 1, "maxUnavailablePerHost": 1},
            },
        }
    )


def _targeted(store: Store) -> list[str]:
    return sorted(d["metadata"]["name"] for d in store.list("DPU").items if d["spec"].get("image") == IMAGE)


def _pass(store: Store, meanwhile: Any = None) -> None:
    """One reconcile pass of the set; `meanwhile` runs after the count, before the wave is written."""
    reconciler = DPUSetReconciler(store)
    counted = reconciler._claimed_by_older_sets

    def claimed_then_write(dpuset: dict[str, Any]) -> Any:
        result = counted(dpuset)
        if meanwhile is not None:
            meanwhile()
        return result

    reconciler._claimed_by_older_sets = claimed_then_write  # type: ignore[method-assign]
    asyncio.run(reconciler.reconcile(Key("default", "wave")))


def test_without_a_change_meanwhile_the_pass_starts_one_update(store: Store) -> None:
    _fleet(store, {"dpu-a": "h1", "dpu-b": "h2", "dpu-c": "h3"})
    _pass(store)
    assert _targeted(store) == ["dpu-a"]


def test_a_dpu_that_hangs_after_the_count_stops_the_wave(store: Store) -> None:
    _fleet(store, {"dpu-a": "h1", "dpu-b": "h2", "dpu-c": "h3"})

    def hang() -> None:
        store.update_status("DPU", "dpu-c", {"phase": "Ready", "diagnosis": {"failureClass": "OSHang"}})

    _pass(store, hang)
    assert _targeted(store) == []  # dpu-c is out: the one slot is taken
    _pass(store)  # the next pass counts dpu-c too
    assert _targeted(store) == []
    store.update_status("DPU", "dpu-c", {"phase": "Ready", "installedImage": "os-old"})
    _pass(store)
    assert _targeted(store) == ["dpu-a"]


def test_a_failure_on_a_chosen_dpus_host_leaves_that_dpu_for_later(store: Store) -> None:
    """maxUnavailable 2 and one per host: dpu-b (host h1) fails after dpu-a (h1) was chosen: dpu-a waits,
    dpu-c on another host still starts (one slot left)."""
    _fleet(store, {"dpu-a": "h1", "dpu-b": "h1", "dpu-c": "h2", "dpu-d": "h3"})
    store.patch("DPUSet", "wave", {"spec": {"strategy": {"maxUnavailable": 2}}})

    def fail() -> None:
        store.update_status("DPU", "dpu-b", {"phase": "Ready", "diagnosis": {"failureClass": "KernelCrash"}})

    _pass(store, fail)
    assert _targeted(store) == ["dpu-c"]
