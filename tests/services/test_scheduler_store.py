"""The scheduler against the store: placements persisted per DPU, never an overcommit even with two
schedulers at once, dependencies honoured, cycles refused at admission, deletes release."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from dpufleet.api.errors import Invalid
from dpufleet.plane import Services
from dpufleet.services.controller import schedule_service
from dpufleet.store.store import Store, default_sqlite_url

P = "default"
SHA = "a" * 64


def add_dpu(store: Store, name: str, *, host: str, cores: int = 8, memory_gib: float = 16, **spec: Any) -> None:
    store.create({"kind": "DPU", "metadata": {"name": name, "labels": {"rack": "r1"}}, "spec": spec})
    store.update_status(
        "DPU",
        name,
        {
            "phase": "Ready",
            "host": host,
            "vendor": "NVIDIA",
            "model": "BlueField-3",
            "partNumber": "900-9D3B6-00CV-AA0",
            "capabilities": {"cpu": {"cores": cores}, "memoryGiB": memory_gib},
        },
    )


@contextmanager
def store_fleet(directory: Path, dpus: int) -> Iterator[Store]:
    """A store with the admission guards a control plane installs, and ``dpus`` Ready DPUs dpu-0... on hosts
    host-0...: the fleet the store-level services tests start from."""
    store = Store.open(default_sqlite_url(directory))
    Services(store)
    for i in range(dpus):
        add_dpu(store, f"dpu-{i}", host=f"host-{i}")
    try:
        yield store
    finally:
        store.close()


def add_service(store: Store, name: str, placement: dict[str, Any], **spec: Any) -> None:
    store.create(
        {
            "kind": "DPUService",
            "metadata": {"name": name},
            "spec": {
                "artifact": {"image": {"reference": f"repo/{name}@sha256:{SHA}"}},
                "placement": placement,
                **spec,
            },
        }
    )


def allocated_memory(store: Store, dpu: str) -> int:
    record = store.get("DPUAllocation", dpu, P)
    return sum(i["memoryMiB"] for i in record["spec"]["instances"])


@pytest.fixture
def fleet(store: Store) -> Store:
    Services(store)  # the admission guards a control plane installs
    for i in range(4):
        add_dpu(store, f"dpu-{i}", host=f"host-{i // 2}")
    return store


def test_replicas_are_persisted_with_their_allocation_and_mirrored_on_the_dpu(fleet: Store) -> None:
    add_service(fleet, "dns", {"replicas": 2, "maxPerHost": 1}, resources={"cpuMillicores": 500, "memoryMiB": 256})
    schedule_service(fleet, P, "dns")
    status = fleet.get("DPUService", "dns", P)["status"]
    assert (status["desired"], status["scheduled"], status["running"]) == (2, 2, 0)
    hosts = {i["host"] for i in status["instances"]}
    assert hosts == {"host-0", "host-1"}  # spread across hosts
    dpu = fleet.get("DPU", status["instances"][0]["dpu"], P)["status"]
    assert dpu["allocated"]["memoryMiB"] == 256 and dpu["allocatable"]["cpuMillicores"] == 8000
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Scheduled": "True",
        "Running": "False",
        "Upgraded": "True",
        "Trusted": "True",
    }


def test_flavor_reservation_lowers_allocatable(fleet: Store) -> None:
    fleet.create({"kind": "DPUFlavor", "metadata": {"name": "reserved"}, "spec": {"reservedResources": {"cpus": 6}}})
    add_dpu(fleet, "dpu-f", host="host-f", flavor="reserved")
    add_service(fleet, "big", {"mode": "DPUs", "dpus": ["dpu-f"]}, resources={"cpuMillicores": 3000})
    schedule_service(fleet, P, "big")
    status = fleet.get("DPUService", "big", P)["status"]
    assert status["scheduled"] == 0
    assert status["pendingReason"] == "0/5 DPUs fit: 4 not listed, 1 insufficient cpu"


def test_pending_reason_in_numbers_and_unschedulable_dpus(fleet: Store) -> None:
    for i in range(4):
        fleet.patch("DPU", f"dpu-{i}", {"spec": {"unschedulable": True}}, P)
    add_service(fleet, "svc", {"replicas": 1})
    schedule_service(fleet, P, "svc")
    status = fleet.get("DPUService", "svc", P)["status"]
    assert status["pendingReason"] == "0/4 DPUs fit: 4 unschedulable"
    assert status["instances"] == [{"name": "svc/pending-0", "phase": "Pending"}]


def test_two_concurrent_schedulers_never_overcommit_a_dpu(store: Store) -> None:
    Services(store)
    add_dpu(store, "dpu-only", host="h", cores=8, memory_gib=1)  # room for one 600 MiB instance
    for name in ("a", "b"):
        add_service(store, name, {"replicas": 1}, resources={"memoryMiB": 600})
    barrier = threading.Barrier(2)

    def run(name: str) -> None:
        barrier.wait()
        schedule_service(store, P, name)

    threads = [threading.Thread(target=run, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert allocated_memory(store, "dpu-only") == 600
    scheduled = [store.get("DPUService", n, P)["status"]["scheduled"] for n in ("a", "b")]
    assert sorted(scheduled) == [0, 1]


def test_a_placement_written_against_a_stale_record_is_refused_and_checked_again(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The compare-and-swap itself, forced: between the scheduler's read of the DPU's allocation record and its
    write, another scheduler takes the room. The write carries the stale resourceVersion, is refused, and the
    fit is checked again on the record as it now is: no room, no placement."""
    from dpufleet.services import controller
    from dpufleet.services.scheduling import Request, Resources

    Services(store)
    add_dpu(store, "dpu-only", host="h", cores=8, memory_gib=1)  # room for one 600 MiB instance
    add_service(store, "late", {"replicas": 1}, resources={"memoryMiB": 600})
    node = controller.read_snapshot(store, P).by_name["dpu-only"]
    real_get, raced = store.get, []

    def get_then_race(kind: str, name: str, project: str | None = None) -> dict[str, Any]:
        found = real_get(kind, name, project)
        if kind == "DPUAllocation" and not raced:  # the other scheduler writes right after this read
            raced.append(True)
            other = {"service": "early", "instance": "early/dpu-only", "cpuMillicores": 0, "memoryMiB": 600,
                     "hugepagesMiB": 0, "storageMiB": 0, "accelerators": [], "priority": 0}  # fmt: skip
            store.update({**found, "spec": {"dpu": "dpu-only", "instances": [other]}})
        return found

    store.create({"kind": "DPUAllocation", "metadata": {"name": "dpu-only", "project": P},
                  "spec": {"dpu": "dpu-only", "instances": []}})  # fmt: skip
    monkeypatch.setattr(store, "get", get_then_race)
    assert not controller.commit_placement(store, P, node, Request("late", Resources(0, 600)))
    monkeypatch.setattr(store, "get", real_get)
    assert raced and [i["service"] for i in store.get("DPUAllocation", "dpu-only", P)["spec"]["instances"]] == [
        "early"
    ], "the racing write stands, and nothing was added beside it"


