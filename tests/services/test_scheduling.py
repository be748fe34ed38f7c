"""The scheduler's rules, on the pure core: given a snapshot of DPUs, where does a service go, and
when it goes nowhere, why (in numbers)."""

from __future__ import annotations

from dpufleet.services.scheduling import (
    Node,
    Request,
    Resources,
    Shape,
    find_cycle,
    place,
)

BF3 = Shape("NVIDIA", "BlueField-3", "900-9D3B6-00CV-AA0", frozenset({"cpu", "memoryGiB", "os"}), frozenset({"crypto"}))
IPU = Shape("Intel", "IPU E2100", "E2100-CCQDA2", frozenset({"cpu", "memoryGiB"}), frozenset())
BIG = Resources(16_000, 32_768)


def node(name: str, shape: Shape = BF3, host: str | None = None, **kw: object) -> Node:
    return Node(
        name=name,
        host=host or f"host-{name}",
        shape=shape,
        labels=kw.pop("labels", {}),
        allocatable=kw.pop("allocatable", BIG),
        **kw,
    )  # type: ignore[arg-type]


def req(service: str = "svc", cpu: int = 1000, mem: int = 1024, **kw: object) -> Request:
    return Request(service=service, resources=Resources(cpu, mem), **kw)  # type: ignore[arg-type]


def test_replicas_go_to_distinct_dpus_least_allocated_first() -> None:
    nodes = [node("a", allocated=Resources(8000, 0)), node("b"), node("c")]
    placed = place(nodes, req(replicas=2), 2)
    assert sorted(n.name for n in placed.nodes) == ["b", "c"]
    assert nodes[1].allocated == Resources(1000, 1024) and "svc" in nodes[1].services


def test_resources_never_overcommit_and_the_reason_is_counted() -> None:
    nodes = [node("a", allocatable=Resources(2000, 512)), node("b", allocatable=Resources(500, 8192))]
    placed = place(nodes, req(replicas=2), 2)
    assert placed.nodes == []
    assert placed.report.message(0, 2) == "0/2 DPUs fit: 1 insufficient memory, 1 insufficient cpu"


def test_compatibility_by_vendor_part_number_pattern_capability_and_accelerator() -> None:
    nodes = [node("bf", BF3), node("ipu", IPU)]
    assert [n.name for n in place(nodes, req("v", vendors=("NVIDIA",), every=True), 9).nodes] == ["bf"]
    nodes = [node("bf", BF3), node("ipu", IPU)]
    assert [n.name for n in place(nodes, req("p", part_numbers=("E2100-*",), every=True), 9).nodes] == ["ipu"]
    nodes = [node("bf", BF3), node("ipu", IPU)]
    placed = place(nodes, req("c", accelerators=("crypto",), capabilities=("os",), every=True), 9)
    assert [n.name for n in placed.nodes] == ["bf"]
    assert placed.report.reasons == {"missing capability": 1}


def test_compatibility_by_os_and_kernel_as_the_agents_report_them() -> None:
    from dataclasses import replace

    jammy = replace(BF3, os="Ubuntu 22.04.4 LTS", kernel="5.15.0-1035-bluefield")
    noble = replace(BF3, os="Ubuntu 24.04.1 LTS", kernel="6.8.0-1008-bluefield")
    silent = BF3  # its agent has not reported: nothing known of its OS
    nodes = [node("j", jammy), node("n", noble), node("s", silent)]
    placed = place(nodes, req("o", os=("Ubuntu 22.04*",), every=True), 9)
    assert [n.name for n in placed.nodes] == ["j"]
    assert placed.report.message(1, 3) == "1/3 DPUs fit: 1 incompatible OS, 1 OS not reported yet (no agent)"
    nodes = [node("j", jammy), node("n", noble), node("s", silent)]
    placed = place(nodes, req("k", kernels=("6.*",), every=True), 9)
    assert [n.name for n in placed.nodes] == ["n"]
    assert placed.report.reasons == {"incompatible kernel": 1, "OS not reported yet (no agent)": 1}
    nodes = [node("j", jammy), node("s", silent)]
    assert [n.name for n in place(nodes, req("any", every=True), 9).nodes] == ["j", "s"]  # no rule: any OS


def test_specific_dpus_only() -> None:
    nodes = [node("a"), node("b"), node("c")]
    placed = place(nodes, req(dpus=frozenset({"b"})), 1)
    assert [n.name for n in placed.nodes] == ["b"]
    assert placed.report.reasons == {"not listed": 2}


def test_label_selector() -> None:
    nodes = [node("a", labels={"zone": "z1"}), node("b", labels={"zone": "z2"})]
    placed = place(nodes, req(selector=lambda labels: labels.get("zone") == "z2", every=True), 2)
    assert [n.name for n in placed.nodes] == ["b"]


def test_unschedulable_and_not_ready_dpus_get_nothing() -> None:
    nodes = [node("a", unschedulable=True), node("b", ready=False), node("c")]
    placed = place(nodes, req(every=True), 3)
    assert [n.name for n in placed.nodes] == ["c"]
    assert placed.report.reasons == {"unschedulable": 1, "not Ready": 1}


