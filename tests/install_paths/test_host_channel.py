"""Given BlueField DPUs whose hosts run the host agent (enrolled over mTLS) and expose each DPU's rshim,
when a DPU's spec asks for the host-channel install path, then the agent of *its* host -- and no other --
gets the order, downloads the image (Range resume), verifies it, resets the DPU through rshim and pushes
the image to the DPU's boot device; the DPU boots it and reaches Ready with the new version, though the
control plane knows no BMC of it (and its BMC is dead the whole time). A corrupted download is refused by the host agent (DigestMismatch, nothing pushed)
and retry recovers; a push damaged on the way is refused by the DPU, which boots its previous OS and says
why in its boot log, and the next attempt succeeds.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from dpufleet.agent.daemon import Agent
from dpufleet.drivers.agent.host_channel import HostChannelInstall
from dpufleet.drivers.base import InstallRequest
from dpufleet.images.repository import ImageRepository
from dpufleet.sim.devices import SimHost
from dpufleet.sim.rshim import RshimDevice, make_bfb
from dpufleet.sim.runner import SimRunning, sim_in_thread
from provisioning.conftest import Operator, fleet_options, image_doc, sha, upload
from provisioning.test_provisioning import cli
from support.server import RunningServer

from .conftest import downloads_through, dpu_at, os_release, phase_is, set_spec

pytestmark = pytest.mark.timeout(90)

VERSION = "DOCA_3.0.0_BSP_4.11.0_Ubuntu_24.04-7"
BFB = make_bfb(VERSION, b"emulated BlueField boot stream payload\n" * 3000)  # ~117 kB


@pytest.fixture(scope="module")
def fleet(api: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimRunning]:
    options = dataclasses.replace(
        fleet_options(api, tmp_path_factory.mktemp("fleet")), agents=True, install_check_seconds=0.05
    )
    with sim_in_thread(options) as running:
        yield running


@pytest.fixture(scope="module")
def site(http: httpx.Client, fleet: SimRunning) -> Operator:
    """The operator registers every BMC but one: that DPU is known only through its host and its own agent."""
    op = Operator(http, "default")
    _name, unmanaged = dpu_at(fleet, 0)
    op.credential("site-bmcs", fleet.username, fleet.password)
    endpoints = [url for bmc_id, url in fleet.servers.endpoints.items() if bmc_id != unmanaged.id]
    op.discovery("lab", endpoints=endpoints, credentialsRef="site-bmcs", intervalSeconds=600)
    managed = {f"dpu-{b.dpu.serial.lower()}" for b in fleet.fleet.bmcs.values() if b is not unmanaged}

    def inventoried(dpus: list[dict[str, Any]]) -> bool:
        done = {d["metadata"]["name"] for d in dpus if (d.get("status") or {}).get("firmware")}
        return done >= managed

    op.wait_for("every managed DPU inventoried", lambda: op.items("dpus"), inventoried, timeout=30)
    return op


@pytest.fixture(scope="module")
def bfb_image(site: Operator) -> str:
    assert upload(site.http, BFB).status_code == 201
    site.create("images", image_doc("doca-3-0-bfb", VERSION, BFB))
    return "doca-3-0-bfb"


def rshim_of(fleet: SimRunning, serial: str) -> RshimDevice:
    assert fleet.rshim is not None
    return fleet.rshim.for_serial(serial)


def host_agent(fleet: SimRunning, host_id: str) -> Agent:
    return next(a for a in fleet.agents if isinstance(getattr(a, "device", None), SimHost) and a.device.id == host_id)  # type: ignore[attr-defined]


def paired_with_host(site: Operator, name: str) -> dict[str, Any]:
    """The DPU once its host agent paired it (PCI VPD) and that host's agent reported its serial."""
    dpu = site.wait_object("dpus", name, lambda d: bool(d["status"].get("host")), 30)
    site.wait_object("hosts", dpu["status"]["host"], lambda h: bool(h["status"].get("serialNumber")), 30)
    return dpu


def test_the_host_pushes_the_image_through_rshim_and_the_dpu_boots_it_without_its_bmc(
    site: Operator, fleet: SimRunning, bfb_image: str
) -> None:
    name, bmc = dpu_at(fleet, 0)
    device = rshim_of(fleet, bmc.dpu.serial)
    before = paired_with_host(site, name)
    assert before["status"].get("bmc") is None, "the control plane knows no BMC of this DPU"
    assert before["status"].get("partNumber") == bmc.dpu.profile.part_number, "its model: the VPD its host sees"
    bmc.crashed = True  # and the BMC answers nothing anyway: the host is the only way in
    try:
        set_spec(site, name, image=bfb_image, installPath="host-channel")
        dpu = site.wait_object("dpus", name, phase_is("Ready", "InstallFailed", "ConfigureFailed"), timeout=40)
    finally:
        bmc.crashed = False
    assert dpu["status"]["phase"] == "Ready", dpu["status"]["provisioning"]
    assert bmc.dpu.firmware["DPU_OS"] == VERSION
    assert f'IMAGE_VERSION="{VERSION}"' in os_release(bmc)
    assert device.resets == 1 and [p.ok for p in device.pushes] == [True], "one reset, one push"
    assert not bmc.tasks and not bmc.sessions, "nothing went through the BMC"
    section = dpu["status"]["agentInstall"]
    assert section["order"]["channel"] == "host-channel" and section["order"]["open"] is False
    assert section["order"]["hostSerial"] == next(h.serial for h in fleet.fleet.hosts if h.id == bmc.dpu.host_id)
    assert section["progress"]["state"] == "Booted" and VERSION in section["progress"]["message"]
    reasons = [e["reason"] for e in site.events("DPU", name)]
    assert "Configuring" in reasons and "Ready" in reasons
    assert not [r for r in reasons if r.endswith(("Timeout", "Failed", "Error"))], reasons
    log = device.misc_path.read_text()
    assert "INFO[BL2]: BFB verified" in log and "DPU is ready" in log


