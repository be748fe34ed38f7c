"""A DPU whose model no catalog entry names is adopted as generic and provisioned, never refused: its
image's components are planned onto the firmware slots its own BMC reports, by name, through the one
install path the Redfish standard defines (UpdateService); a component naming no reported slot is
refused for good, naming the slots there are."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dpufleet.sim.runner import SimRunning, sim_in_thread
from support.server import RunningServer

from .conftest import Operator, condition, discover, fleet_options, image_doc, upload

pytestmark = pytest.mark.timeout(90)

PAYLOAD = b"an OS image for a DPU no catalog lists\n" * 500


def acme_slot(slot: str) -> str:
    return slot if slot == "BMC_Firmware" else f"ACME_{slot}"  # the emulated BMC reads its own by that id


@pytest.fixture(scope="module")
def acme(api: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimRunning]:
    """One emulated card presenting itself as a model no catalog entry names (Acme DPU 9)."""
    with sim_in_thread(fleet_options(api, tmp_path_factory.mktemp("acme"), hosts=1)) as running:
        for dpu in running.fleet.dpus:
            profile = dpu.profile
            dpu.profile = profile.model_copy(
                update={
                    "vendor": "Acme",
                    "model": "Acme DPU 9",
                    "part_number": "AC-9000-A",
                    "part_numbers": ["AC-9*"],
                    "bmc": profile.bmc.model_copy(update={"manufacturer": "Acme", "model": "Acme BMC"}),
                    # its own firmware inventory ids, which no catalog rule knows either
                    "firmware": [fw.model_copy(update={"id": acme_slot(fw.id)}) for fw in profile.firmware],
                }
            )
            dpu.firmware = {acme_slot(slot): version for slot, version in dpu.firmware.items()}
        yield running


def test_a_generic_dpu_is_provisioned_onto_the_slots_its_bmc_reports(http, acme: SimRunning) -> None:
    op = Operator(http, "default")
    names = discover(op, acme)
    name = names[0]
    dpu = op.get("dpus", name)
    assert dpu["status"]["recognition"]["model"] == "generic", dpu["status"]["recognition"]
    assert condition(dpu, "ModelKnown")["reason"] == "GenericModel"
    slots = {f["id"] for f in dpu["status"]["firmware"]}
    assert "ACME_DPU_OS" in slots

    assert upload(http, PAYLOAD).status_code == 201
    good = image_doc("acme-os-2", "acme-os-2.0", PAYLOAD)
    good["spec"]["components"][0]["name"] = "ACME_DPU_OS"  # the slot the card's own inventory reports
    op.create("images", good)
    op.patch("dpus", name, {"spec": {"image": "acme-os-2"}})
    ready = op.wait_for(f"{name} Ready", lambda: op.get("dpus", name), lambda d: d["status"].get("phase") == "Ready",
                        timeout=60)  # fmt: skip
    sim_dpu = next(d for d in acme.fleet.dpus if f"dpu-{d.serial.lower()}" == name)
    assert sim_dpu.firmware["ACME_DPU_OS"] == "acme-os-2.0"
    assert ready["status"]["provisioning"]["installPath"] == "redfish-update"

    bad = image_doc("acme-os-3", "acme-os-3.0", PAYLOAD)
    bad["spec"]["components"][0]["name"] = "DPU_OS"  # no such slot on this card
    op.create("images", bad)
    op.patch("dpus", name, {"spec": {"image": "acme-os-3"}})
    failed = op.wait_for(f"{name} failed", lambda: op.get("dpus", name),
                         lambda d: str(d["status"].get("phase", "")).endswith("Failed"), timeout=30)  # fmt: skip
    message = failed["status"]["provisioning"].get("message") or str(failed["status"])
    assert "NoInstallTarget" in str(failed["status"]) and "ACME_DPU_OS" in message and "'DPU_OS' is not in" in message
