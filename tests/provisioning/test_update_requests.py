"""Given a discovered emulated fleet, when an update is requested (an UpdateRequest), then it passes the
one update policy whoever asked: accepted and followed to Succeeded when allowed; refused when a
DPUSet owns the DPU's image or the image is missing; waiting while the DPU's rollout is paused, and
going on when it resumes; audited; and nobody can claim through the API to be a host or an agent.
"""

from __future__ import annotations

from typing import Any

import pytest

from dpufleet.sim.bmc import SimBMC
from dpufleet.sim.runner import SimRunning

from .conftest import Operator, image_doc, upload

pytestmark = pytest.mark.timeout(90)

PAYLOAD = b"emulated DOCA 2.13 BFB payload\n" * 400
VERSION = "DOCA_2.13.0_BSP_4.13.0_Ubuntu_24.04-1.1"


def dpu_at(fleet: SimRunning, index: int) -> tuple[str, SimBMC]:
    return sorted((f"dpu-{b.dpu.serial.lower()}", b) for b in fleet.fleet.bmcs.values())[index]


def request(op: Operator, name: str, dpu: str, image: str, **spec: Any) -> dict[str, Any]:
    doc = {"kind": "UpdateRequest", "metadata": {"name": name}, "spec": {"dpu": dpu, "image": image, **spec}}
    return op.create("updaterequests", doc)


def phase(value: str) -> Any:
    return lambda r: (r.get("status") or {}).get("phase") == value


@pytest.fixture(scope="module")
def image(site: Operator) -> str:
    assert upload(site.http, PAYLOAD).status_code == 201
    site.create("images", image_doc("doca-2-13", VERSION, PAYLOAD))
    return "doca-2-13"


def test_an_allowed_request_updates_the_dpu_and_is_followed_to_succeeded(
    site: Operator, fleet: SimRunning, image: str
) -> None:
    name, bmc = dpu_at(fleet, 0)
    request(site, "upd-0", name, image, reason="CVE fix")
    done = site.wait_object("updaterequests", "upd-0", phase("Succeeded"), timeout=45)
    assert done["status"]["reason"] == "Updated" and done["status"]["generation"] >= 2
    assert bmc.dpu.firmware["DPU_OS"] == VERSION
    dpu = site.get("dpus", name)
    assert dpu is not None and dpu["spec"]["image"] == image and dpu["status"]["installedImage"] == image
    # Events are written in batches a moment after the status (runtime/events.py): wait for them
    events = site.wait_for(
        "the request's Events",
        lambda: [e["reason"] for e in site.events("UpdateRequest", "upd-0")],
        lambda reasons: "Accepted" in reasons and "Updated" in reasons,
        timeout=5,
    )
    assert "Accepted" in events and "Updated" in events
    audit = site.http.get("/audit/v1/records", params={"limit": 2000})
    assert audit.status_code == 200, audit.text
    decided = [r for r in audit.json()["items"] if r["action"] == "update-request:accepted" and r["name"] == "upd-0"]
    assert decided and decided[0]["source"] == "control-plane" and name in decided[0]["detail"]


def test_missing_image_and_a_dpuset_owning_the_image_are_refused(site: Operator, fleet: SimRunning, image: str) -> None:
    name, _ = dpu_at(fleet, 1)
    request(site, "upd-missing", name, "no-such-image")
    refused = site.wait_object("updaterequests", "upd-missing", phase("Refused"), timeout=15)
    assert refused["status"]["reason"] == "ImageNotFound"

    resp = site.http.patch(
        site.path("dpus", name),
        json={"metadata": {"labels": {"fleet": "owned"}}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert resp.status_code == 200, resp.text
    site.create(
        "dpusets",
        {
            "kind": "DPUSet",
            "metadata": {"name": "owner"},
            "spec": {
                "selector": {"matchLabels": {"fleet": "owned"}},
                "template": {"image": "other-image"},
                "paused": True,
            },
        },
    )
    request(site, "upd-owned", name, image)
    refused = site.wait_object("updaterequests", "upd-owned", phase("Refused"), timeout=15)
    assert refused["status"]["reason"] == "ManagedByDPUSet" and "owner" in refused["status"]["message"]
    dpu = site.get("dpus", name)
    assert dpu is not None and dpu["spec"].get("image") != image, "a refused request changes nothing"


def test_a_paused_rollout_makes_the_request_wait_until_it_resumes(
    site: Operator, fleet: SimRunning, image: str
) -> None:
    name, bmc = dpu_at(fleet, 2)
    resp = site.http.patch(
        site.path("dpus", name),
        json={"metadata": {"labels": {"fleet": "paused"}}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert resp.status_code == 200, resp.text
    site.create(
        "dpusets",
        {
            "kind": "DPUSet",
            "metadata": {"name": "held-back"},
            "spec": {"selector": {"matchLabels": {"fleet": "paused"}}, "template": {"image": image}, "paused": True},
        },
    )
    request(site, "upd-wait", name, image, reason="the host asks for it")
    waiting = site.wait_object("updaterequests", "upd-wait", phase("Waiting"), timeout=15)
    assert waiting["status"]["reason"] == "RolloutPaused"
    resp = site.http.patch(
        site.path("dpusets", "held-back"),
        json={"spec": {"paused": False}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert resp.status_code == 200, resp.text
    site.wait_object("updaterequests", "upd-wait", phase("Succeeded"), timeout=60)
    assert bmc.dpu.firmware["DPU_OS"] == VERSION


def test_the_api_does_not_let_a_caller_claim_to_be_a_host_or_an_agent(site: Operator, fleet: SimRunning) -> None:
    name, _ = dpu_at(fleet, 3)
    doc = {
        "kind": "UpdateRequest",
        "metadata": {"name": "upd-forged"},
        "spec": {"dpu": name, "image": "doca-2-13", "source": "host"},
    }
    resp = site.http.post(site.path("updaterequests"), json=doc)
    assert resp.status_code == 403, resp.text
    assert "spec.source" in resp.text
    assert site.get("updaterequests", "upd-forged") is None
