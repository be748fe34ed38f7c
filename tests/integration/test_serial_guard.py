"""Given a store with the serial guard (what every server installs), a DPU named after a serial is in one
project only, however it is created: one by one, in a group commit, or twice in the same batch; on both
backends. Names not derived from a serial stay per project."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from dpufleet.api.errors import APIError
from dpufleet.inventory.tenancy import ProjectResolver, SerialConflict, protect_serials
from dpufleet.store.store import Store


def dpu(name: str, project: str) -> dict[str, Any]:
    return {"kind": "DPU", "metadata": {"name": name, "project": project}, "spec": {}}


def test_the_second_dpu_for_a_serial_is_refused_one_by_one_and_in_a_batch(store: Store) -> None:
    protect_serials(store)
    store.create(dpu("dpu-mt1", "tenant-a"))
    with pytest.raises(SerialConflict, match="dpu/dpu-mt1 already exists in project 'tenant-a'"):
        store.create(dpu("dpu-mt1", "tenant-b"))
    results = store.create_many(
        [dpu("dpu-mt2", "tenant-b"), dpu("dpu-mt1", "tenant-c"), dpu("dpu-mt2", "tenant-c"), dpu("dpu-mt3", "tenant-a")]
    )
    assert not isinstance(results[0], APIError) and not isinstance(results[3], APIError)
    for refused, holder in ((results[1], "tenant-a"), (results[2], "tenant-b")):
        assert isinstance(refused, SerialConflict) and refused.code == 409
        assert f"already exists in project '{holder}'" in refused.message
    assert [d["metadata"]["project"] for d in store.list("DPU").items if d["metadata"]["name"] == "dpu-mt2"] == [
        "tenant-b"
    ]
    resolver = ProjectResolver(store)
    assert resolver.known_dpu("MT1") == "tenant-a" and resolver.known_dpu("MT2") == "tenant-b"
    assert resolver.known_dpu("MT9") is None


def test_names_that_are_not_a_serials_stay_per_project(store: Store) -> None:
    protect_serials(store)
    store.create(dpu("d1", "tenant-a"))
    store.create(dpu("d1", "tenant-b"))
    assert len(store.list("DPU").items) == 2


def _race(stores: list[Store], name: str) -> list[str]:
    """Both stores create DPU `name` at once, in two projects; what became of each create."""
    barrier = threading.Barrier(len(stores))
    outcomes: list[str] = []

    def create(s: Store, project: str) -> None:
        barrier.wait()
        try:
            s.create(dpu(name, project))
            outcomes.append("created")
        except SerialConflict:
            outcomes.append("refused")

    threads = [threading.Thread(target=create, args=(s, f"tenant-{i}")) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return sorted(outcomes)


def test_two_processes_racing_for_one_serial_leave_it_in_one_project(store_url: str) -> None:
    """Two servers on one database (two Stores, two connection pools) create the same serial in two
    projects at the same moment, round after round: each time exactly one create succeeds."""
    stores = [Store.open(store_url), Store.open(store_url)]
    try:
        for s in stores:
            protect_serials(s)
        for round_ in range(25):
            name = f"dpu-race{round_}"
            assert _race(stores, name) == ["created", "refused"], f"round {round_}"
            holders = [d["metadata"]["project"] for d in stores[0].list("DPU").items if d["metadata"]["name"] == name]
            assert len(holders) == 1
    finally:
        for s in stores:
            s.close()
