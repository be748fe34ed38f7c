"""Given DPUs provisioned with a signed image, when someone pushes firmware straight through a DPU's BMC
(Redfish UpdateService.SimpleUpdate, not through dpufleet), then the next crawl turns the change into
policy: versions a signed image brings become an UpdateRequest from the BMC that the one update policy
accepts, and the DPU's spec follows (audited); versions no image brings, or a request the policy refuses,
leave the DPU Drifted with a Warning and its spec unchanged; with the project's driftPolicy `revert`,
provisioning installs spec.image again, and the condition clears once the DPU runs it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from dpufleet.sim.bmc import SimBMC
from dpufleet.sim.runner import SimRunning
from security.test_signed_images import VENDOR, run_cli, signed_image
from support.server import RunningServer

from .conftest import Operator, condition

pytestmark = pytest.mark.timeout(90)

IMAGE_A, IMAGE_B = "bmc-a", "bmc-b"
VERSION_A, VERSION_B = f"{IMAGE_A}-v5", f"{IMAGE_B}-v6"  # signed_image: <name>-v<sequence>


def dpu_at(fleet: SimRunning, index: int) -> tuple[str, SimBMC]:
    return sorted((f"dpu-{b.dpu.serial.lower()}", b) for b in fleet.fleet.bmcs.values())[index]


def merge_patch(op: Operator, plural: str, name: str, body: dict[str, Any]) -> None:
    op.patch(plural, name, body)


def push(fleet: SimRunning, bmc: SimBMC, version: str) -> None:
    """What someone with the BMC's credentials does: SimpleUpdate of DPU_OS, then wait for it to run."""
    endpoint = fleet.servers.endpoints[bmc.id]
    target = urlsplit(endpoint).path + "/redfish/v1/UpdateService/FirmwareInventory/DPU_OS"
    resp = httpx.post(
        endpoint + "/redfish/v1/UpdateService/Actions/UpdateService.SimpleUpdate",
        json={"ImageURI": f"http://198.51.100.9/fw/DPU_OS-{version}.bin", "Targets": [target]},
        auth=(fleet.username, fleet.password),
        timeout=10,
    )
    assert resp.status_code in (200, 202), resp.text
    deadline = time.monotonic() + 10
    while bmc.dpu.firmware["DPU_OS"] != version and time.monotonic() < deadline:
        time.sleep(0.05)
    assert bmc.dpu.firmware["DPU_OS"] == version


def crawl(op: Operator, dpu: str) -> None:
    """Have the DPU's BMC crawled now (any change of the BMC object does), instead of in 5 minutes;
    return once the crawl, and what it reconciled, is written (the BMC's lastSeen is written last)."""
    bmc = next(b for b in op.objects("bmcs") if dpu in (b.get("status") or {}).get("dpus", []))
    name, seen = bmc["metadata"]["name"], bmc["status"].get("lastSeen")
    merge_patch(op, "bmcs", name, {"metadata": {"annotations": {"dpufleet.io/refresh": str(time.time())}}})
    op.wait_object("bmcs", name, lambda b: b["status"].get("lastSeen") != seen)


def drifted(dpu: dict[str, Any]) -> dict[str, Any] | None:
    return condition(dpu, "Drifted")


def drifted_after_push(op: Operator, fleet: SimRunning, name: str, bmc: SimBMC, version: str) -> dict[str, Any]:
    """Push `version` through the BMC, have it crawled; the DPU's Drifted condition once True."""
    push(fleet, bmc, version)
    crawl(op, name)
    dpu = op.wait_object("dpus", name, lambda d: (drifted(d) or {}).get("status") == "True")
    cond = drifted(dpu)
    assert cond is not None and cond["reason"] == "OutOfBandUpdate"
    return cond


def requests_for(op: Operator, dpu: str) -> list[dict[str, Any]]:
    return [r for r in op.objects("updaterequests") if r["spec"]["dpu"] == dpu]


def audited(op: Operator, action: str, name: str) -> list[dict[str, Any]]:
    resp = op.http.get("/audit/v1/records", params={"limit": 2000})
    assert resp.status_code == 200, resp.text
    return [r for r in resp.json()["items"] if r["action"] == action and r["name"] == name]