def test_spread_across_hosts_with_max_per_host() -> None:
    nodes = [node("a1", host="h1"), node("a2", host="h1"), node("b1", host="h2"), node("b2", host="h2")]
    placed = place(nodes, req(replicas=2, max_per_host=1), 2)
    assert sorted(n.host or "" for n in placed.nodes) == ["h1", "h2"]
    third = place(nodes, req(replicas=3, max_per_host=1), 1)
    assert third.nodes == [] and third.report.reasons["host spread"] == 2


def test_spread_prefers_a_new_host_even_without_a_cap() -> None:
    nodes = [node("a1", host="h1"), node("a2", host="h1"), node("b1", host="h2")]
    placed = place(nodes, req(replicas=2), 2)
    assert sorted(n.host or "" for n in placed.nodes) == ["h1", "h2"]


def test_anti_affinity_and_affinity() -> None:
    nodes = [node("a", services={"noisy"}), node("b")]
    assert [n.name for n in place(nodes, req(anti_affinity=("noisy",), every=True), 2).nodes] == ["b"]
    nodes = [node("a", services={"cache"}), node("b")]
    placed = place(nodes, req(affinity=("cache",), every=True), 2)
    assert [n.name for n in placed.nodes] == ["a"] and placed.report.reasons == {"affinity not met": 1}


def test_same_dpu_dependency_goes_only_where_the_dependency_is_scheduled() -> None:
    nodes = [node("a", services={"ovs"}), node("b")]
    placed = place(nodes, req("firewall", same_dpu_dependencies=("ovs",), every=True), 2)
    assert [n.name for n in placed.nodes] == ["a"]
    assert placed.report.reasons == {"dependency not scheduled there": 1}


def test_a_dpu_holds_one_instance_of_a_service() -> None:
    nodes = [node("a", services={"svc"})]
    assert place(nodes, req(replicas=1), 1).report.reasons == {"already holds the service": 1}


def test_why_pending_in_numbers_over_a_thousand_dpus() -> None:
    nodes = (
        [node(f"ipu-{i}", IPU) for i in range(612)]
        + [node(f"small-{i}", allocatable=Resources(16_000, 512)) for i in range(301)]
        + [node(f"cordoned-{i}", unschedulable=True) for i in range(87)]
    )
    placed = place(nodes, req(part_numbers=("900-9D3B6-*",), replicas=1), 1)
    assert placed.report.message(placed.fits, len(nodes)) == (
        "0/1,000 DPUs fit: 612 incompatible part number, 301 insufficient memory, 87 unschedulable"
    )


def test_cycles_are_found_and_named() -> None:
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b"], "b": [], "c": ["a"]}) is None


def test_the_os_and_kernel_are_read_from_the_agents_report_trimmed() -> None:
    from dpufleet.services.snapshot import shape_of

    shape = shape_of({"agent": {"os": "  Ubuntu 22.04.4 LTS \n", "kernel": "5.15.0-1035-bluefield "}})
    assert (shape.os, shape.kernel) == ("Ubuntu 22.04.4 LTS", "5.15.0-1035-bluefield")
    assert (shape_of({}).os, shape_of({"agent": {"os": None}}).kernel) == ("", "")


def test_required_offloads_match_the_algorithms_and_kinds_the_catalog_gives_each_model() -> None:
    """`compatibility.offloads` against the DPU's capabilities as inventory writes them from the vendor catalog:
    an algorithm or an accelerator kind, any case, with patterns; the first offload missing is the reason."""
    from dpufleet.api.kinds import DPUServiceSpec
    from dpufleet.inventory.catalog import catalog_capabilities
    from dpufleet.services.snapshot import request_of, shape_of
    from dpufleet.vendors import builtin_catalog

    catalog = builtin_catalog()
    models = {
        name: catalog.models[name]
        for name in ("nvidia-bluefield-3", "intel-ipu-e2100", "amd-pensando-dsc", "marvell-octeon-10")
    }
    shapes = {
        name: shape_of({"capabilities": catalog_capabilities(m), "vendor": m.vendor}) for name, m in models.items()
    }

    def fits(*offloads: str) -> list[str]:
        spec = DPUServiceSpec.model_validate(
            {"artifact": {"ociArchive": {"url": "https://r.example/a.tar", "sha256": "a" * 64}},
             "compatibility": {"offloads": list(offloads)}, "placement": {"mode": "EveryDPU"}}
        )  # fmt: skip
        nodes = [node(name, shape) for name, shape in shapes.items()]
        placed = place(nodes, request_of("svc", spec), 9)
        assert placed.report.reasons.get("missing offload", 0) == len(nodes) - len(placed.nodes)
        return sorted(n.name for n in placed.nodes)

    assert fits("nvme-of-tcp") == ["amd-pensando-dsc", "intel-ipu-e2100", "nvidia-bluefield-3"]
    assert fits("AES-GCM-256", "p4-*") == ["amd-pensando-dsc", "intel-ipu-e2100"]
    assert fits("regex") == ["marvell-octeon-10"]  # an accelerator kind
    assert fits("virtio-blk") == ["nvidia-bluefield-3"]
    assert fits("AES-GCM-256") == sorted(models)
    assert fits("quantum-teleport") == []
