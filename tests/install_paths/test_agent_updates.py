"""Given DPUs and hosts whose agents enrolled over mTLS, when an agent pulls updates or a host or DPU agent
asks for one, then it is offered only approved images newer than what it runs, it may ask only for its
own DPU (a host: only for the DPUs of its own host), and what it asks is decided by the one update
policy (an UpdateRequest with the source its certificate proves) and carried out.
"""

from __future__ import annotations

import httpx
import pytest
from typer.testing import CliRunner

from dpufleet.agent.daemon import Agent
from dpufleet.main import app
from dpufleet.sim.runner import SimRunning
from provisioning.conftest import Operator
from support.server import RunningServer

from .conftest import VERSION_V3, dpu_at

pytestmark = pytest.mark.timeout(90)


def agent_of(fleet: SimRunning, role: str, serial: str | None = None) -> Agent:
    return next(a for a in fleet.agents if a.config.role == role and (serial is None or a.config.serial == serial))


def mtls(agent: Agent) -> httpx.Client:
    assert agent.credentials is not None
    return httpx.Client(verify=agent.credentials.ssl_context(), timeout=10)


def approve(api: RunningServer, image: str) -> None:
    result = CliRunner().invoke(app, ["--server", api.url, "--token", api.token, "image", "approve", image])
    assert result.exit_code == 0 and f"image/{image} approved" in result.output, result.output


def test_an_agent_is_offered_only_approved_images_and_its_request_is_carried_out(
    site: Operator, fleet: SimRunning, api: RunningServer, image_v3: str
) -> None:
    name, bmc = dpu_at(fleet, 0)
    agent = agent_of(fleet, "dpu", bmc.dpu.serial)
    assert fleet.agent_url
    with mtls(agent) as client:
        assert client.get(fleet.agent_url + "/agent/v1/updates").json() == {"image": None}, "nothing approved yet"
        approve(api, image_v3)
        offer = client.get(fleet.agent_url + "/agent/v1/updates").json()
        assert offer["image"] == image_v3
        resp = client.post(
            fleet.agent_url + "/agent/v1/update-requests", json={"image": offer["image"], "reason": "newer approved"}
        )
        assert resp.status_code == 202, resp.text
        filed = resp.json()
    assert filed["spec"] == {"dpu": name, "image": image_v3, "source": "agent", "reason": "newer approved"}
    done = site.wait_object(
        "updaterequests",
        filed["metadata"]["name"],
        lambda r: (r.get("status") or {}).get("phase") in ("Succeeded", "Failed", "Refused"),
        timeout=45,
    )
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert bmc.dpu.firmware["DPU_OS"] == VERSION_V3
    with mtls(agent) as client:  # it runs the newest approved image now: nothing more to offer
        assert client.get(fleet.agent_url + "/agent/v1/updates").json() == {"image": None}


def test_an_agent_asks_only_for_its_own_dpu_and_a_host_only_for_its_own_dpus(
    site: Operator, fleet: SimRunning, image_v3: str
) -> None:
    _, bmc = dpu_at(fleet, 1)
    _, other = next((n, b) for n, b in (dpu_at(fleet, i) for i in range(8)) if b.dpu.host_id != bmc.dpu.host_id)
    agent = agent_of(fleet, "dpu", bmc.dpu.serial)
    url = (fleet.agent_url or "") + "/agent/v1/update-requests"
    with mtls(agent) as client:
        resp = client.post(url, json={"image": image_v3, "dpu": other.dpu.serial})
        assert resp.status_code == 403 and "its own DPU" in resp.text
        assert client.post(url, json={"image": ""}).status_code == 422
    host = next(
        a
        for a in fleet.agents
        if a.config.role == "host"
        and any(h.id == bmc.dpu.host_id and h.serial == a.config.serial for h in fleet.fleet.hosts)
    )
    site.wait_object(  # the host agent has paired its DPUs (its PCI report)
        "dpus", f"dpu-{bmc.dpu.serial.lower()}", lambda d: bool((d.get("status") or {}).get("host")), timeout=20
    )
    with mtls(host) as client:
        refused = client.post(url, json={"image": image_v3, "dpu": other.dpu.serial})
        assert refused.status_code == 403 and "its own host" in refused.text
        assert client.post(url, json={"image": image_v3}).status_code == 422  # a host names the DPU
        accepted = client.post(url, json={"image": image_v3, "dpu": bmc.dpu.serial, "reason": "host maintenance"})
        assert accepted.status_code == 202, accepted.text
        assert accepted.json()["spec"]["source"] == "host"
    with httpx.Client(verify=False) as anonymous:
        assert anonymous.post(url, json={"image": image_v3}).status_code == 401