def test_a_corrupted_download_is_refused_by_the_host_agent_then_retry_recovers(
    site: Operator, fleet: SimRunning, api: RunningServer, repo: ImageRepository, bfb_image: str
) -> None:
    name, bmc = dpu_at(fleet, 2)
    device = rshim_of(fleet, bmc.dpu.serial)
    old = bmc.dpu.firmware["DPU_OS"]
    paired_with_host(site, name)
    with downloads_through(repo, api) as tamper:
        tamper.mode = "corrupt"  # every transfer has a flipped bit
        set_spec(site, name, image=bfb_image, installPath="host-channel")
        dpu = site.wait_object("dpus", name, phase_is("InstallFailed", "Ready"), timeout=30)
    progress = dpu["status"]["provisioning"]
    assert dpu["status"]["phase"] == "InstallFailed" and progress["reason"] == "DigestMismatch", progress
    assert "nothing pushed" in progress["message"]
    assert device.resets == 0 and not device.pushes, "the DPU was never touched"
    assert bmc.dpu.firmware["DPU_OS"] == old
    cli(api, "dpu", "retry", name)
    site.wait_object("dpus", name, phase_is("Ready"), timeout=30)
    assert bmc.dpu.firmware["DPU_OS"] == VERSION
    assert [p.ok for p in device.pushes] == [True]


def test_a_push_cut_short_is_refused_by_the_dpu_which_boots_its_previous_os(
    site: Operator, fleet: SimRunning, bfb_image: str
) -> None:
    name, bmc = dpu_at(fleet, 4)
    device = rshim_of(fleet, bmc.dpu.serial)
    old = bmc.dpu.firmware["DPU_OS"]
    paired_with_host(site, name)
    device.truncate_next_push = True  # the link drops half of the stream
    set_spec(site, name, image=bfb_image, installPath="host-channel")
    site.wait_object("dpus", name, phase_is("Ready", "InstallFailed"), timeout=40)
    first = device.pushes[0]
    assert not first.ok and first.reason == "Truncated", first
    events = [e for e in site.events("DPU", name) if e["reason"] == "BootImageRejected"]
    assert events and "attempt 1 of 2 failed" in events[0]["message"], events
    assert "Truncated" in events[0]["message"] and f"the DPU runs {old}" in events[0]["message"]
    assert any("ResourceErrorsDetected" in e.message_id for e in bmc.sel), "the BMC logged it too"
    assert site.get("dpus", name)["status"]["phase"] == "Ready", "the second attempt booted"  # type: ignore[index]
    assert bmc.dpu.firmware["DPU_OS"] == VERSION and device.resets == 2


def test_only_the_dpus_own_host_agent_is_answered_with_its_order(
    site: Operator, fleet: SimRunning, api: RunningServer, bfb_image: str
) -> None:
    name, bmc = dpu_at(fleet, 6)
    paired_with_host(site, name)
    assert api.server is not None
    driver = HostChannelInstall(api.server.store, "default", name, os_target="DPU_OS")
    # an order left open (no controller polls it): it stays visible to whoever may see it
    asyncio.run(driver.install(InstallRequest("", "DPU_OS", VERSION, sha(BFB))))
    own = host_agent(fleet, str(bmc.dpu.host_id))
    other = next(a for a in fleet.agents if a is not own and isinstance(getattr(a, "device", None), SimHost))
    dpu_agent = next(a for a in fleet.agents if a.config.role == "dpu" and a.config.serial == bmc.dpu.serial)
    assert fleet.agent_url and own.credentials and other.credentials and dpu_agent.credentials
    url = fleet.agent_url + "/agent/v1/install"
    with httpx.Client(verify=own.credentials.ssl_context()) as mtls:
        orders = mtls.get(url).json()["orders"]
        assert [o["dpu"] for o in orders] == [bmc.dpu.serial] and "sig=" in orders[0]["url"]
    with httpx.Client(verify=other.credentials.ssl_context()) as mtls:
        assert mtls.get(url).json() == {"orders": []}, "another host's agent never sees it"
        order_id = orders[0]["id"]
        resp = mtls.post(url + "/status", json={"id": order_id, "dpu": bmc.dpu.serial, "state": "Booted"})
        assert resp.status_code == 403, resp.text
    with httpx.Client(verify=dpu_agent.credentials.ssl_context()) as mtls:
        assert mtls.get(url).json() == {"order": None}, "the DPU's own agent does not carry out a host order"
    with httpx.Client(verify=False) as anonymous:
        assert anonymous.get(url).status_code == 401