def test_same_dpu_dependency_waits_then_follows(fleet: Store) -> None:
    add_service(fleet, "ovs", {"mode": "DPUs", "dpus": ["dpu-1"]})
    add_service(fleet, "firewall", {"mode": "EveryDPU"}, dependsOn=[{"service": "ovs"}])
    outcome = schedule_service(fleet, P, "firewall")
    status = fleet.get("DPUService", "firewall", P)["status"]
    assert outcome.requeue_after and status["scheduled"] == 0
    assert "'ovs'" in status["pendingReason"]
    schedule_service(fleet, P, "ovs")
    schedule_service(fleet, P, "firewall")
    status = fleet.get("DPUService", "firewall", P)["status"]
    assert [i["dpu"] for i in status["instances"]] == ["dpu-1"]


def test_a_dependency_cycle_is_refused_at_admission_naming_it(fleet: Store) -> None:
    add_service(fleet, "a", {"replicas": 1}, dependsOn=[{"service": "b"}])
    add_service(fleet, "b", {"replicas": 1}, dependsOn=[{"service": "c"}])
    with pytest.raises(Invalid, match="dependency cycle a -> b -> c -> a"):
        add_service(fleet, "c", {"replicas": 1}, dependsOn=[{"service": "a"}])
    add_service(fleet, "c", {"replicas": 1})
    with pytest.raises(Invalid, match="cycle"):
        fleet.patch("DPUService", "c", {"spec": {"dependsOn": [{"service": "a"}]}}, P)


def test_scale_down_and_delete_release_allocations(fleet: Store) -> None:
    add_service(fleet, "svc", {"replicas": 3}, resources={"memoryMiB": 100})
    schedule_service(fleet, P, "svc")
    fleet.patch("DPUService", "svc", {"spec": {"placement": {"replicas": 1}}}, P)
    schedule_service(fleet, P, "svc")
    records = fleet.list("DPUAllocation", P).items
    assert sum(len(r["spec"]["instances"]) for r in records) == 1
    fleet.delete("DPUService", "svc", P)
    schedule_service(fleet, P, "svc")
    assert all(not r["spec"]["instances"] for r in fleet.list("DPUAllocation", P).items)


