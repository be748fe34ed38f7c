"""A Service interface enters a real service instance: an emulated DPU with a real Open vSwitch and a
real container runtime (runc); a DPUService runs on it, and a DPUServiceInterface of type Service
names its `eth0`. The DPU's agent makes the veth from the switch into the instance's own network
namespace, gives it its address from the pool, and a chain joins it to the wire:

- a ping from the wire reaches the service's kernel, at the address the pool gave it;
- when the instance restarts (a new namespace: the old veth went with the old one), the agent makes
  the veth again and the traffic comes back, without anyone touching the switch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator

import pytest

from dpufleet.agent.network import service_mac
from dpufleet.agent.services import ServiceRuntime
from dpufleet.sim.network import DataPlane
from dpufleet.sim.runner import SimRunning
from provisioning.conftest import Operator, provisioning_server
from services.fleet import provision, service, services_fleet
from support.net import netns_ping, wait_until
from support.oci import served_image, tools_missing
from support.server import RunningServer

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(os.geteuid() != 0, reason="runc and network namespaces need root"),
    pytest.mark.skipif(bool(tools_missing()), reason=f"not installed: {', '.join(tools_missing())}"),
]
BOUND = 20.0


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    with served_image(tmp_path_factory.mktemp("image")) as served:
        yield served


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with provisioning_server(tmp_path_factory.mktemp("api")) as running:
        yield running


@pytest.fixture(scope="module")
def fleet(api: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimRunning]:
    with services_fleet(api, tmp_path_factory.mktemp("fleet"), network=True) as running:
        yield running


@pytest.fixture(scope="module")
def site(api: RunningServer, fleet: SimRunning) -> Iterator[Operator]:
    yield from provision(api, fleet)


def ping(plane: DataPlane, to: str, count: int = 3) -> int:
    return netns_ping(plane.wire_ns, to, count)


def runtime(fleet: SimRunning) -> ServiceRuntime:
    (agent,) = [a for a in fleet.agents if a.services is not None]
    assert agent.services is not None
    return agent.services


def inner_addresses(pid: int) -> list[str]:
    out = subprocess.run(
        ["nsenter", "-t", str(pid), "-n", "ip", "-j", "addr", "show", "dev", "eth0"],
        capture_output=True,
        text=True,
        timeout=15,
        check=True,
    ).stdout
    return [
        f"{a['local']}/{a['prefixlen']}"
        for d in json.loads(out)
        for a in d.get("addr_info", [])
        if a["family"] == "inet"
    ]


def inner_mac(pid: int) -> str:
    out = subprocess.run(
        ["nsenter", "-t", str(pid), "-n", "ip", "-j", "link", "show", "dev", "eth0"],
        capture_output=True,
        text=True,
        timeout=15,
        check=True,
    ).stdout
    return str(json.loads(out)[0]["address"])


def site_dpu(site: Operator) -> str:
    (dpu,) = [d["metadata"]["name"] for d in site.objects("dpus")]
    return dpu


def test_the_service_interface_is_a_veth_into_the_instance_with_its_address_and_survives_a_restart(
    site: Operator, fleet: SimRunning, image: dict[str, str]
) -> None:
    (plane,) = fleet.data_planes.values()
    subprocess.run(["ip", "-n", plane.wire_ns, "addr", "add", "198.51.100.14/28", "dev", "w-p0"], check=True)
    site.create(
        "dpuserviceipams",
        {
            "kind": "DPUServiceIPAM",
            "metadata": {"name": "svc-net"},
            "spec": {"ipv4": {"cidr": "198.51.100.0/24", "blockPrefixLength": 28}},
        },
    )
    site.create("dpuservices", service("echo", image, "sleep 3600"))
    for name, spec in (
        ("wire0", {"type": "Physical", "port": "p0"}),
        (
            "echo-eth0",
            {"type": "Service", "port": "se0", "service": {"service": "echo", "interface": "eth0"}, "ipam": "svc-net"},
        ),
    ):
        site.create("dpuserviceinterfaces", {"kind": "DPUServiceInterface", "metadata": {"name": name}, "spec": spec})
    site.create(
        "dpuservicechains",
        {
            "kind": "DPUServiceChain",
            "metadata": {"name": "to-echo"},
            "spec": {"hops": [{"interface": "wire0"}, {"interface": "echo-eth0"}]},
        },
    )
    wait_until(lambda: runtime(fleet).running_pid("echo") is not None, 90, what="the service to run")
    wait_until(lambda: ping(plane, "198.51.100.1", 1) == 1, BOUND, what="the wire to reach the service")
    pid = runtime(fleet).running_pid("echo")
    assert pid is not None
    assert inner_addresses(pid) == ["198.51.100.1/28"], "the pool's first address of the DPU's block, inside"
    assert ping(plane, "198.51.100.1", 5) == 5

    os.kill(pid, signal.SIGKILL)  # the instance dies; its restart has a new network namespace
    wait_until(lambda: runtime(fleet).running_pid("echo") not in (None, pid), 60, what="the instance to be restarted")
    wait_until(lambda: ping(plane, "198.51.100.1", 1) == 1, BOUND, what="the veth made again into the new instance")
    new_pid = runtime(fleet).running_pid("echo")
    assert new_pid is not None and inner_addresses(new_pid) == ["198.51.100.1/28"]
    assert inner_mac(new_pid) == service_mac(site_dpu(site), "echo-eth0"), "the same MAC in the new instance"
    doc = site.get("dpuservicechains", "to-echo") or {}
    (entry,) = doc["status"]["dpus"]
    assert entry["programmed"] is True and entry.get("lastError") is None
