"""IPAM against the store: concurrent allocators never hand out one block twice, blocks survive a
control-plane restart, deletes release, and an exhausted pool says so, naming itself."""

from __future__ import annotations

import ipaddress
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpufleet.api.errors import Invalid
from dpufleet.api.kinds import DPUServiceIPAMSpec
from dpufleet.network.controller import reconcile_ipam
from dpufleet.network.ipam import PoolExhausted, allocate, read_blocks, release
from dpufleet.store.store import Store, default_sqlite_url

P = "default"


def ipam(store: Store, name: str, v4: str = "198.51.100.0/24", prefix: int = 28, **spec: Any) -> DPUServiceIPAMSpec:
    doc = {"ipv4": {"cidr": v4, "blockPrefixLength": prefix}, **spec}
    store.create({"kind": "DPUServiceIPAM", "metadata": {"name": name}, "spec": doc})
    return DPUServiceIPAMSpec.model_validate(doc)


def test_concurrent_allocators_never_hand_out_one_block_twice(store: Store) -> None:
    spec = ipam(store, "pool", v4="198.51.100.0/24", prefix=28, ipv6={"cidr": "2001:db8::/56", "blockPrefixLength": 64})
    got: dict[str, Any] = {}
    errors: list[BaseException] = []

    def allocator(worker: int) -> None:
        try:
            for i in range(4):
                dpu = f"dpu-{worker}-{i}"
                got[dpu] = allocate(store, P, "pool", spec, dpu)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=allocator, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(got) == 16
    v4 = [ipaddress.ip_network(b.ipv4) for b in got.values()]
    v6 = [ipaddress.ip_network(b.ipv6) for b in got.values()]
    for nets in (v4, v6):
        assert len(set(nets)) == 16
        assert not any(a.overlaps(b) for i, a in enumerate(nets) for b in nets[i + 1 :])
    assert read_blocks(store, P, "pool").by_dpu.keys() == got.keys()  # what was handed out is what is recorded


def test_blocks_survive_a_restart_and_a_dpu_keeps_its_block(tmp_path: Path) -> None:
    url = default_sqlite_url(tmp_path)
    store = Store.open(url)
    spec = ipam(store, "pool")
    first = allocate(store, P, "pool", spec, "dpu-a")
    store.close()
    store = Store.open(url)
    try:
        assert allocate(store, P, "pool", spec, "dpu-a") == first
        assert allocate(store, P, "pool", spec, "dpu-b").ipv4 != first.ipv4
    finally:
        store.close()


def add_dpu(store: Store, name: str, **labels: str) -> None:
    store.create({"kind": "DPU", "metadata": {"name": name, "labels": labels}, "spec": {}})


