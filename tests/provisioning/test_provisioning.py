"""Given a discovered emulated fleet and images in the repository, when a DPU's spec names an image,
then it walks to Ready running that image; when a step fails it lands in the right failed phase with
the right reason, and `dpufleet dpu retry` brings it to Ready; nothing is ever flashed twice at once.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from dpufleet.main import app
from dpufleet.sim.bmc import BmcTimings, SimBMC
from dpufleet.sim.runner import SimRunning
from support.server import RunningServer

from .conftest import Operator, condition, file_server, image_doc, is_true, sha, upload

pytestmark = pytest.mark.timeout(90)

OS_V2 = b"emulated DOCA 2.10 BFB payload\n" * 1000
VERSION_V2 = "DOCA_2.10.0_BSP_4.10.0_Ubuntu_22.04-7.1"


def dpus(fleet: SimRunning) -> list[tuple[str, SimBMC]]:
    return sorted((f"dpu-{b.dpu.serial.lower()}", b) for b in fleet.fleet.bmcs.values())


def dpu_at(fleet: SimRunning, index: int) -> tuple[str, SimBMC]:
    return dpus(fleet)[index]


def set_spec(op: Operator, name: str, **spec: Any) -> None:
    resp = op.http.patch(
        op.path("dpus", name), json={"spec": spec}, headers={"Content-Type": "application/merge-patch+json"}
    )
    assert resp.status_code == 200, resp.text


def phase_is(*phases: str) -> Any:
    return lambda d: (d.get("status") or {}).get("phase") in phases


def cli(api: RunningServer, *args: str) -> str:
    result = CliRunner().invoke(app, ["--server", api.url, "--token", api.token, *args])
    assert result.exit_code == 0, result.output
    return result.output


def os_version(bmc: SimBMC) -> str:
    return bmc.dpu.firmware["DPU_OS"]


@pytest.fixture(scope="module")
def image_v2(site: Operator) -> str:
    assert upload(site.http, OS_V2).status_code == 201
    site.create("images", image_doc("doca-2-10", VERSION_V2, OS_V2))
    return "doca-2-10"


def test_a_dpu_reaches_ready_running_the_desired_image(site: Operator, fleet: SimRunning, image_v2: str) -> None:
    name, bmc = dpu_at(fleet, 0)
    set_spec(site, name, image=image_v2)
    dpu = site.wait_object("dpus", name, phase_is("Ready"), timeout=30)
    status = dpu["status"]
    assert status["installedImage"] == image_v2
    assert os_version(bmc) == VERSION_V2
    assert {f["id"]: f["version"] for f in status["firmware"]}["DPU_OS"] == VERSION_V2
    for step in ("Validated", "HostPrepared", "ImageStaged", "Installed", "Rebooted", "Configured", "Ready"):
        assert is_true(dpu, step), f"{step}: {condition(dpu, step)}"
    assert len(bmc.tasks) == 1, "exactly one SimpleUpdate"
    reasons = [e["reason"] for e in site.events("DPU", name)]
    for phase in ("Available", "PreparingHost", "StagingImage", "Installing", "Rebooting", "Configuring", "Ready"):
        assert phase in reasons, f"no event for the transition to {phase}: {reasons}"


def test_a_bmc_task_error_lands_in_install_failed_and_recovers_through_retry(
    site: Operator, fleet: SimRunning, api: RunningServer, image_v2: str
) -> None:
    name, bmc = dpu_at(fleet, 1)
    bmc.fail_updates = True
    set_spec(site, name, image=image_v2)
    dpu = site.wait_object("dpus", name, phase_is("InstallFailed"), timeout=30)
    assert dpu["status"]["provisioning"]["reason"] == "InstallTaskFailed"
    assert condition(dpu, "Ready")["reason"] == "InstallTaskFailed"  # type: ignore[index]
    assert len(bmc.tasks) == 2, "tried twice (max_attempts=2), then waits for the operator"
    bmc.fail_updates = False
    out = cli(api, "dpu", "retry", name)
    assert f"dpu/{name}" in out
    site.wait_object("dpus", name, phase_is("Ready"), timeout=30)
    assert os_version(bmc) == VERSION_V2


def test_a_reboot_that_never_completes_times_out_into_reboot_failed(
    site: Operator, fleet: SimRunning, api: RunningServer, image_v2: str
) -> None:
    name, bmc = dpu_at(fleet, 2)
    normal = bmc.timings
    bmc.timings = BmcTimings(
        power_on_seconds=100_000, update_seconds=normal.update_seconds, time_scale=normal.time_scale
    )
    set_spec(site, name, image=image_v2)
    dpu = site.wait_object("dpus", name, phase_is("RebootFailed"), timeout=30)
    assert dpu["status"]["provisioning"]["reason"] == "RebootTimeout"
    assert len(bmc.tasks) == 1, "a reboot retry resets again; it never flashes again"
    bmc.timings = normal
    cli(api, "dpu", "retry", name)
    site.wait_object("dpus", name, phase_is("Ready"), timeout=30)
    assert os_version(bmc) == VERSION_V2 and len(bmc.tasks) == 1


def test_content_whose_digest_does_not_match_is_never_used(
    site: Operator, fleet: SimRunning, api: RunningServer
) -> None:
    name, bmc = dpu_at(fleet, 3)
    good = b"emulated DOCA 2.11 payload\n" * 500
    assert upload(site.http, good).status_code == 201
    repo_path = api.data_dir / "images" / "blobs" / "sha256" / sha(good)[:2] / sha(good)
    repo_path.write_bytes(good[:-1] + b"X")  # the stored blob rots on disk
    site.create("images", image_doc("doca-2-11", "DOCA_2.11.0", good))
    set_spec(site, name, image="doca-2-11")
    dpu = site.wait_object("dpus", name, phase_is("StagingImageFailed"), timeout=30)
    assert dpu["status"]["provisioning"]["reason"] == "DigestMismatch"
    assert len(bmc.tasks) == 0, "the BMC was never told to fetch it"
    assert not repo_path.exists(), "the bad blob is removed so good content can replace it"
    assert upload(site.http, good).status_code == 201
    cli(api, "dpu", "retry", name)
    site.wait_object("dpus", name, phase_is("Ready"), timeout=30)
    assert os_version(bmc) == "DOCA_2.11.0"


def test_a_mirrored_url_with_the_wrong_content_is_refused(
    site: Operator, fleet: SimRunning, api: RunningServer
) -> None:
    name, bmc = dpu_at(fleet, 4)
    declared = b"the real 2.12 image\n" * 100
    with file_server({"/bfb/doca-2.12.bfb": b"tampered bytes"}) as (url, files):
        site.create("images", image_doc("doca-2-12", "DOCA_2.12.0", declared, url=f"{url}/bfb/doca-2.12.bfb"))
        set_spec(site, name, image="doca-2-12")
        dpu = site.wait_object("dpus", name, phase_is("StagingImageFailed"), timeout=30)
        assert dpu["status"]["provisioning"]["reason"] == "DigestMismatch"
        assert len(bmc.tasks) == 0
        files["/bfb/doca-2.12.bfb"] = declared
        cli(api, "dpu", "retry", name)
        site.wait_object("dpus", name, phase_is("Ready"), timeout=30)
        assert os_version(bmc) == "DOCA_2.12.0"


def test_a_flavor_that_does_not_fit_is_refused_naming_the_fields(
    site: Operator, fleet: SimRunning, image_v2: str
) -> None:
    name, bmc = dpu_at(fleet, 5)
    site.create(
        "dpuflavors",
        {
            "kind": "DPUFlavor",
            "metadata": {"name": "too-big"},
            "spec": {
                "hugepages": [{"pageSize": "1Gi", "count": 64}],
                "firmwareParameters": {"NUM_OF_VFS": 500, "TURBO_MODE": True},
                "reservedResources": {"cpus": 32},
            },
        },
    )
    set_spec(site, name, image=image_v2, flavor="too-big")
    dpu = site.wait_object("dpus", name, phase_is("ValidationFailed"), timeout=30)
    message = dpu["status"]["provisioning"]["message"]
    assert dpu["status"]["provisioning"]["reason"] == "FlavorDoesNotFit"
    for field in (
        "spec.hugepages[0].count",
        "spec.firmwareParameters.NUM_OF_VFS",
        "spec.firmwareParameters.TURBO_MODE",
        "spec.reservedResources.cpus",
    ):
        assert field in message, f"{field} not named in: {message}"
    assert "at most 127" in message
    assert len(bmc.tasks) == 0, "never applied"
    assert dpu["status"].get("installedImage") is None


def test_deleting_an_image_in_use_is_refused_naming_its_users(site: Operator, image_v2: str, fleet: SimRunning) -> None:
    name, _ = dpu_at(fleet, 0)
    resp = site.http.delete(site.path("images", image_v2))
    assert resp.status_code == 409, resp.text
    body = resp.json()
    assert body["reason"] == "InUse"
    assert f"dpu/{name}" in body["details"]["users"] and f"dpu/{name}" in body["message"]
    assert site.get("images", image_v2) is not None
    site.create("images", image_doc("unused", "1", b"x"))
    assert site.http.delete(site.path("images", "unused")).status_code == 200


def test_downloads_are_signed_and_resumable(site: Operator, api: RunningServer) -> None:
    data = bytes(range(256)) * 64
    digest = sha(data)
    assert upload(site.http, data).status_code == 201
    signed = site.http.post(f"/images/v1/blobs/sha256/{digest}/url", params={"filename": "DPU_OS-1.bin"}).json()
    with httpx.Client(base_url=api.url) as bmc:  # no bearer token: the signature is the credential
        full = bmc.get(signed["path"])
        assert full.status_code == 200 and full.content == data
        part = bmc.get(signed["path"], headers={"Range": "bytes=1000-1999"})
        assert part.status_code == 206 and part.content == data[1000:2000]
        assert part.headers["content-range"] == f"bytes 1000-1999/{len(data)}"
        rest = bmc.get(signed["path"], headers={"Range": "bytes=16000-"})
        assert rest.status_code == 206 and rest.content == data[16000:]
        assert bmc.get(signed["path"].replace("DPU_OS-1", "DPU_OS-2")).status_code == 401
        assert bmc.get(signed["path"].split("?")[0]).status_code == 401


def test_an_upload_whose_digest_does_not_match_is_not_kept(site: Operator, api: RunningServer) -> None:
    data = b"some content"
    wrong = sha(b"other content")
    resp = upload(site.http, data, digest=wrong)
    assert resp.status_code == 422 and resp.json()["details"]["cause"] == "DigestMismatch"
    assert site.http.head(f"/images/v1/blobs/sha256/{wrong}").status_code == 404


def test_dpus_without_an_image_are_left_as_they_are(site: Operator, fleet: SimRunning) -> None:
    name, bmc = dpu_at(fleet, 7)
    dpu = site.get("dpus", name)
    assert dpu is not None
    assert dpu["status"].get("provisioning") is None and dpu["status"]["phase"] == "Discovered"
    assert len(bmc.tasks) == 0
