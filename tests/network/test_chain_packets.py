"""Given an emulated DPU with a real Open vSwitch, whose agent enrolled over mTLS, and two services in
namespaces of their own (each a Linux bridge between its two ports, counting what it forwards):

- a chain wire -> A -> B -> host carries packets from the wire namespace to the host namespace through
  A then B; the chain's status says it is programmed on the DPU, with its flow count;
- removing B from the chain reroutes the traffic (through A alone) within a bounded time, while a
  second chain's traffic loses no packet;
- flows deleted by hand and a port deleted by hand are repaired within a bounded time, with an Event;
- deleting the chain stops the traffic.
"""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dpufleet.agent.network import NetworkReconciler
from dpufleet.agent.telemetry.base import Sources
from dpufleet.agent.telemetry.dataplane_plugin import DataplanePlugin
from dpufleet.api.kinds import chain_cookie
from dpufleet.api.telemetry import Sample, TelemetryClass
from dpufleet.sim.network import DataPlane, in_netns
from dpufleet.sim.runner import SimOptions, SimRunning, sim_in_thread
from provisioning.conftest import Operator, discover
from support.net import netns_ping, poll, wait_until
from support.server import RunningServer, threaded_server

pytestmark = pytest.mark.timeout(120)
REPAIR_BOUND = 10.0  # seconds: the agent converges every 0.2 s here


def sh(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30).stdout


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with threaded_server(tmp_path_factory.mktemp("api")) as running:
        yield running


@pytest.fixture(scope="module")
def fleet(api: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimRunning]:
    options = SimOptions(
        hosts=1,
        dpus_per_host=1,
        seed=18,
        directory=tmp_path_factory.mktemp("fleet"),
        time_scale=0.005,
        server=api.url,
        token=api.token,
        register=False,
        agents=True,
        heartbeat_seconds=1.0,
        network=True,
        network_dpus=1,
        network_interval=0.2,
    )
    with sim_in_thread(options) as running:
        yield running


@pytest.fixture(scope="module")
def plane(fleet: SimRunning) -> Iterator[DataPlane]:
    """The DPU's switch, two services wired to it, and addresses on the wire and host ends."""
    (dp,) = fleet.data_planes.values()
    services = []
    for svc in ("a", "b", "c"):
        ns = f"{dp.tag}-svc{svc}"
        sh("ip", "netns", "add", ns)
        services.append(ns)
        for end in ("in", "out"):
            sh(
                "ip",
                "link",
                "add",
                f"s{svc}-{end}",
                "netns",
                dp.dpu_ns,
                "type",
                "veth",
                "peer",
                "name",
                end,
                "netns",
                ns,
            )
            sh("ip", "-n", dp.dpu_ns, "link", "set", f"s{svc}-{end}", "up")
            sh("ip", "-n", ns, "link", "set", end, "up")
        sh("ip", "-n", ns, "link", "add", "br0", "type", "bridge")
        for end in ("in", "out"):
            sh("ip", "-n", ns, "link", "set", end, "master", "br0")
        sh("ip", "-n", ns, "link", "set", "br0", "up")
    sh("ip", "-n", dp.wire_ns, "addr", "add", "198.51.100.1/24", "dev", "w-p0")
    sh("ip", "-n", dp.host_ns, "addr", "add", "198.51.100.2/24", "dev", "pf0")
    sh("ip", "-n", dp.wire_ns, "addr", "add", "203.0.113.1/24", "dev", "w-p1")
    sh("ip", "-n", dp.host_ns, "addr", "add", "203.0.113.2/24", "dev", "pf0vf0")
    try:
        yield dp
    finally:
        for ns in services:
            subprocess.run(["ip", "netns", "del", ns], check=False)


@pytest.fixture(scope="module")
def site(api: RunningServer, fleet: SimRunning, plane: DataPlane) -> Iterator[Operator]:
    with api.client() as http:
        op = Operator(http, "default")
        discover(op, fleet)
        for name, type_, port, extra in [
            ("wire0", "Physical", "p0", {}),
            ("wire1", "Physical", "p1", {}),
            ("host-pf0", "PFRepresentor", "pf0hpf", {"pf": 0}),
            ("host-vf0", "VFRepresentor", "pf0vf0", {"pf": 0, "vf": 0}),
            *[
                (f"svc-{s}-{e}", "Service", f"s{s}-{e}", {"service": {"service": f"svc-{s}", "interface": e}})
                for s in "abc"
                for e in ("in", "out")
            ],
        ]:
            op.create(
                "dpuserviceinterfaces",
                {
                    "kind": "DPUServiceInterface",
                    "metadata": {"name": name},
                    "spec": {"type": type_, "port": port, **extra},
                },
            )
        yield op


def chain(name: str, hops: list[dict[str, str]], **spec: Any) -> dict[str, Any]:
    return {"kind": "DPUServiceChain", "metadata": {"name": name}, "spec": {"hops": hops, **spec}}


def svc(s: str) -> dict[str, str]:
    return {"ingress": f"svc-{s}-in", "egress": f"svc-{s}-out"}


