"""Given an emulated DPU whose BMC an operator registers in project tenant-a, and whose DPU and host agents
enroll by their IDevIDs, when the operator installs an image through the agent path and the agent then
asks for a newer approved image (installed through the BMC), then everything happens in tenant-a: its
BMC, DPU, Host, Images, Flavor and UpdateRequest live there, the agents' reports and heartbeats land
there, both installs reach Ready, health writes Healthy -- and nothing at all appears in "default".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from dpufleet import plane as manager
from dpufleet.agent import slots
from dpufleet.agent.daemon import Agent
from dpufleet.api.kinds import REGISTRY
from dpufleet.health.controller import HealthConfig, HealthReconciler
from dpufleet.inventory import reports
from dpufleet.sim.bmc import SimBMC
from dpufleet.sim.runner import SimRunning, sim_in_thread
from provisioning.conftest import Operator, discover, fleet_options, image_doc, provisioning_server, upload
from support.operator import is_true
from support.server import RunningServer

from .conftest import OS_V3, VERSION_V3, os_release, osroot, phase_is, set_spec

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

PROJECT = "tenant-a"
AGENT_HEARTBEAT = 0.2
HEALTH = HealthConfig(
    poll_seconds=0.3, heartbeat_seconds=1.0, allowed_misses=5, heartbeat_write_seconds=0.1, agent_start_seconds=5.0
)
OS_V2 = b"emulated DOCA 2.9 BFB payload for tenant-a\n" * 2000
VERSION_V2 = "DOCA_2.9.0_BSP_4.9.0_Ubuntu_22.04-7"


@contextmanager
def tenant_server(data_dir: Path) -> Iterator[RunningServer]:
    """The real server: provisioning on fast timings (provisioning_server), health on fast timings, agents
    told to heartbeat every AGENT_HEARTBEAT seconds and each heartbeat stored."""

    def health(services: manager.Services) -> HealthReconciler:
        return manager.wire(HealthReconciler, services, HEALTH)

    with pytest.MonkeyPatch.context() as mp:
        factories = [f for f in manager.DEFAULT_RECONCILERS if f is not HealthReconciler] + [health]
        mp.setattr(manager, "DEFAULT_RECONCILERS", factories)
        mp.setattr(reports, "HEARTBEAT_WRITE_EVERY", 0.1)
        mp.setattr(reports.ReportHandler.__init__, "__defaults__", (AGENT_HEARTBEAT, 300.0))
        with provisioning_server(data_dir) as running:
            yield running


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with tenant_server(tmp_path_factory.mktemp("api")) as running:
        yield running


@pytest.fixture(scope="module")
def http(api: RunningServer) -> Iterator[httpx.Client]:
    with api.client() as client:
        yield client


@pytest.fixture(scope="module")
def fleet(api: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimRunning]:
    options = dataclasses.replace(
        fleet_options(api, tmp_path_factory.mktemp("fleet"), hosts=1),
        dpus_per_host=1,
        agents=True,
        install_check_seconds=0.05,
        heartbeat_seconds=AGENT_HEARTBEAT,
    )
    with sim_in_thread(options) as running:
        yield running


@pytest.fixture(scope="module")
def site(http: httpx.Client, fleet: SimRunning) -> Operator:
    op = Operator(http, PROJECT)
    discover(op, fleet)  # the site's BMC credential and Discovery, in tenant-a
    return op


def the_dpu(fleet: SimRunning) -> tuple[str, SimBMC]:
    [bmc] = fleet.fleet.bmcs.values()
    return f"dpu-{bmc.dpu.serial.lower()}", bmc


def dpu_agent(fleet: SimRunning, serial: str) -> Agent:
    return next(a for a in fleet.agents if a.config.role == "dpu" and a.config.serial == serial)


def mtls(agent: Agent) -> httpx.Client:
    assert agent.credentials is not None
    return httpx.Client(verify=agent.credentials.ssl_context(), timeout=10)


def in_default(http: httpx.Client) -> dict[str, list[str]]:
    """Every object of every kind in project "default", by kind (what must stay empty)."""
    found: dict[str, list[str]] = {}
    for info in REGISTRY.values():
        resp = http.get(f"/apis/dpufleet.io/v1alpha1/projects/default/{info.plural}")
        assert resp.status_code == 200, resp.text
        names = [o["metadata"]["name"] for o in resp.json()["items"]]
        if names:
            found[info.kind] = names
    return found


def test_a_dpu_of_tenant_a_is_enrolled_provisioned_updated_and_health_checked_in_tenant_a(
    site: Operator, fleet: SimRunning, api: RunningServer, http: httpx.Client
) -> None:
    name, bmc = the_dpu(fleet)

    # enrolled: its agent's reports land on the DPU discovery created in tenant-a, the host agent's on a
    # Host there that pairs with it
    def reporting(d: dict[str, Any]) -> bool:
        status = d["status"]
        return bool(
            (status.get("agent") or {}).get("lastInventory") and (status.get("agentInstall") or {}).get("slots")
        )

    dpu = site.wait_object("dpus", name, reporting, timeout=30)
    assert dpu["status"]["bmc"] and is_true(dpu, "AgentConnected")
    hosts = site.wait_for("its host agent's Host", lambda: site.objects("hosts"), lambda h: len(h) == 1, 30)
    host = site.wait_object("hosts", hosts[0]["metadata"]["name"], lambda h: name in (h["status"].get("dpus") or []))
    assert host["status"]["serialNumber"] == next(a.config.serial for a in fleet.agents if a.config.role == "host")

    # provisioned through the agent path: image and flavor of tenant-a
    assert upload(site.http, OS_V2).status_code == 201
    site.create("images", image_doc("os-v2", VERSION_V2, OS_V2))
    site.create(
        "dpuflavors",
        {"kind": "DPUFlavor", "metadata": {"name": "tenant-a-flavor"}, "spec": {"kernelParameters": ["iommu=pt"]}},
    )
    set_spec(site, name, image="os-v2", flavor="tenant-a-flavor", installPath="agent")
    dpu = site.wait_object("dpus", name, phase_is("Ready", "InstallFailed", "ValidationFailed"), timeout=40)
    assert dpu["status"]["phase"] == "Ready", dpu["status"].get("provisioning")
    assert dpu["status"]["installedImage"] == "os-v2" and dpu["status"]["appliedFlavor"] == "tenant-a-flavor"
    assert bmc.dpu.firmware["DPU_OS"] == VERSION_V2
    state = slots.read_state(osroot(bmc))
    assert state is not None and state["active"] == "b", "the agent wrote and booted its inactive slot"

    # updated: the agent is offered tenant-a's approved newer image, asks for it, and it is installed
    # through the BMC
    assert upload(site.http, OS_V3).status_code == 201
    newer = image_doc("os-v3", VERSION_V3, OS_V3)
    newer["metadata"]["labels"] = {"dpufleet.io/approved": "true"}
    site.create("images", newer)
    set_spec(site, name, installPath=None)  # the model's first install path: the BMC's (Redfish)
    agent = dpu_agent(fleet, bmc.dpu.serial)
    assert fleet.agent_url
    with mtls(agent) as client:
        offer = client.get(fleet.agent_url + "/agent/v1/updates").json()
        assert offer == {"image": "os-v3", "version": VERSION_V3}
        resp = client.post(fleet.agent_url + "/agent/v1/update-requests", json={"image": "os-v3", "reason": "newer"})
    assert resp.status_code == 202, resp.text
    filed = resp.json()
    assert filed["metadata"]["project"] == PROJECT
    done = site.wait_object(
        "updaterequests",
        filed["metadata"]["name"],
        lambda r: (r.get("status") or {}).get("phase") in ("Succeeded", "Failed", "Refused"),
        timeout=45,
    )
    assert done["status"]["phase"] == "Succeeded", done["status"]
    dpu = site.wait_object("dpus", name, phase_is("Ready"), timeout=20)
    assert dpu["status"]["installedImage"] == "os-v3"
    assert bmc.dpu.firmware["DPU_OS"] == VERSION_V3 and f'IMAGE_VERSION="{VERSION_V3}"' in os_release(bmc)

    # health-checked: Healthy, and the agent's heartbeats keep landing in tenant-a
    beat = dpu["status"]["agent"]["lastHeartbeat"]
    dpu = site.wait_object(
        "dpus", name, lambda d: is_true(d, "Healthy") and d["status"]["agent"]["lastHeartbeat"] != beat, timeout=30
    )
    assert dpu["metadata"]["project"] == PROJECT

    # and nothing of it anywhere in "default"
    assert in_default(http) == {}
    assert site.objects("bmcs") and site.objects("discoveries") and site.events("DPU", name)


def test_the_same_hardware_discovered_from_another_project_gets_no_second_dpu(
    site: Operator, fleet: SimRunning, http: httpx.Client
) -> None:
    name, _bmc = the_dpu(fleet)
    other = Operator(http, "tenant-b")
    other.credential("site-bmcs", fleet.username, fleet.password)
    other.discovery("lab", endpoints=fleet.endpoints, credentialsRef="site-bmcs", intervalSeconds=600)
    bmcs = other.wait_for("tenant-b's BMC", lambda: other.objects("bmcs"), lambda b: len(b) == 1, 30)
    bmc = bmcs[0]["metadata"]["name"]

    def refused() -> list[dict[str, Any]]:
        return [e for e in other.events("BMC", bmc) if e["reason"] == "DuplicateSerial"]

    other.wait_for("the DuplicateSerial event on tenant-b's BMC", refused, bool, 30)
    assert other.objects("dpus") == [], "serials are fleet-unique: tenant-a holds this DPU"
    dpu = site.get("dpus", name)
    assert dpu is not None and dpu["status"]["phase"] == "Ready"
