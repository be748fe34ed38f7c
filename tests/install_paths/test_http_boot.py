"""Given a discovered emulated fleet, when a DPU's spec asks for the http-boot or virtual-media install
path, then the BMC boots a network installer that downloads the image from the repository, checks its
digest, writes it and clears the override, and the DPU reaches Ready running it; a corrupted download
makes the installer fail (BootProgress OEM, SEL), the DPU keeps its old OS, lands in InstallFailed with
reason DigestMismatch, and `dpufleet dpu retry` recovers.
"""

from __future__ import annotations

import pytest

from dpufleet.images.repository import ImageRepository
from dpufleet.sim.runner import SimRunning
from provisioning.conftest import Operator
from provisioning.test_provisioning import cli
from support.server import RunningServer

from .conftest import VERSION_V3, downloads_through, dpu_at, os_release, phase_is, set_spec

pytestmark = pytest.mark.timeout(90)


def test_http_boot_installs_the_image_and_the_dpu_reaches_ready(
    site: Operator, fleet: SimRunning, image_v3: str
) -> None:
    name, bmc = dpu_at(fleet, 0)
    old = bmc.dpu.firmware["DPU_OS"]
    set_spec(site, name, image=image_v3, installPath="http-boot")
    dpu = site.wait_object("dpus", name, phase_is("Ready"), timeout=30)
    assert dpu["status"]["provisioning"]["installPath"] == "http-boot"
    assert bmc.dpu.firmware["DPU_OS"] == VERSION_V3 != old
    assert {f["id"]: f["version"] for f in dpu["status"]["firmware"]}["DPU_OS"] == VERSION_V3
    assert f'IMAGE_VERSION="{VERSION_V3}"' in os_release(bmc), "the OS root shows it, so the agent reports it"
    assert not bmc.tasks, "no SimpleUpdate: the installer pulled the image itself"
    assert bmc.dpu.boot_override_enabled == "Disabled" and bmc.dpu.boot_override_target == "None"
    assert bmc.dpu.http_boot_uri and "/images/v1/blobs/sha256/" in bmc.dpu.http_boot_uri
    assert not bmc.installer_failures
    messages = [e.message for e in bmc.sel]
    assert any("UpdateSuccessful" in e.message_id and "DPU_OS" in e.message for e in bmc.sel), messages


def test_a_corrupted_download_fails_the_installer_keeps_the_old_os_and_retry_recovers(
    site: Operator, fleet: SimRunning, api: RunningServer, repo: ImageRepository, image_v3: str
) -> None:
    name, bmc = dpu_at(fleet, 1)
    old = bmc.dpu.firmware["DPU_OS"]
    with downloads_through(repo, api) as tamper:
        tamper.mode = "corrupt"
        set_spec(site, name, image=image_v3, installPath="http-boot")
        dpu = site.wait_object("dpus", name, phase_is("InstallFailed"), timeout=30)
    progress = dpu["status"]["provisioning"]
    assert progress["reason"] == "DigestMismatch", progress
    assert "InstallerFailed: DigestMismatch" in progress["message"]
    assert "sig=" not in progress["message"], "the signed URL's signature never shows"
    assert bmc.dpu.firmware["DPU_OS"] == old, "the system fell back to the OS it had"
    assert len(bmc.installer_failures) == 2, "tried twice (max_attempts=2)"
    assert any("ApplyFailed" in e.message_id for e in bmc.sel)
    site.wait_for("the old OS to boot", lambda: bmc.dpu.boot_progress, lambda s: s == "OSRunning", timeout=5)
    assert bmc.dpu.firmware["DPU_OS"] == old and bmc.dpu.boot_override_target == "None"
    cli(api, "dpu", "retry", name)
    site.wait_object("dpus", name, phase_is("Ready"), timeout=30)
    assert bmc.dpu.firmware["DPU_OS"] == VERSION_V3


def test_virtual_media_installs_the_image_and_ejects_it(site: Operator, fleet: SimRunning, image_v3: str) -> None:
    name, bmc = dpu_at(fleet, 2)
    set_spec(site, name, image=image_v3, installPath="virtual-media")
    dpu = site.wait_object("dpus", name, phase_is("Ready"), timeout=30)
    assert dpu["status"]["provisioning"]["installPath"] == "virtual-media"
    assert bmc.dpu.firmware["DPU_OS"] == VERSION_V3
    assert not bmc.dpu.virtual_media_inserted and bmc.dpu.virtual_media_image is None, "ejected after the install"
    assert not bmc.tasks


def test_a_path_the_model_does_not_declare_is_refused(site: Operator, fleet: SimRunning, image_v3: str) -> None:
    name, _bmc = dpu_at(fleet, 3)
    set_spec(site, name, image=image_v3, installPath="pxe")  # BlueField-3 declares every path dpufleet has but this
    dpu = site.wait_object("dpus", name, phase_is("ValidationFailed"), timeout=30)
    assert dpu["status"]["provisioning"]["reason"] == "InstallPathUnsupported"
    assert "http-boot" in dpu["status"]["provisioning"]["message"]
    set_spec(site, name, installPath=None)  # back to the profile's first path