def forwarded(dp: DataPlane, s: str) -> int:
    """Packets service `s` took in from the chain (its ingress port's receive counter)."""
    return int(in_netns(f"{dp.tag}-svc{s}", "cat", "/sys/class/net/in/statistics/rx_packets"))


def ping(dp: DataPlane, to: str, count: int = 3, interval: str = "0.05") -> int:
    """Replies received from the wire namespace's ping."""
    return netns_ping(dp.wire_ns, to, count, interval)


def chain_on_dpu(op: Operator, name: str) -> dict[str, Any] | None:
    doc = op.get("dpuservicechains", name) or {}
    entries = (doc.get("status") or {}).get("dpus") or []
    return entries[0] if entries else None


def test_packets_from_the_wire_reach_the_host_through_a_then_b(site: Operator, plane: DataPlane) -> None:
    site.create(
        "dpuservicechains", chain("web", [{"interface": "wire0"}, svc("a"), svc("b"), {"interface": "host-pf0"}])
    )
    site.create("dpuservicechains", chain("storage", [{"interface": "wire1"}, {"interface": "host-vf0"}]))
    wait_until(lambda: ping(plane, "198.51.100.2", 1) == 1, timeout=REPAIR_BOUND, what="the web chain to carry a ping")
    a0, b0, c0 = forwarded(plane, "a"), forwarded(plane, "b"), forwarded(plane, "c")
    assert ping(plane, "198.51.100.2", 20, "0.02") == 20
    assert forwarded(plane, "a") - a0 >= 20 and forwarded(plane, "b") - b0 >= 20, "each service forwarded them"
    assert forwarded(plane, "c") == c0, "a service not in the chain sees none of it"
    assert ping(plane, "203.0.113.2", 3) == 3, "the second chain carries its own traffic"

    status = site.wait_object(
        "dpuservicechains",
        "web",
        lambda d: any(c["status"] == "True" for c in d["status"].get("conditions") or [] if c["type"] == "Ready"),
        15,
    )["status"]
    (entry,) = status["dpus"]
    assert entry["programmed"] is True and entry.get("lastError") is None
    assert entry["flows"] == 6, "three links, both ways"
    assert status["selected"] == status["programmed"] == 1


def test_the_dataplane_plugin_counts_each_chains_traffic_and_each_ports(
    site: Operator, fleet: SimRunning, plane: DataPlane, tmp_path: Path
) -> None:
    """What a tenant is billed for: the bytes and packets each chain's flows matched, from the real switch."""
    (agent,) = [a for a in fleet.agents if a.network is not None]
    assert agent.network is not None
    plugin = DataplanePlugin(Sources(root=tmp_path, state=tmp_path, dataplane=agent.network.dataplane_counters))

    def chains(samples: list[tuple[TelemetryClass, Sample]]) -> dict[tuple[str, str], float]:
        return {
            (s.name, s.attributes["dpufleet.chain"]): s.value for _, s in samples if "dpufleet.chain" in s.attributes
        }

    before = chains(list(plugin.collect(frozenset({TelemetryClass.USAGE}), 1)))
    assert ping(plane, "198.51.100.2", 10, "0.02") == 10
    # ovs-vswitchd credits a datapath flow's hits to its OpenFlow rule when its revalidators next run (about
    # every 500 ms, later on a busy machine): the next collections see them, not necessarily the first
    web = ("dpufleet.dataplane.chain.packets", "web")
    after = poll(
        "the web chain's counters",
        lambda: chains(list(plugin.collect(frozenset(TelemetryClass), 2))),
        lambda found: found[web] - before[web] >= 20,
        15,
        interval=0.25,
    )
    assert after[("dpufleet.dataplane.chain.io", "web")] - before[("dpufleet.dataplane.chain.io", "web")] >= 20 * 84
    assert after[("dpufleet.dataplane.chain.flows", "web")] == 6
    # the other chain carried none of the pings (only its namespaces' own chatter: IPv6 neighbour discovery)
    storage = (
        after[("dpufleet.dataplane.chain.packets", "storage")] - before[("dpufleet.dataplane.chain.packets", "storage")]
    )
    assert storage < 10

    def ports() -> dict[tuple[str, str, str], float]:  # OVS writes a port's statistics to OVSDB every 5 s
        return {(s.name, s.attributes["dpufleet.interface"], s.attributes["network.io.direction"]): s.value
                for _, s in plugin.collect(frozenset(TelemetryClass), 3) if "dpufleet.interface" in s.attributes}  # fmt: skip

    key = ("dpufleet.dataplane.port.packets", "wire0", "receive")
    seen = poll("the wire port's counters", ports, lambda p: p.get(key, 0) >= 10, 15, interval=0.5)
    assert ("dpufleet.dataplane.port.errors", "wire0", "receive") in seen
    # sender-side filtering: a class not asked for is not read
    only_load = list(plugin.collect(frozenset({TelemetryClass.LOAD}), 3))
    assert {s.name for _, s in only_load} == {"dpufleet.dataplane.chain.flows"}