@pytest.fixture(scope="module")
def images(api: RunningServer, site: Operator, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """Two images signed by a trusted vendor: A (sequence 5) and the newer B (sequence 6), B approved."""
    tmp = tmp_path_factory.mktemp("signed")
    key = tmp / "vendor.key"
    run_cli(None, "image", "keygen", "--out", str(key))
    run_cli(api, "publisher", "trust", VENDOR, "--class", "vendor", "--public-key", f"{key}.pub")
    signed_image(site, tmp, IMAGE_A, b"signed os a\n" * 500, key, sequence=5)
    signed_image(site, tmp, IMAGE_B, b"signed os b\n" * 500, key, sequence=6)
    run_cli(api, "image", "approve", IMAGE_B)
    return IMAGE_A, IMAGE_B


@pytest.fixture(scope="module")
def provisioned(site: Operator, fleet: SimRunning, images: tuple[str, str]) -> list[str]:
    """Four DPUs Ready on image A, provisioned by dpufleet."""
    names = [dpu_at(fleet, i)[0] for i in range(4)]
    for name in names:
        merge_patch(site, "dpus", name, {"spec": {"image": IMAGE_A}})
    for name in names:
        dpu = site.wait_object(
            "dpus", name, lambda d: (d.get("status") or {}).get("installedImage") == IMAGE_A, timeout=30
        )
        assert dpu["status"]["phase"] == "Ready"
    return names


@pytest.fixture
def revert_policy(site: Operator) -> Iterator[None]:
    if site.get("projects", "default") is None:
        site.create("projects", {"kind": "Project", "metadata": {"name": "default"}, "spec": {}})
    merge_patch(site, "projects", "default", {"spec": {"driftPolicy": "revert"}})
    try:
        yield
    finally:
        merge_patch(site, "projects", "default", {"spec": {"driftPolicy": "report"}})


def test_a_push_to_a_signed_images_versions_is_adopted_through_the_update_policy(
    site: Operator, fleet: SimRunning, provisioned: list[str]
) -> None:
    name, bmc = dpu_at(fleet, 0)
    push(fleet, bmc, VERSION_B)
    crawl(site, name)
    filed = site.wait_for(
        "an UpdateRequest from the BMC, followed to Succeeded",
        lambda: requests_for(site, name),
        lambda rs: len(rs) == 1 and (rs[0].get("status") or {}).get("phase") in ("Succeeded", "Failed", "Refused"),
        timeout=45,
    )[0]
    assert filed["status"]["phase"] == "Succeeded", filed["status"]
    assert filed["spec"]["source"] == "bmc" and filed["spec"]["image"] == IMAGE_B
    assert f"DPU_OS {VERSION_A} -> {VERSION_B}" in filed["spec"]["reason"]
    dpu = site.get("dpus", name)
    assert dpu is not None
    assert dpu["spec"]["image"] == IMAGE_B and dpu["status"]["installedImage"] == IMAGE_B
    assert dpu["status"]["installedSequence"] == 6, "installed the verified way: the rollback floor moves"
    adopted = drifted(dpu)
    assert adopted is not None and (adopted["status"], adopted["reason"]) == ("False", "Adopted")
    reasons = {e["reason"] for e in site.events("DPU", name)}
    assert {"FirmwareChangedOutOfBand", "AdoptionRequested", "DriftResolved"} <= reasons
    decided = audited(site, "update-request:accepted", filed["metadata"]["name"])
    assert decided and decided[0]["source"] == "bmc" and IMAGE_B in decided[0]["detail"]

    crawl(site, name)  # a later crawl files nothing more
    assert len(requests_for(site, name)) == 1


def test_a_push_no_image_brings_leaves_the_dpu_drifted_and_its_spec_alone(
    site: Operator, fleet: SimRunning, provisioned: list[str]
) -> None:
    name, bmc = dpu_at(fleet, 1)
    cond = drifted_after_push(site, fleet, name, bmc, "hand-built-7")
    assert f"DPU_OS {VERSION_A} -> hand-built-7" in cond["message"] and "no image" in cond["message"]
    assert "driftPolicy report" in cond["message"]
    warnings = [e for e in site.events("DPU", name) if e["reason"] == "Drifted"]
    assert warnings and warnings[0]["type"] == "Warning"
    crawl(site, name)  # and a later crawl neither files a request nor writes anything to the DPU
    assert not requests_for(site, name)
    assert bmc.dpu.firmware["DPU_OS"] == "hand-built-7", "report changes nothing on the DPU"
    dpu = site.get("dpus", name)
    assert dpu is not None and dpu["spec"]["image"] == IMAGE_A and dpu["status"]["phase"] == "Ready"


def test_a_bmc_that_pushes_events_is_crawled_when_it_reports_an_update_without_waiting_for_its_period(
    site: Operator, fleet: SimRunning, images: tuple[str, str]
) -> None:
    name, bmc = dpu_at(fleet, 4)
    merge_patch(site, "dpus", name, {"spec": {"image": IMAGE_A}})
    site.wait_object("dpus", name, lambda d: (d.get("status") or {}).get("installedImage") == IMAGE_A, timeout=30)
    site.wait_for(
        "the BMC's event subscription",
        lambda: next(b for b in site.objects("bmcs") if name in (b.get("status") or {}).get("dpus", [])),
        lambda b: ((b.get("status") or {}).get("eventSubscription") or {}).get("state") == "Subscribed",
        timeout=30,
    )
    push(fleet, bmc, "hand-built-9")  # no crawl asked for: the BMC's UpdateSuccessful event has it crawled
    dpu = site.wait_object("dpus", name, lambda d: (drifted(d) or {}).get("status") == "True", timeout=20)
    assert "hand-built-9" in (drifted(dpu) or {}).get("message", "")


def test_a_push_the_update_policy_refuses_leaves_the_dpu_drifted(
    site: Operator, fleet: SimRunning, provisioned: list[str]
) -> None:
    name, bmc = dpu_at(fleet, 2)
    merge_patch(site, "dpus", name, {"metadata": {"labels": {"drift": "owned"}}})
    site.create(
        "dpusets",
        {
            "kind": "DPUSet",
            "metadata": {"name": "drift-owner"},
            "spec": {"selector": {"matchLabels": {"drift": "owned"}}, "template": {"image": IMAGE_A}},
        },
    )
    push(fleet, bmc, VERSION_B)
    crawl(site, name)
    dpu = site.wait_object("dpus", name, lambda d: "was refused" in ((drifted(d) or {}).get("message") or ""))
    cond = drifted(dpu)
    assert cond is not None and cond["status"] == "True" and "ManagedByDPUSet" in cond["message"]
    (request,) = requests_for(site, name)
    assert request["spec"]["source"] == "bmc" and request["status"]["phase"] == "Refused"
    assert audited(site, "update-request:refused", request["metadata"]["name"])
    assert dpu["spec"]["image"] == IMAGE_A


def test_with_drift_policy_revert_provisioning_installs_spec_image_again(
    site: Operator, fleet: SimRunning, provisioned: list[str], revert_policy: None
) -> None:
    name, bmc = dpu_at(fleet, 3)
    cond = drifted_after_push(site, fleet, name, bmc, "hand-built-8")
    assert f"driftPolicy revert: re-installing image {IMAGE_A}" in cond["message"]
    site.wait_for("the DPU to run image A again", lambda: bmc.dpu.firmware["DPU_OS"], lambda v: v == VERSION_A, 30)
    dpu = site.wait_object(
        "dpus",
        name,
        lambda d: d["status"].get("phase") == "Ready" and d["status"].get("installedImage") == IMAGE_A,
        timeout=30,
    )
    assert dpu["spec"]["image"] == IMAGE_A
    reverted = audited(site, "dpu:drift-revert", name)
    assert reverted and reverted[0]["source"] == "bmc" and reverted[0]["result"] == "Succeeded"
    crawl(site, name)
    dpu = site.wait_object("dpus", name, lambda d: (drifted(d) or {}).get("status") == "False")
    cleared = drifted(dpu)
    assert cleared is not None and cleared["reason"] == "Reconciled"