def test_an_exhausted_pool_is_a_condition_naming_it_and_a_freed_block_is_reused(store: Store) -> None:
    ipam(store, "tiny", v4="203.0.113.0/30", prefix=31)  # two blocks
    for name in ("dpu-a", "dpu-b", "dpu-c"):
        add_dpu(store, name)
    reconcile_ipam(store, P, "tiny")
    status = store.get("DPUServiceIPAM", "tiny", P)["status"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "PoolExhausted")
    assert "'tiny'" in ready["message"] and "1 selected DPU(s) have no block" in ready["message"]
    assert status["allocated"] == 2 and status["available"] == 0
    with pytest.raises(PoolExhausted, match="tiny"):
        allocate(store, P, "tiny", DPUServiceIPAMSpec.model_validate(store.get("DPUServiceIPAM", "tiny")["spec"]), "x")

    held = read_blocks(store, P, "tiny").by_dpu
    store.delete("DPU", "dpu-a", P)
    reconcile_ipam(store, P, "tiny")
    after = read_blocks(store, P, "tiny").by_dpu
    assert set(after) == {"dpu-b", "dpu-c"}
    assert after["dpu-c"].ipv4 == held["dpu-a"].ipv4  # the freed block went to the DPU that waited
    ready = next(c for c in store.get("DPUServiceIPAM", "tiny", P)["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"

    store.delete("DPUServiceIPAM", "tiny", P)
    reconcile_ipam(store, P, "tiny")
    assert read_blocks(store, P, "tiny").by_dpu == {}


@pytest.mark.parametrize(
    ("kind", "spec", "field"),
    [
        ("DPUServiceIPAM", {"ipv4": {"cidr": "198.51.100.0/24", "blockPrefixLength": 16}}, "blockPrefixLength"),
        ("DPUServiceIPAM", {"ipv4": {"cidr": "198.51.100.7/24", "blockPrefixLength": 28}}, "cidr"),
        ("DPUServiceIPAM", {"ipv4": {"cidr": "2001:db8::/48", "blockPrefixLength": 64}}, "cidr"),
        ("DPUServiceIPAM", {}, "ipv4, ipv6"),
        ("DPUServiceInterface", {"type": "VFRepresentor", "port": "pf0vf0", "pf": 0}, "vf"),
        ("DPUServiceInterface", {"type": "Physical", "port": "p0", "vf": 1}, "vf"),
        ("DPUServiceInterface", {"type": "Physical", "port": "a-name-far-too-long"}, "port"),
        ("DPUServiceInterface", {"type": "Physical", "port": "p0", "mac": "01:00:5e:00:00:01"}, "mac"),
        ("DPUServiceInterface", {"type": "Physical", "port": "p0", "vlan": 4095}, "vlan"),
        ("DPUServiceChain", {"hops": [{"interface": "p0"}]}, "hops"),
        ("DPUServiceChain", {"hops": [{"interface": "p0"}, {"ingress": "a"}]}, "ingress, egress"),
        ("DPUServiceChain", {"hops": [{"interface": "p0"}, {"interface": "p0"}]}, "hops"),
        ("DPUServiceChain", {"hops": [{"interface": "a"}, {"interface": "b"}], "match": {"port": 80}}, "port"),
        ("DPUServiceChain", {"hops": [{"interface": "a"}, {"interface": "b"}], "match": {"prefix": "x"}}, "prefix"),
    ],
)
def test_bad_documents_are_refused_naming_the_field(store: Store, kind: str, spec: dict[str, Any], field: str) -> None:
    with pytest.raises(Invalid) as refused:
        store.create({"kind": kind, "metadata": {"name": "bad"}, "spec": spec})
    assert field in str(refused.value) + repr(getattr(refused.value, "details", ""))
    assert store.list(kind, P).items == []


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    pool_prefix=st.integers(min_value=24, max_value=28),
    block_extra=st.integers(min_value=1, max_value=4),
    workers=st.integers(min_value=2, max_value=4),
    plans=st.lists(
        st.lists(st.tuples(st.booleans(), st.integers(0, 7)), min_size=1, max_size=6), min_size=4, max_size=4
    ),
)
def test_property_concurrent_allocation_and_release_never_overlap_and_stay_in_the_pool(
    tmp_path_factory: pytest.TempPathFactory,
    pool_prefix: int,
    block_extra: int,
    workers: int,
    plans: list[list[tuple[bool, int]]],
) -> None:
    """Any pool and block size, any interleaving of allocators and releasers: the recorded blocks are
    inside the pool, pairwise disjoint, one per DPU, and a DPU asking twice gets the block it holds;
    when the pool runs out it says so (PoolExhausted), never by handing out a taken block."""
    store = Store.open(default_sqlite_url(tmp_path_factory.mktemp("prop")))
    try:
        cidr = f"198.51.100.0/{pool_prefix}"
        spec = ipam(store, "pool", v4=cidr, prefix=min(30, pool_prefix + block_extra))
        errors: list[BaseException] = []

        def worker(plan: list[tuple[bool, int]], w: int) -> None:
            try:
                for take, n in plan:
                    dpu = f"dpu-{w}-{n}"
                    if take:
                        try:
                            block = allocate(store, P, "pool", spec, dpu)
                        except PoolExhausted:
                            continue
                        assert allocate(store, P, "pool", spec, dpu).ipv4 == block.ipv4, "asking twice: the same"
                    else:
                        everyone = {f"dpu-{x}-{m}" for x in range(4) for m in range(8)}
                        release(store, P, "pool", everyone - {dpu})
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(plans[w], w)) for w in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        blocks = read_blocks(store, P, "pool").by_dpu
        nets = [ipaddress.ip_network(b.ipv4) for b in blocks.values() if b.ipv4]
        pool = ipaddress.ip_network(cidr)
        assert all(n.subnet_of(pool) for n in nets)
        assert not any(a.overlaps(b) for i, a in enumerate(nets) for b in nets[i + 1 :]), blocks
        assert spec.ipv4 is not None and len(nets) <= spec.ipv4.block_count()
    finally:
        store.close()