def test_validation_names_the_field(fleet: Store) -> None:
    with pytest.raises(Invalid, match="reference"):
        fleet.create(
            {
                "kind": "DPUService",
                "metadata": {"name": "bad"},
                "spec": {"artifact": {"image": {"reference": "repo/x:latest"}}, "placement": {"replicas": 1}},
            }
        )
    with pytest.raises(Invalid, match="replicas"):
        add_service(fleet, "bad2", {"mode": "Replicas"})


def test_an_instance_on_a_deleted_dpu_is_placed_again(fleet: Store) -> None:
    add_service(fleet, "svc", {"replicas": 1})
    schedule_service(fleet, P, "svc")
    first = fleet.get("DPUService", "svc", P)["status"]["instances"][0]["dpu"]
    fleet.delete("DPU", first, P)
    schedule_service(fleet, P, "svc")
    status = fleet.get("DPUService", "svc", P)["status"]
    assert status["scheduled"] == 1 and status["instances"][0]["dpu"] != first


def test_kernel_modules_and_privileged_services_are_the_admin_only_sub_action() -> None:
    from dpufleet.security.policy import SUBACTION_RULES, Role, SubAction, Verb, sensitive_actions

    plain = {"spec": {"artifact": {"image": {"reference": "r@sha256:" + SHA}}, "privileged": False}}
    module = {"spec": {"artifact": {"kernelModule": {"name": "m", "url": "https://x/m.ko", "sha256": SHA}}}}
    assert sensitive_actions("DPUService", Verb.CREATE, None, plain) == []
    assert sensitive_actions("DPUService", Verb.CREATE, None, module) == [SubAction.PRIVILEGED_SERVICE]
    assert sensitive_actions("DPUService", Verb.PATCH, plain, {"spec": {**plain["spec"], "privileged": True}}) == [
        SubAction.PRIVILEGED_SERVICE
    ]
    assert SUBACTION_RULES[SubAction.PRIVILEGED_SERVICE] == {Role.ADMIN}


