"""Given DPUs whose agents run and enrolled over mTLS, when a DPU's spec asks for the agent install path,
then its agent pulls its own order, downloads the image (resuming an interrupted transfer with Range),
verifies it, writes the inactive A/B slot and marks it for the next boot; the control plane reboots the
DPU through its BMC and the DPU comes up on the new slot. A corrupt new slot does not boot: the DPU falls
back to the previous slot and version, lands in InstallFailed (SlotBootFailed) saying why, and retry
recovers. A corrupted download is refused by the agent (DigestMismatch) and nothing is written.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from dpufleet.agent import slots
from dpufleet.agent.daemon import Agent
from dpufleet.images.repository import ImageRepository
from dpufleet.sim.runner import SimRunning
from provisioning.conftest import Operator
from provisioning.test_provisioning import cli
from support.server import RunningServer

from .conftest import VERSION_V3, downloads_through, dpu_at, os_release, osroot, phase_is, set_spec

pytestmark = pytest.mark.timeout(90)


def agent_of(fleet: SimRunning, serial: str) -> Agent:
    return next(a for a in fleet.agents if a.config.role == "dpu" and a.config.serial == serial)


def slots_reported(site: Operator, name: str) -> dict[str, Any]:
    dpu = site.wait_object("dpus", name, lambda d: bool((d["status"].get("agentInstall") or {}).get("slots")), 30)
    reported: dict[str, Any] = dpu["status"]["agentInstall"]["slots"]
    return reported


def test_the_agent_writes_the_inactive_slot_resuming_its_download_and_the_dpu_boots_it(
    site: Operator, fleet: SimRunning, api: RunningServer, repo: ImageRepository, image_v3: str
) -> None:
    name, bmc = dpu_at(fleet, 4)
    before = slots_reported(site, name)
    assert before["active"] == "a" and before["activeVersion"] == bmc.dpu.firmware["DPU_OS"]
    with downloads_through(repo, api) as tamper:
        tamper.mode = "cut"  # the first transfer is dropped halfway: the agent resumes it
        set_spec(site, name, image=image_v3, installPath="agent")
        dpu = site.wait_object("dpus", name, phase_is("Ready", "InstallFailed"), timeout=30)
    assert dpu["status"]["phase"] == "Ready", dpu["status"]["provisioning"]
    assert tamper.ranges and tamper.ranges[0].startswith("bytes="), "the second request resumed with Range"
    assert agent_of(fleet, bmc.dpu.serial).installer.range_requests >= 1  # type: ignore[union-attr]
    assert bmc.dpu.firmware["DPU_OS"] == VERSION_V3
    assert not bmc.tasks, "the BMC only reset the DPU"
    state = slots.read_state(osroot(bmc))
    assert state is not None and state["active"] == "b" and state["next"] == "b"
    meta = slots.read_meta(osroot(bmc), "b")
    assert meta is not None and meta["version"] == VERSION_V3
    assert f'IMAGE_VERSION="{VERSION_V3}"' in os_release(bmc)
    section = site.wait_object(
        "dpus", name, lambda d: (d["status"]["agentInstall"].get("slots") or {}).get("active") == "b", 10
    )["status"]["agentInstall"]
    assert section["slots"]["activeVersion"] == VERSION_V3, "the agent reports the active slot and version"
    assert section["progress"]["state"] == "Booted" and section["order"]["open"] is False


def test_a_new_slot_that_does_not_boot_falls_back_and_says_why_then_retry_recovers(
    site: Operator, fleet: SimRunning, api: RunningServer, image_v3: str
) -> None:
    name, bmc = dpu_at(fleet, 5)
    old = bmc.dpu.firmware["DPU_OS"]
    slots_reported(site, name)
    bmc.corrupt_next_slot = True  # a flash page of the slot goes bad before it boots
    set_spec(site, name, image=image_v3, installPath="agent")
    dpu = site.wait_object("dpus", name, phase_is("InstallFailed"), timeout=30)
    progress = dpu["status"]["provisioning"]
    assert progress["reason"] == "SlotBootFailed", progress
    assert "did not boot" in progress["message"] and "fell back to slot a" in progress["message"]
    assert f"the DPU runs slot a ({old})" in progress["message"]
    assert bmc.dpu.firmware["DPU_OS"] == old, "still the previous version"
    state = slots.read_state(osroot(bmc))
    assert state is not None and state["active"] == "a" and state["lastBoot"]["ok"] is False
    assert [b.ok for b in bmc.slot_boots].count(False) == 2, "two attempts, each fell back"
    bmc.corrupt_next_slot = False
    cli(api, "dpu", "retry", name)
    site.wait_object("dpus", name, phase_is("Ready"), timeout=30)
    assert bmc.dpu.firmware["DPU_OS"] == VERSION_V3
    assert (slots.read_state(osroot(bmc)) or {})["active"] == "b"


def test_a_corrupted_download_is_refused_by_the_agent_and_nothing_is_written(
    site: Operator, fleet: SimRunning, api: RunningServer, repo: ImageRepository, image_v3: str
) -> None:
    name, bmc = dpu_at(fleet, 6)
    old = bmc.dpu.firmware["DPU_OS"]
    slots_reported(site, name)
    with downloads_through(repo, api) as tamper:
        tamper.mode = "corrupt"
        set_spec(site, name, image=image_v3, installPath="agent")
        dpu = site.wait_object("dpus", name, phase_is("InstallFailed"), timeout=30)
    progress = dpu["status"]["provisioning"]
    assert progress["reason"] == "DigestMismatch", progress
    state = slots.read_state(osroot(bmc))
    assert state is not None and state["next"] == state["active"] == "a", "no slot was marked"
    assert slots.read_meta(osroot(bmc), "b") is None
    assert bmc.dpu.firmware["DPU_OS"] == old
    cli(api, "dpu", "retry", name)
    site.wait_object("dpus", name, phase_is("Ready"), timeout=30)
    assert bmc.dpu.firmware["DPU_OS"] == VERSION_V3


def test_an_agent_sees_only_its_own_dpus_order(site: Operator, fleet: SimRunning) -> None:
    _name, bmc = dpu_at(fleet, 7)
    agent = agent_of(fleet, bmc.dpu.serial)
    host_agent = next(a for a in fleet.agents if a.config.role == "host")
    assert fleet.agent_url and agent.credentials and host_agent.credentials
    with httpx.Client(verify=agent.credentials.ssl_context()) as mtls:  # the DPU's own fleet certificate
        resp = mtls.get(fleet.agent_url + "/agent/v1/install")
        assert resp.status_code == 200 and resp.json() == {"order": None}
    with httpx.Client(verify=host_agent.credentials.ssl_context()) as mtls:  # a host gets host-channel orders only
        assert mtls.get(fleet.agent_url + "/agent/v1/install").json() == {"orders": []}
    with httpx.Client(verify=False) as anonymous:  # no client certificate: nothing
        assert anonymous.get(fleet.agent_url + "/agent/v1/install").status_code == 401
