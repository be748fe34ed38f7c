"""Given a DPU expected by a Discovery of project tenant-a, zero-touch bootstrap reads its DPU object and
image in tenant-a, issues an enrollment token for tenant-a and records its progress there; a DPU whose
object is in a project that does not expect it is refused, saying so."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx
import pytest

from dpufleet.agent.bootstrap import signed_request
from dpufleet.sim.fleet import SimDPU, build_fleet
from dpufleet.sim.identity import IDEVID_CERT, IDEVID_KEY, SimIdentities

from .conftest import Fleet

BASE = "/apis/dpufleet.io/v1alpha1"
OS = b"an OS image for tenant-a\n" * 100


@pytest.fixture
def dpu(fleet: Fleet, tmp_path: Path) -> SimDPU:
    sim = build_fleet(1, 1, ["nvidia-bluefield-3"], 11, tmp_path / "sim")
    identities = SimIdentities()
    identities.provision(sim, tmp_path / "sim")
    for ca in identities.cas.values():
        fleet.trust(ca)
    return sim.dpus[0]


def ask(fleet: Fleet, dpu: SimDPU, purpose: str, **fields: Any) -> httpx.Response:
    assert dpu.osroot is not None
    body = signed_request(dpu.serial, purpose, dpu.osroot / IDEVID_CERT, dpu.osroot / IDEVID_KEY, **fields)
    body["partNumber"] = dpu.profile.part_number
    return httpx.post(fleet.api.url + f"/bootstrap/v1/{purpose}", json=body, timeout=10)


def create(fleet: Fleet, project: str, plural: str, doc: dict[str, Any]) -> None:
    with fleet.admin() as http:
        resp = http.post(f"{BASE}/projects/{project}/{plural}", json=doc)
    assert resp.status_code == 201, resp.text


def image_in(fleet: Fleet, project: str, name: str, version: str) -> None:
    digest = hashlib.sha256(OS).hexdigest()
    with fleet.admin() as http:
        assert http.put(f"/images/v1/blobs/sha256/{digest}", content=OS).status_code == 201
    component = {"name": "os", "type": "os", "version": version, "sha256": digest, "size": len(OS)}
    create(
        fleet,
        project,
        "images",
        {"kind": "Image", "metadata": {"name": name}, "spec": {"version": version, "components": [component]}},
    )


def test_bootstrap_serves_and_records_an_expected_dpu_in_its_own_project(fleet: Fleet, dpu: SimDPU) -> None:
    name = f"dpu-{dpu.serial.lower()}"
    fleet.expect(dpu.serial, project="tenant-a")
    resp = ask(fleet, dpu, "onboarding")
    assert resp.status_code == 404, resp.text
    assert f"create {'dpu/' + name} with spec.image in project 'tenant-a'" in resp.json()["message"]
    image_in(fleet, "tenant-a", "os-a", "A-1.0")
    create(fleet, "tenant-a", "dpus", {"kind": "DPU", "metadata": {"name": name}, "spec": {"image": "os-a"}})
    resp = ask(fleet, dpu, "onboarding")
    assert resp.status_code == 200, resp.text
    info = resp.json()["onboarding"]
    assert info["dpu"] == name and info["image"]["name"] == "os-a" and info["image"]["version"] == "A-1.0"
    assert fleet.api.server is not None
    tokens = [t for t in fleet.api.server.enrollment.tokens.list() if t.identity == f"dpu/{dpu.serial}"]
    assert [t.project for t in tokens] == ["tenant-a"], "the token it enrolls with places it in tenant-a"
    resp = ask(fleet, dpu, "progress", stage="Complete", version="A-1.0", message="booted")
    assert resp.status_code == 200 and resp.json() == {"recorded": "Complete"}, resp.text
    with fleet.admin() as http:
        got = http.get(f"{BASE}/projects/tenant-a/dpus/{name}").json()
        assert http.get(f"{BASE}/projects/default/dpus").json()["items"] == []
    assert got["status"]["bootstrap"]["stage"] == "Complete"
    assert got["status"]["installedImage"] == "os-a" and got["status"]["phase"] == "Ready"


def test_a_dpu_object_in_a_project_that_does_not_expect_it_is_refused(fleet: Fleet, dpu: SimDPU) -> None:
    name = f"dpu-{dpu.serial.lower()}"
    fleet.expect(dpu.serial, project="tenant-a")
    create(fleet, "tenant-b", "dpus", {"kind": "DPU", "metadata": {"name": name}, "spec": {"image": "os-b"}})
    resp = ask(fleet, dpu, "onboarding")
    assert resp.status_code == 403, resp.text
    message = resp.json()["message"]
    assert f"is dpu/{name} in project 'tenant-b', but only Discoveries of project 'tenant-a' expect it" in message
