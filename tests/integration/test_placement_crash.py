"""A control plane SIGKILLed while it places many replicas: no DPU is overcommitted, no instance is
placed twice, and after the restart every replica is placed exactly once.

The server and its controller process run as child processes on SQLite and both are SIGKILLed (the
controller process does the placing) while services are still arriving and being placed. The fleet is
sized so that the replicas fill every DPU exactly: one placement too many anywhere would leave a
replica with no room, and an instance placed twice would show in two allocation records.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from dpufleet.bench.harness import child_pids
from dpufleet.store.store import Store, default_sqlite_url
from services.test_scheduler_store import add_dpu, add_service
from support.net import wait_until
from support.server import ServerProcess, start_server_process

pytestmark = pytest.mark.timeout(360)
P = "default"
DPUS = 24
SLOTS = 4  # replicas of REPLICA_MIB that fit one DPU of 16 GiB
REPLICA_MIB = 4096
REPLICAS = 4
SERVICES = DPUS * SLOTS // REPLICAS


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[tuple[Path, Store]]:
    data_dir = tmp_path / "data"
    start_server_process(data_dir).stop()  # creates and migrates the store
    store = Store.open(default_sqlite_url(data_dir))
    try:
        for i in range(DPUS):
            add_dpu(store, f"dpu-{i}", host=f"host-{i}", memory_gib=16)
        yield data_dir, store
    finally:
        store.close()


def placed(store: Store) -> list[tuple[str, str, str, int]]:
    """(DPU, service, instance, memory) of every instance in every allocation record."""
    return [
        (a["spec"]["dpu"], i["service"], i["instance"], i["memoryMiB"])
        for a in store.list("DPUAllocation", P).items
        for i in a["spec"].get("instances") or []
    ]


def assert_consistent(rows: list[tuple[str, str, str, int]]) -> None:
    memory = Counter[str]()
    for dpu, _service, _instance, mib in rows:
        memory[dpu] += mib
    assert max(memory.values(), default=0) <= SLOTS * REPLICA_MIB, f"a DPU is overcommitted: {memory}"
    instances = Counter((service, instance) for _dpu, service, instance, _mib in rows)
    assert not [k for k, n in instances.items() if n > 1], "an instance is placed on two DPUs"
    per_service = Counter(service for _dpu, service, _instance, _mib in rows)
    assert max(per_service.values(), default=0) <= REPLICAS


def kill_all(server: ServerProcess) -> None:
    """SIGKILL the server and its controller process at once: no shutdown code runs in either."""
    for pid in child_pids(server.proc.pid):
        with contextlib.suppress(ProcessLookupError):  # exited meanwhile
            os.kill(pid, signal.SIGKILL)
    server.kill()


def test_a_control_plane_killed_mid_placement_places_every_replica_once(plane: tuple[Path, Store]) -> None:
    data_dir, store = plane
    servers = [start_server_process(data_dir)]
    try:
        for n in range(SERVICES // 2):
            add_service(store, f"svc-{n}", {"replicas": REPLICAS}, resources={"memoryMiB": REPLICA_MIB})
        wait_until(lambda: len(placed(store)) > 0, timeout=60, what="the first placements")
        kill_all(servers[0])  # while the first half is being placed
        during = placed(store)
        assert len(during) < SERVICES // 2 * REPLICAS, "the kill came after placing was done: nothing was tested"
        assert_consistent(during)
        for n in range(SERVICES // 2, SERVICES):  # more arrive while the control plane is down
            add_service(store, f"svc-{n}", {"replicas": REPLICAS}, resources={"memoryMiB": REPLICA_MIB})

        servers.append(start_server_process(data_dir))
        wait_until(lambda: len(placed(store)) == SERVICES * REPLICAS, timeout=120, what="every replica placed")
        rows = placed(store)
        assert_consistent(rows)
        assert Counter(dpu for dpu, *_ in rows) == {f"dpu-{i}": SLOTS for i in range(DPUS)}  # the fleet is full
        assert set(during) <= set(rows), "a placement made before the kill was moved or dropped"
        wait_until(
            lambda: all(
                (store.get("DPUService", f"svc-{n}", P).get("status") or {}).get("scheduled") == REPLICAS
                for n in range(SERVICES)
            ),
            timeout=60,
            what="every service's status says all its replicas are scheduled",
        )
    finally:
        for server in servers:
            server.stop()