def test_removing_b_reroutes_while_the_other_chain_loses_nothing(site: Operator, plane: DataPlane) -> None:
    background = subprocess.Popen(
        ["ip", "netns", "exec", plane.wire_ns, "ping", "-n", "-q", "-c", "300", "-i", "0.01", "-W", "1", "203.0.113.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        site.patch(
            "dpuservicechains", "web", {"spec": {"hops": [{"interface": "wire0"}, svc("a"), {"interface": "host-pf0"}]}}
        )

        def through_a_only() -> bool:
            b0 = forwarded(plane, "b")
            return ping(plane, "198.51.100.2", 3) == 3 and forwarded(plane, "b") == b0

        wait_until(through_a_only, timeout=REPAIR_BOUND, what="the web chain to skip B")
        a0 = forwarded(plane, "a")
        assert ping(plane, "198.51.100.2", 5) == 5 and forwarded(plane, "a") - a0 >= 5
    finally:
        out, _ = background.communicate(timeout=60)
    assert " 300 received" in out, f"the storage chain lost packets while web changed: {out}"


def test_flows_and_a_port_deleted_by_hand_are_repaired_with_an_event(site: Operator, plane: DataPlane) -> None:
    web = chain_cookie("default", "web")
    sh("ovs-ofctl", "del-flows", plane.agent_config().openflow, f"cookie={web:#x}/-1")  # by hand
    wait_until(lambda: ping(plane, "198.51.100.2", 1) == 1, timeout=REPAIR_BOUND, what="the flows repaired")
    wait_until(lambda: bool(site.events("DPUServiceChain", "web")), timeout=REPAIR_BOUND, what="a DriftRepaired event")
    (event,) = [e for e in site.events("DPUServiceChain", "web") if e["reason"] == "DriftRepaired"][:1]
    assert "flows were missing" in event["message"]

    sh("ovs-vsctl", f"--db=unix:{plane.db_socket}", "--timeout=10", "del-port", "sa-in")
    wait_until(lambda: ping(plane, "198.51.100.2", 1) == 1, timeout=REPAIR_BOUND, what="the port repaired")
    wait_until(
        lambda: any(e["reason"] == "DriftRepaired" for e in site.events("DPUServiceInterface", "svc-a-in")),
        timeout=REPAIR_BOUND,
        what="a DriftRepaired event on the interface",
    )
    a0 = forwarded(plane, "a")
    assert ping(plane, "198.51.100.2", 5) == 5 and forwarded(plane, "a") - a0 >= 5, "through A again"


def test_deleting_the_chain_stops_its_traffic_only(site: Operator, plane: DataPlane) -> None:
    resp = site.http.delete(site.path("dpuservicechains", "web"))
    assert resp.status_code in (200, 202), resp.text
    wait_until(
        lambda: ping(plane, "198.51.100.2", 1) == 0, timeout=REPAIR_BOUND, what="the web chain's traffic to stop"
    )
    assert ping(plane, "198.51.100.2", 5) == 0
    assert ping(plane, "203.0.113.2", 5) == 5, "the storage chain still carries traffic"
    web = f"cookie={chain_cookie('default', 'web'):#x}"
    assert web not in sh("ovs-ofctl", "dump-flows", plane.agent_config().openflow), "none of its flows is left"


def test_after_an_agent_restart_the_data_plane_is_rebuilt_from_desired_state_alone(
    site: Operator, fleet: SimRunning, plane: DataPlane
) -> None:
    """The switch is wiped (ports and flows: a DPU whose OVS came back empty) while the agent is down;
    a new agent, knowing nothing but its certificate, rebuilds it from what the control plane wants."""
    (agent,) = [a for a in fleet.agents if a.network is not None]
    running = agent.network
    assert running is not None and agent.credentials is not None
    interval = running.config.interval
    running.config.interval = 3600.0  # the running agent sleeps: only the new one touches the switch
    try:
        time.sleep(interval * 3)
        openflow = plane.agent_config().openflow
        sh("ovs-ofctl", "del-flows", openflow)
        for port in ("p1", "pf0vf0"):
            sh("ovs-vsctl", f"--db=unix:{plane.db_socket}", "--timeout=10", "del-port", port)
        assert ping(plane, "203.0.113.2", 2) == 0, "nothing forwards on an empty switch"

        async def restarted() -> None:
            async with httpx.AsyncClient(verify=agent.credentials.ssl_context(), timeout=15) as http:  # type: ignore[union-attr]
                fresh = NetworkReconciler(dataclasses.replace(running.config), agent.config.server, lambda: http)
                try:
                    report = await fresh.once()
                finally:
                    await asyncio.to_thread(fresh.switch.close)
            assert report is not None
            assert [(c.name, c.programmed) for c in report.chains] == [("storage", True)]
            assert report.repairs == [], "a fresh agent rebuilds; it has nothing to call drift"

        asyncio.run(restarted())
        assert ping(plane, "203.0.113.2", 5) == 5
    finally:
        running.config.interval = interval