def test_many_schedulers_racing_over_a_full_fleet_never_overcommit(fleet: Store) -> None:
    names = [f"s{i}" for i in range(12)]
    for name in names:  # 12 x 3 instances of 4 GiB wanted; 4 DPUs of 16 GiB hold 16
        add_service(fleet, name, {"replicas": 3}, resources={"memoryMiB": 4096})
    barrier = threading.Barrier(4)

    def run(mine: list[str]) -> None:
        barrier.wait()
        for name in mine:
            schedule_service(fleet, P, name)

    threads = [threading.Thread(target=run, args=(names[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        assert allocated_memory(fleet, f"dpu-{i}") <= 16 * 1024
    scheduled = sum(fleet.get("DPUService", n, P)["status"]["scheduled"] for n in names)
    records = sum(len(r["spec"]["instances"]) for r in fleet.list("DPUAllocation", P).items)
    assert scheduled == records <= 16


# --- preemption ------------------------------------------------------------------------------------------


def _events(store: Store, service: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in store.list("Event", P).items if e["involvedObject"]["name"] == service and e["reason"] == reason]


def test_a_higher_priority_service_preempts_the_lowest_and_the_preemption_is_an_event(fleet: Store) -> None:
    # every DPU has 8 cores: a batch job takes 6 on each, a low one 1 on each
    add_service(fleet, "batch", {"mode": "EveryDPU"}, resources={"cpuMillicores": 6000}, priority=1)
    add_service(fleet, "low", {"mode": "EveryDPU"}, resources={"cpuMillicores": 1000})
    schedule_service(fleet, P, "batch")
    schedule_service(fleet, P, "low")
    add_service(fleet, "firewall", {"replicas": 2, "maxPerHost": 1}, resources={"cpuMillicores": 1500}, priority=100)
    outcome = schedule_service(fleet, P, "firewall")
    status = fleet.get("DPUService", "firewall", P)["status"]
    assert status["scheduled"] == 2 and status.get("pendingReason") is None
    # on each chosen DPU the fewest, lowest-priority instances that make room: "low" (priority 0)
    # frees 1 core (8 - 6 - 1 + 1 = 2 >= 1.5), so "batch" (priority 1) keeps its instance
    assert outcome.preempted == ["low"]
    for inst in status["instances"]:
        services = {i["service"] for i in fleet.get("DPUAllocation", inst["dpu"], P)["spec"]["instances"]}
        assert services == {"batch", "firewall"}
    preempted = _events(fleet, "low", "Preempted")
    assert len(preempted) == 2 and all("preempted by service 'firewall'" in e["message"] for e in preempted)
    assert len(_events(fleet, "firewall", "Preempting")) == 2
    schedule_service(fleet, P, "low")  # woken by the preemption: shown with what it lost
    low = fleet.get("DPUService", "low", P)["status"]
    assert low["scheduled"] == 2 and low["desired"] == 2


def test_equal_or_lower_priority_never_preempts(fleet: Store) -> None:
    add_service(fleet, "big", {"mode": "EveryDPU"}, resources={"cpuMillicores": 7000}, priority=5)
    schedule_service(fleet, P, "big")
    add_service(fleet, "peer", {"replicas": 1}, resources={"cpuMillicores": 2000}, priority=5)
    outcome = schedule_service(fleet, P, "peer")
    status = fleet.get("DPUService", "peer", P)["status"]
    assert status["scheduled"] == 0 and outcome.preempted == []
    assert "4 insufficient cpu" in status["pendingReason"]
    assert all(len(fleet.get("DPUAllocation", f"dpu-{i}", P)["spec"]["instances"]) == 1 for i in range(4))


def test_an_instance_another_depends_on_there_is_not_preempted(fleet: Store) -> None:
    add_service(fleet, "base", {"mode": "DPUs", "dpus": ["dpu-0"]}, resources={"cpuMillicores": 4000})
    schedule_service(fleet, P, "base")
    add_service(
        fleet, "addon", {"mode": "DPUs", "dpus": ["dpu-0"]}, resources={"cpuMillicores": 3000},
        dependsOn=[{"service": "base", "scope": "SameDPU"}],
    )  # fmt: skip
    schedule_service(fleet, P, "addon")
    add_service(fleet, "urgent", {"mode": "DPUs", "dpus": ["dpu-0"]}, resources={"cpuMillicores": 4000}, priority=9)
    outcome = schedule_service(fleet, P, "urgent")
    # dpu-0 has 1 core free (base 4 + addon 3 of 8); evicting addon makes the 4 urgent needs
    assert outcome.preempted == ["addon"]
    services = {i["service"] for i in fleet.get("DPUAllocation", "dpu-0", P)["spec"]["instances"]}
    assert services == {"base", "urgent"}  # "base", which addon depended on, was never a candidate


def test_a_host_placed_instance_takes_nothing_from_its_dpu_and_is_charged_again_on_its_way_back(
    fleet: Store,
) -> None:
    """runsOn Host: the instance runs on the host, so its DPU's memory stays free for others; moving back
    to the DPU charges it again, and a DPU that has meanwhile no room for it sends it elsewhere."""
    big = {"cpuMillicores": 1000, "memoryMiB": 12 * 1024}
    add_service(fleet, "edge", {"mode": "DPUs", "dpus": ["dpu-0"], "runsOn": "Host"}, resources=big)
    schedule_service(fleet, P, "edge")
    assert allocated_memory(fleet, "dpu-0") == 0
    assert fleet.get("DPU", "dpu-0", P)["status"]["allocated"]["memoryMiB"] == 0
    add_service(fleet, "cache", {"mode": "DPUs", "dpus": ["dpu-0"]}, resources={"memoryMiB": 8 * 1024})
    schedule_service(fleet, P, "cache")
    assert allocated_memory(fleet, "dpu-0") == 8 * 1024  # the DPU's memory went to a service that runs there

    fleet.patch("DPUService", "edge", {"spec": {"placement": {"runsOn": "DPU"}}}, P)
    schedule_service(fleet, P, "edge")  # 12 GiB more does not fit beside cache's 8 on a 16 GiB DPU
    status = fleet.get("DPUService", "edge", P)["status"]
    assert status["scheduled"] == 0 and "insufficient memory" in status["pendingReason"]
    assert allocated_memory(fleet, "dpu-0") == 8 * 1024  # never overcommitted

    fleet.delete("DPUService", "cache", P)
    schedule_service(fleet, P, "cache")
    schedule_service(fleet, P, "edge")
    assert fleet.get("DPUService", "edge", P)["status"]["scheduled"] == 1
    assert allocated_memory(fleet, "dpu-0") == 12 * 1024  # charged, now that it runs on the DPU
    fleet.patch("DPUService", "edge", {"spec": {"placement": {"runsOn": "Host"}}}, P)
    schedule_service(fleet, P, "edge")
    assert allocated_memory(fleet, "dpu-0") == 0
    assert fleet.get("DPU", "dpu-0", P)["status"]["allocated"]["memoryMiB"] == 0


def test_a_resize_that_does_not_fit_keeps_the_old_revision_and_charge_there_and_says_so(fleet: Store) -> None:
    """New resources are charged before a DPU runs them: where they do not fit, the upgrade holds the DPU
    on the current revision (its old limits) and the old charge, says why, and moves it once room is made."""
    from dpufleet.services.desired import desired_services

    add_service(fleet, "cache", {"mode": "DPUs", "dpus": ["dpu-0"]}, resources={"memoryMiB": 8 * 1024})
    add_service(fleet, "other", {"mode": "DPUs", "dpus": ["dpu-0"]}, resources={"memoryMiB": 6 * 1024})
    schedule_service(fleet, P, "cache")
    schedule_service(fleet, P, "other")
    fleet.patch("DPUService", "cache", {"spec": {"resources": {"memoryMiB": 12 * 1024}}}, P)
    schedule_service(fleet, P, "cache")
    upgrade = fleet.get("DPUService", "cache", P)["status"]["upgrade"]
    assert upgrade["held"] == ["dpu-0"] and not upgrade.get("inFlight")
    assert "dpu-0: insufficient memory" in upgrade["message"] and "do not fit" in upgrade["message"]
    assert allocated_memory(fleet, "dpu-0") == 14 * 1024, "never overcommitted"
    (runs,) = [i for i in desired_services(fleet, P, "dpu-0").instances if i.service == "cache"]
    assert runs.resources.memoryMiB == 8 * 1024, "the DPU runs what it is charged for"

    fleet.delete("DPUService", "other", P)
    schedule_service(fleet, P, "other")
    schedule_service(fleet, P, "cache")
    upgrade = fleet.get("DPUService", "cache", P)["status"]["upgrade"]
    assert "dpu-0" in (upgrade.get("inFlight") or {}) and allocated_memory(fleet, "dpu-0") == 12 * 1024
    (runs,) = desired_services(fleet, P, "dpu-0").instances
    assert runs.resources.memoryMiB == 12 * 1024


def test_on_its_way_to_the_host_an_instance_is_charged_to_its_dpu_until_the_hosts_serves(fleet: Store) -> None:
    """A DPU -> host move: the DPU's instance keeps running until the host's is ready, so its DPU keeps
    its charge until then (no other service is placed into memory still in use)."""
    from dpufleet.api.agent_services import InstanceReport, ServiceReport
    from dpufleet.runtime.events import EventRecorder
    from dpufleet.services.desired import desired_services
    from dpufleet.services.reports import record_service_report

    def serves(where: str) -> None:
        (inst,) = desired_services(fleet, P, "dpu-0", where).instances
        report = InstanceReport(service="edge", instance=inst.instance, revision=inst.revision, phase="Running",
                                ready=True)  # fmt: skip
        record_service_report(fleet, EventRecorder(fleet, "t"), P, "dpu-0", ServiceReport(instances=[report]), where)

    add_service(fleet, "edge", {"mode": "DPUs", "dpus": ["dpu-0"]}, resources={"memoryMiB": 4096})
    schedule_service(fleet, P, "edge")
    serves("DPU")
    fleet.patch("DPUService", "edge", {"spec": {"placement": {"runsOn": "Host"}}}, P)
    schedule_service(fleet, P, "edge")
    assert allocated_memory(fleet, "dpu-0") == 4096, "the DPU's instance still runs there"
    serves("Host")
    schedule_service(fleet, P, "edge")
    assert allocated_memory(fleet, "dpu-0") == 0


def test_a_service_waits_for_the_upgrade_of_what_it_depends_on(fleet: Store) -> None:
    """The cascade, through the controller: both specs change at once; the dependent one starts no DPU while
    the one it depends on is upgrading (or its change is not yet seen), and says whom it waits for."""
    add_service(fleet, "base", {"mode": "DPUs", "dpus": ["dpu-0"]}, config={"env": {"V": "1"}})
    add_service(fleet, "top", {"mode": "DPUs", "dpus": ["dpu-0"]}, config={"env": {"V": "1"}},
                dependsOn=[{"service": "base"}])  # fmt: skip
    schedule_service(fleet, P, "base")
    schedule_service(fleet, P, "top")
    for name in ("base", "top"):
        fleet.patch("DPUService", name, {"spec": {"config": {"env": {"V": "2"}}}}, P)
    schedule_service(fleet, P, "top")  # before base's controller has seen its own change
    upgrade = fleet.get("DPUService", "top", P)["status"]["upgrade"]
    assert upgrade["phase"] == "Waiting" and "'base'" in upgrade["message"] and not upgrade.get("inFlight")
    schedule_service(fleet, P, "base")  # base upgrades now (its instance is in flight)
    assert fleet.get("DPUService", "base", P)["status"]["upgrade"]["phase"] == "Progressing"
    schedule_service(fleet, P, "top")
    upgrade = fleet.get("DPUService", "top", P)["status"]["upgrade"]
    assert upgrade["phase"] == "Waiting" and upgrade["held"] == ["dpu-0"], "top waits while base upgrades"


def test_pinned_cores_are_whole_distinct_and_never_the_flavors_reserved_ones(store: Store) -> None:
    """resources.pinnedCores: the scheduler picks cores no other instance of the DPU has pinned, past those
    the flavor reserves for the OS, written with the allocation (compare-and-swap) and served to the DPU;
    two schedulers at once never pin one core twice."""
    from dpufleet.services.desired import desired_services

    Services(store)
    store.create({"kind": "DPUFlavor", "metadata": {"name": "os2"}, "spec": {"reservedResources": {"cpus": 2}}})
    add_dpu(store, "dpu-p", host="h", cores=8, flavor="os2")  # cores 2..7 may be pinned
    for name, cores in (("a", 2), ("b", 1), ("c", 1)):
        add_service(store, name, {"replicas": 1}, resources={"pinnedCores": cores})
    barrier = threading.Barrier(3)

    def run(name: str) -> None:
        barrier.wait()
        schedule_service(store, P, name)

    threads = [threading.Thread(target=run, args=(n,)) for n in ("a", "b", "c")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    placed = {i["service"]: i for i in store.get("DPUAllocation", "dpu-p", P)["spec"]["instances"]}
    assert sorted(c for i in placed.values() for c in i["cores"]) == [2, 3, 4, 5]  # all distinct, none reserved
    assert len(placed["a"]["cores"]) == 2 and placed["a"]["cpuMillicores"] == 2000
    served = {i.service: i for i in desired_services(store, P, "dpu-p").instances}
    assert {s: i.cores for s, i in served.items()} == {s: i["cores"] for s, i in placed.items()}

    add_service(store, "d", {"replicas": 1}, resources={"pinnedCores": 3})  # two are left
    schedule_service(store, P, "d")
    status = store.get("DPUService", "d", P)["status"]
    assert status["scheduled"] == 0 and status["pendingReason"] == "0/1 DPUs fit: 1 insufficient cores to pin"
    # a shared service still fits in what is left of the CPU (6 cores less the 4 pinned)
    add_service(store, "shared", {"replicas": 1}, resources={"cpuMillicores": 500})
    schedule_service(store, P, "shared")
    assert store.get("DPUService", "shared", P)["status"]["scheduled"] == 1


def test_pinned_cores_with_a_cpu_share_is_refused_naming_the_field(fleet: Store) -> None:
    with pytest.raises(Invalid, match=r"cpuMillicores: not with pinnedCores"):
        add_service(fleet, "both", {"replicas": 1}, resources={"pinnedCores": 1, "cpuMillicores": 500})


def test_a_resize_of_pinned_cores_keeps_the_ones_it_has_and_releases_them_when_it_shares(fleet: Store) -> None:
    add_service(fleet, "fw", {"mode": "DPUs", "dpus": ["dpu-0"]}, resources={"pinnedCores": 1})
    schedule_service(fleet, P, "fw")

    def cores() -> list[int]:
        record = fleet.get("DPUAllocation", "dpu-0", P)["spec"]["instances"]
        return list(next(i for i in record if i["service"] == "fw").get("cores") or [])

    (first,) = cores()
    fleet.patch("DPUService", "fw", {"spec": {"resources": {"pinnedCores": 3}}}, P)
    schedule_service(fleet, P, "fw")
    assert len(cores()) == 3 and first in cores()  # the core it runs on stays its own
    fleet.patch("DPUService", "fw", {"spec": {"resources": {"pinnedCores": 0, "cpuMillicores": 500}}}, P)
    schedule_service(fleet, P, "fw")
    assert cores() == []
