"""Given devices of several projects, every agent path writes in the project the device belongs to
(its DPU or Host, the DPUs a host holds, its enrollment token, or the Discovery expecting it), never in
"default"; a device nothing places is refused naming what is missing, and a serial is in one project only."""

from __future__ import annotations

from typing import Any

import httpx

from dpufleet.crypto import pki

from .conftest import Device, Fleet

BASE = "/apis/dpufleet.io/v1alpha1"
MERGE = {"Content-Type": "application/merge-patch+json"}


def objects(fleet: Fleet, project: str, plural: str) -> list[dict[str, Any]]:
    with fleet.admin() as http:
        resp = http.get(f"{BASE}/projects/{project}/{plural}")
    assert resp.status_code == 200, resp.text
    items: list[dict[str, Any]] = resp.json()["items"]
    return items


def names(fleet: Fleet, project: str, plural: str) -> list[str]:
    return sorted(o["metadata"]["name"] for o in objects(fleet, project, plural))


def create(fleet: Fleet, project: str, plural: str, doc: dict[str, Any]) -> httpx.Response:
    with fleet.admin() as http:
        return http.post(f"{BASE}/projects/{project}/{plural}", json=doc)


def dpu_doc(serial: str, **spec: Any) -> dict[str, Any]:
    return {"kind": "DPU", "metadata": {"name": f"dpu-{serial.lower()}"}, "spec": {"serialNumber": serial, **spec}}


def enroll(fleet: Fleet, serial: str, role: str = "dpu", project: str | None = None) -> Device:
    device = Device(serial, role)
    token = fleet.token(serial, role, project=project)
    resp = fleet.post("/agent/v1/enroll", device.enroll_body(token=token))
    assert resp.status_code == 200, resp.text
    device.cert_pem = resp.json()["certificate"]
    return device


def host_report(device: Device, hostname: str, *dpu_serials: str) -> dict[str, Any]:
    cards = [
        {
            "slot": f"{i}",
            "profile": "nvidia-bluefield-3",
            "vendor": "NVIDIA",
            "model": "BlueField-3",
            "serial_number": s,
            "functions": [],
        }
        for i, s in enumerate(dpu_serials)
    ]
    return device.report() | {"hostname": hostname, "inventory": {"hostname": hostname, "dpus": cards, "pci": []}}


def test_the_first_report_of_a_dpu_enrolled_for_a_project_creates_it_there(fleet: Fleet) -> None:
    device = enroll(fleet, "MTA001", project="tenant-a")
    resp = fleet.post("/agent/v1/report", device.report(), device)
    assert resp.status_code == 200, resp.text
    assert names(fleet, "tenant-a", "dpus") == ["dpu-mta001"]
    assert names(fleet, "default", "dpus") == []
    dpu = objects(fleet, "tenant-a", "dpus")[0]
    assert dpu["status"]["agent"]["version"] == "test"


def test_a_report_goes_to_the_project_that_holds_the_dpu_whatever_the_token_named(fleet: Fleet) -> None:
    assert create(fleet, "tenant-b", "dpus", dpu_doc("MTB001")).status_code == 201
    device = enroll(fleet, "MTB001", project=None)  # the token names no project: the DPU object does
    assert fleet.post("/agent/v1/report", device.report(), device).status_code == 200
    [dpu] = objects(fleet, "tenant-b", "dpus")
    assert dpu["status"]["agent"]["version"] == "test"
    assert names(fleet, "default", "dpus") == []


def test_a_device_idevid_enrolled_is_placed_by_the_discovery_that_expects_it(fleet: Fleet) -> None:
    fleet.expect("MTC001", project="tenant-c")
    device = enroll(fleet, "MTC001", project=None)
    assert fleet.post("/agent/v1/report", device.report(), device).status_code == 200
    assert names(fleet, "tenant-c", "dpus") == ["dpu-mtc001"]


def test_a_device_nothing_places_is_refused_naming_what_is_missing_and_nothing_is_created(fleet: Fleet) -> None:
    device = enroll(fleet, "MTX001", project=None)
    resp = fleet.post("/agent/v1/report", device.report(), device)
    assert resp.status_code == 403, resp.text
    body = resp.json()
    assert body["reason"] == "NoProject"
    assert "no project holds dpu/dpu-mtx001" in body["message"]
    assert "its enrollment token named no project" in body["message"]
    assert "no Discovery lists MTX001 in spec.expectedSerials" in body["message"]
    assert names(fleet, "default", "dpus") == []
    host = enroll(fleet, "SRVX", "host", project=None)
    resp = fleet.post("/agent/v1/report", host_report(host, "node-x"), host)
    assert resp.status_code == 403 and resp.json()["reason"] == "NoProject", resp.text
    assert names(fleet, "default", "hosts") == []


