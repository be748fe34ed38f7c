"""Given a discovered emulated fleet, when a DPU is updated to an image of several components, then
provisioning carries out the update plan (lifecycle/planner.py): installs in dependency order, one
DPU reboot after each run of disruptive components and none after live ones, and an impossible
request refused before anything is written.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from dpufleet.sim.bmc import SimBMC
from dpufleet.sim.runner import SimRunning

from .conftest import Operator, sha, upload

pytestmark = pytest.mark.timeout(90)


def dpu_at(fleet: SimRunning, index: int) -> tuple[str, SimBMC]:
    return sorted((f"dpu-{b.dpu.serial.lower()}", b) for b in fleet.fleet.bmcs.values())[index]


def component(name: str, type_: str, version: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": type_, "version": version, "sha256": sha(data), "size": len(data), **extra}


def image(op: Operator, name: str, *components: tuple[dict[str, Any], bytes]) -> str:
    for _, data in components:
        assert upload(op.http, data).status_code in (200, 201)
    spec = {"version": name, "components": [c for c, _ in components]}
    op.create("images", {"kind": "Image", "metadata": {"name": name}, "spec": spec})
    return name


def update(op: Operator, name: str, image_name: str) -> None:
    resp = op.http.patch(
        op.path("dpus", name),
        json={"spec": {"image": image_name}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert resp.status_code == 200, resp.text


def written(bmc: SimBMC) -> list[str]:
    """The firmware targets the BMC was asked to write, in order (from the SimpleUpdate file names)."""
    tasks = sorted(bmc.tasks.values(), key=lambda t: int(t.id))
    return [m.group(1) for t in tasks if (m := re.search(r"/([A-Za-z_]+)-[^/?]*\.bin", t.name))]


def transitions(op: Operator, name: str) -> list[str]:
    return [e["reason"] for e in op.events("DPU", name)]


def test_a_live_update_resets_nothing(site: Operator, fleet: SimRunning) -> None:
    name, bmc = dpu_at(fleet, 0)
    data = b"emulated BMC firmware BF-24.10-20\n" * 200
    live = image(
        site, "bmc-live", (component("BMC_Firmware", "bmc-firmware", "BF-24.10-20", data, impact="live"), data)
    )
    boots = bmc.dpu.boot_count
    update(site, name, live)
    dpu = site.wait_object("dpus", name, lambda d: (d.get("status") or {}).get("phase") == "Ready", timeout=30)
    assert bmc.dpu.firmware["BMC_Firmware"] == "BF-24.10-20"
    assert bmc.dpu.boot_count == boots, "a live update must not reboot the DPU"
    plan = dpu["status"]["provisioning"]["plan"]
    assert [s["action"] for s in plan] == ["install"]
    assert "Rebooting" not in transitions(site, name)
    assert (
        "no reset needed" in (dpu["status"]["provisioning"].get("message") or "") or dpu["status"]["phase"] == "Ready"
    )


def test_dependencies_order_the_installs_and_each_run_gets_one_reboot(site: Operator, fleet: SimRunning) -> None:
    name, bmc = dpu_at(fleet, 1)
    nic = b"emulated ConnectX-7 firmware 32.44.1000\n" * 200
    os_ = b"emulated DOCA 2.11 needing new NIC firmware\n" * 200
    uefi = b"emulated UEFI 4.10\n" * 200
    img = image(
        site,
        "doca-2-11-nic",
        # listed in the wrong order on purpose: the OS needs the new NIC firmware running
        (component("os", "os", "DOCA_2.11.0", os_, requires=[{"component": "DPU_NIC", "minVersion": "32.44"}]), os_),
        (component("DPU_NIC", "nic-firmware", "32.44.1000", nic), nic),
        (component("DPU_UEFI", "uefi", "4.10.0", uefi), uefi),
    )
    boots = bmc.dpu.boot_count
    update(site, name, img)
    dpu = site.wait_object("dpus", name, lambda d: (d.get("status") or {}).get("phase") == "Ready", timeout=60)
    plan = [(s["action"], s.get("component")) for s in dpu["status"]["provisioning"]["plan"]]
    assert plan == [
        ("install", "DPU_NIC"),
        ("install", "DPU_UEFI"),
        ("reboot-dpu", None),  # one reboot activates both, before the OS that needs the NIC running
        ("install", "os"),
        ("reboot-dpu", None),
    ]
    assert written(bmc) == ["DPU_NIC", "DPU_UEFI", "DPU_OS"]
    assert bmc.dpu.boot_count == boots + 2
    assert bmc.dpu.firmware["DPU_NIC"] == "32.44.1000" and bmc.dpu.firmware["DPU_OS"] == "DOCA_2.11.0"
    assert dpu["status"]["installedImage"] == img


def test_an_impossible_update_is_refused_before_anything_is_written(site: Operator, fleet: SimRunning) -> None:
    name, bmc = dpu_at(fleet, 2)
    os_ = b"emulated DOCA 3.1 needing NIC firmware 40\n" * 200
    img = image(
        site,
        "doca-3-1-impossible",
        (component("os", "os", "DOCA_3.1.0", os_, requires=[{"component": "DPU_NIC", "minVersion": "40.0"}]), os_),
    )
    before = len(bmc.tasks)
    update(site, name, img)
    dpu = site.wait_object(
        "dpus", name, lambda d: (d.get("status") or {}).get("phase") == "ValidationFailed", timeout=30
    )
    progress = dpu["status"]["provisioning"]
    assert progress["reason"] == "UpdateUnsatisfiable"
    assert "requires DPU_NIC >= 40.0" in progress["message"] and "32.43.1014" in progress["message"]
    assert len(bmc.tasks) == before, "nothing was written"


def test_a_component_that_needs_its_host_reset_resets_dpu_and_host_in_boot_order(
    site: Operator, fleet: SimRunning
) -> None:
    name, bmc = dpu_at(fleet, 3)
    host = next(h for h in fleet.fleet.hosts if any(d.serial == bmc.dpu.serial for d in h.dpus))
    if site.get("credentials", "host-bmc") is None:
        site.credential("host-bmc", fleet.username, fleet.password)
    if site.get("bmcs", f"{host.id}-hostbmc") is None:
        host_bmc = {"address": fleet.host_bmcs[host.id], "credentialsRef": "host-bmc"}
        site.create("bmcs", {"kind": "BMC", "metadata": {"name": f"{host.id}-hostbmc"}, "spec": host_bmc})
    power = {"bmcRef": f"{host.id}-hostbmc"}
    if site.get("hosts", host.id) is None:
        site.create("hosts", {"kind": "Host", "metadata": {"name": host.id}, "spec": power})
    else:
        resp = site.http.patch(
            site.path("hosts", host.id), json={"spec": power}, headers={"Content-Type": "application/merge-patch+json"}
        )
        assert resp.status_code == 200, resp.text
    resp = site.http.patch(
        site.path("dpus", name),
        json={"spec": {"hostRef": host.id}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert resp.status_code == 200, resp.text
    nic = b"emulated ConnectX-7 firmware needing PCIe re-enumeration\n" * 200
    img = image(
        site, "nic-host-reset", (component("DPU_NIC", "nic-firmware", "32.45.1000", nic, impact="host-reset"), nic)
    )
    host_boots, dpu_boots = host.boot_count, bmc.dpu.boot_count
    update(site, name, img)
    dpu = site.wait_object("dpus", name, lambda d: (d.get("status") or {}).get("phase") == "Ready", timeout=60)
    assert [s["action"] for s in dpu["status"]["provisioning"]["plan"]] == ["install", "reset-host"]
    actions = [
        a for a in site.items("poweractions") if (a["metadata"].get("labels") or {}).get("dpufleet.io/dpu") == name
    ]
    assert len(actions) == 1, actions
    action = actions[0]
    assert action["spec"]["mode"] == "both" and action["status"]["phase"] == "Succeeded"
    # dpu-first (the default boot order): the DPU is reset and runs again before the host is reset
    assert [s["action"] for s in action["status"]["steps"]] == ["reset-dpu", "wait-dpu", "reset-host", "wait-host"]
    assert host.boot_count == host_boots + 1 and bmc.dpu.boot_count >= dpu_boots + 1
    assert bmc.dpu.firmware["DPU_NIC"] == "32.45.1000"