def test_a_host_agent_goes_to_the_project_of_the_dpus_in_its_slots(fleet: Fleet) -> None:
    assert create(fleet, "tenant-a", "dpus", dpu_doc("MTH001")).status_code == 201
    host = enroll(fleet, "SRVH1", "host", project=None)
    resp = fleet.post("/agent/v1/report", host_report(host, "node-h1", "MTH001"), host)
    assert resp.status_code == 200, resp.text
    [obj] = objects(fleet, "tenant-a", "hosts")
    assert obj["metadata"]["name"] == "host-node-h1" and obj["status"]["dpus"] == ["dpu-mth001"]
    [dpu] = objects(fleet, "tenant-a", "dpus")
    assert dpu["status"]["host"] == "host-node-h1"
    assert names(fleet, "default", "hosts") == [] and names(fleet, "default", "dpus") == []
    # its next reports find it by the serial it reports with
    assert fleet.post("/agent/v1/report", host_report(host, "node-h1", "MTH001"), host).status_code == 200
    assert names(fleet, "default", "hosts") == []


def test_a_host_never_pairs_with_a_dpu_another_project_holds(fleet: Fleet) -> None:
    assert create(fleet, "tenant-a", "dpus", dpu_doc("MTP001")).status_code == 201
    host = enroll(fleet, "SRVP1", "host", project="tenant-b")
    resp = fleet.post("/agent/v1/report", host_report(host, "node-p1", "MTP002"), host)
    assert resp.status_code == 200, resp.text  # no object knows it or its DPU yet: its token's project
    assert names(fleet, "tenant-b", "hosts") == ["host-node-p1"]
    assert names(fleet, "tenant-b", "dpus") == ["dpu-mtp002"]
    # a card of tenant-a's shows up in it: the Host stays in tenant-b and does not take that DPU over
    resp = fleet.post("/agent/v1/report", host_report(host, "node-p1", "MTP001", "MTP002"), host)
    assert resp.status_code == 200, resp.text
    assert objects(fleet, "tenant-b", "hosts")[0]["status"]["dpus"] == ["dpu-mtp002"]
    assert "host" not in objects(fleet, "tenant-a", "dpus")[0]["status"]
    assert names(fleet, "tenant-b", "dpus") == ["dpu-mtp002"]
    # a new host holding DPUs of two projects belongs to neither
    other = enroll(fleet, "SRVP2", "host", project=None)
    resp = fleet.post("/agent/v1/report", host_report(other, "node-p2", "MTP001", "MTP002"), other)
    assert resp.status_code == 409 and resp.json()["reason"] == "SerialConflict", resp.text
    assert "holds DPUs of projects 'tenant-a', 'tenant-b'" in resp.json()["message"]


def test_serials_are_fleet_unique_the_second_dpu_for_one_is_refused(fleet: Fleet) -> None:
    assert create(fleet, "tenant-a", "dpus", dpu_doc("MTU001")).status_code == 201
    resp = create(fleet, "tenant-b", "dpus", dpu_doc("MTU001"))
    assert resp.status_code == 409, resp.text
    body = resp.json()
    assert body["reason"] == "SerialConflict"
    assert "dpu/dpu-mtu001 already exists in project 'tenant-a'" in body["message"]
    assert names(fleet, "tenant-b", "dpus") == []
    # an enrollment token cannot place the device elsewhere either
    with fleet.admin() as http:
        resp = http.post("/enroll/v1/tokens", json={"serial": "MTU001", "project": "tenant-b"})
    assert resp.status_code == 409 and "is in project 'tenant-a', not 'tenant-b'" in resp.json()["message"]


def test_a_serial_two_projects_expect_is_refused_naming_both(fleet: Fleet) -> None:
    fleet.expect("MTD001", project="tenant-a")
    fleet.expect("MTD001", project="tenant-b")
    device = enroll(fleet, "MTD001", project=None)
    resp = fleet.post("/agent/v1/report", device.report(), device)
    assert resp.status_code == 409, resp.text
    assert resp.json()["reason"] == "SerialConflict"
    assert "Discoveries in projects 'tenant-a', 'tenant-b'" in resp.json()["message"]
    assert names(fleet, "tenant-a", "dpus") == [] and names(fleet, "tenant-b", "dpus") == []


def test_install_orders_and_their_progress_are_read_and_written_in_the_dpus_project(fleet: Fleet) -> None:
    assert create(fleet, "tenant-a", "dpus", dpu_doc("MTI001")).status_code == 201
    order = {"id": "o1", "open": True, "target": "DPU_OS", "version": "2", "sha256": "a" * 64, "fileName": "os.bin"}
    assert fleet.api.server is not None
    store = fleet.api.server.store
    store.patch("DPU", "dpu-mti001", {"status": {"agentInstall": {"order": order}}}, "tenant-a", status=True)
    device = enroll(fleet, "MTI001", project=None)
    with httpx.Client(verify=fleet.tls(device), timeout=10) as agent:
        got = agent.get(fleet.agent_url + "/agent/v1/install")
        # the repository signs the URL of a blob it does not hold: 503, but the order was found in tenant-a
        assert got.status_code in (200, 503), got.text
        progress = {"id": "o1", "state": "Downloading", "bytes": 10, "total": 100}
        resp = agent.post(fleet.agent_url + "/agent/v1/install/status", json=progress)
    assert resp.status_code == 200 and resp.json() == {"accepted": True}, resp.text
    dpu = store.get("DPU", "dpu-mti001", "tenant-a")
    assert dpu["status"]["agentInstall"]["progress"]["state"] == "Downloading"


def test_updates_offer_the_dpus_project_images_and_the_request_is_filed_there(fleet: Fleet) -> None:
    assert create(fleet, "tenant-a", "dpus", dpu_doc("MTV001")).status_code == 201
    sha = "c" * 64

    def image(name: str, version: str) -> dict[str, Any]:
        component = {"name": "os", "type": "os", "version": version, "sha256": sha}
        labels = {"dpufleet.io/approved": "true"}
        return {
            "kind": "Image",
            "metadata": {"name": name, "labels": labels},
            "spec": {"version": version, "components": [component]},
        }

    assert create(fleet, "tenant-a", "images", image("os-a-2", "2.0")).status_code == 201
    assert create(fleet, "default", "images", image("os-default-9", "9.0")).status_code == 201  # not tenant-a's
    device = enroll(fleet, "MTV001", project=None)
    with httpx.Client(verify=fleet.tls(device), timeout=10) as agent:
        offer = agent.get(fleet.agent_url + "/agent/v1/updates")
        assert offer.status_code == 200 and offer.json() == {"image": "os-a-2", "version": "2.0"}, offer.text
        asked = agent.post(fleet.agent_url + "/agent/v1/update-requests", json={"image": "os-a-2"})
    assert asked.status_code == 202, asked.text
    assert asked.json()["metadata"]["project"] == "tenant-a"
    assert [r["spec"]["dpu"] for r in objects(fleet, "tenant-a", "updaterequests")] == ["dpu-mtv001"]
    assert objects(fleet, "default", "updaterequests") == []


def test_an_unknown_dpu_asking_for_updates_or_installs_gets_a_clear_answer(fleet: Fleet) -> None:
    device = enroll(fleet, "MTN001", project="tenant-a")
    with httpx.Client(verify=fleet.tls(device), timeout=10) as agent:
        offer = agent.get(fleet.agent_url + "/agent/v1/updates")
        assert offer.status_code == 404
        assert "no DPU with serial MTN001 is known in any project" in offer.json()["message"]
        assert agent.get(fleet.agent_url + "/agent/v1/install").json() == {"order": None}
        resp = agent.post(fleet.agent_url + "/agent/v1/install/status", json={"id": "x", "state": "Pending"})
        assert resp.status_code == 404 and "reports inventory first" in resp.json()["message"]


def test_the_break_glass_report_on_the_api_port_writes_in_the_dpus_project(fleet: Fleet) -> None:
    assert create(fleet, "tenant-a", "dpus", dpu_doc("MTG001")).status_code == 201
    with fleet.admin() as http:
        resp = http.post("/agent/v1/report", json={"serial": "MTG001", "agentVersion": "break-glass"})
        assert resp.status_code == 200, resp.text
        refused = http.post("/agent/v1/report", json={"serial": "MTG999", "agentVersion": "break-glass"})
    assert refused.status_code == 403 and refused.json()["reason"] == "NoProject"
    [dpu] = objects(fleet, "tenant-a", "dpus")
    assert dpu["status"]["agent"]["version"] == "break-glass"
    assert names(fleet, "default", "dpus") == []


def test_the_token_project_is_listed_and_checked(fleet: Fleet) -> None:
    with fleet.admin() as http:
        bad = http.post("/enroll/v1/tokens", json={"serial": "MTL001", "project": "Not_A_Project"})
        assert bad.status_code == 422 and "project" in bad.text, bad.text
        made = http.post("/enroll/v1/tokens", json={"serial": "MTL001", "project": "tenant-a"})
        assert made.status_code == 201 and made.json()["project"] == "tenant-a"
        listed = http.get("/enroll/v1/tokens").json()["items"]
    assert [t["project"] for t in listed if t["identity"] == str(pki.AgentIdentity("dpu", "MTL001"))] == ["tenant-a"]
