"""Discovery against Redfish trees this project did not write, served by a real HTTP server.

Given DMTF's published SmartNIC mockup (a host server's BMC managing the host and its DPU) and a
BlueField-3 BMC tree of the BF-23.10 era (its Arm system reported as "Physical", its identity on
a Card chassis, padded strings, zero figures, a firmware version that is no version), when an
operator points a Discovery at each, then the DPU is found with the evidence that says so, the
host is a Host paired with it and never a DPU, and nothing the device got wrong is taken as fact.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from dpufleet.cli.describe_dpu import dpu_sections

from .conftest import Operator, TinyService, condition, is_true, serve_routes, tree_routes

pytestmark = pytest.mark.timeout(60)

USER, PASSWORD = "root", "Tree-Bmc-Pw-3"  # the trees' BMCs answer 401 to anything else
BF3_SERIAL, BF3_PART = "MT2245X00123", "900-9D3B6-00CV-AA0"
DMTF_DPU_SERIAL, DMTF_HOST_SERIAL = "637XR7568R4", "437XR1138R2"


@pytest.fixture(scope="module")
def trees() -> Iterator[dict[str, TinyService]]:
    services = {
        tree: serve_routes(tree_routes(tree), basic_auth=(USER, PASSWORD))
        for tree in ("bluefield3-bf2310", "dmtf-public-smartnic")
    }
    yield services
    for service in services.values():
        service.stop()


@pytest.fixture(scope="module")
def site(http: httpx.Client, trees: dict[str, TinyService]) -> Operator:
    op = Operator(http, "default")
    op.credential("tree-bmcs", USER, PASSWORD)
    op.discovery("trees", endpoints=[s.url for s in trees.values()], credentialsRef="tree-bmcs", intervalSeconds=600)
    op.wait_for(
        "both BMCs settled",
        lambda: op.objects("bmcs"),
        lambda bmcs: len(bmcs) == 2 and all(condition(b, "Ready") for b in bmcs),
        timeout=30,
    )
    return op


def bmc_of(site: Operator, service: TinyService) -> dict[str, Any]:
    return next(b for b in site.objects("bmcs") if b["spec"]["address"] == service.url)


def dpu(site: Operator, serial: str) -> dict[str, Any]:
    return site.wait_object("dpus", f"dpu-{serial.lower()}", lambda d: bool(d["status"].get("recognition")))


# --- a BlueField-3 BMC of the BF-23.10 era --------------------------------------------------------------


def test_a_physical_system_with_a_bluefield_card_chassis_is_a_dpu_with_the_chassis_identity(
    site: Operator, trees: dict[str, TinyService]
) -> None:
    bmc = bmc_of(site, trees["bluefield3-bf2310"])
    assert bmc["status"]["phase"] == "Managed" and is_true(bmc, "Inventoried")
    assert bmc["status"]["serialNumbers"] == [BF3_SERIAL]
    status = dpu(site, BF3_SERIAL)["status"]
    # trimmed, from the Card chassis (the system reports no Manufacturer, Model or serial)
    assert (status["vendor"], status["model"], status["partNumber"], status["serialNumber"]) == (
        "Nvidia",
        "BlueField-3 SmartNIC Main Card",
        BF3_PART,
        BF3_SERIAL,
    )
    recognition = status["recognition"]
    assert (recognition["rule"], recognition["model"], recognition["matchedBy"]) == (
        "card-chassis",
        "nvidia-bluefield-3",
        "part-number",
    )
    kinds = {(e["kind"], e["value"]) for e in recognition["evidence"]}
    assert ("chassis-part-number", BF3_PART) in kinds
    assert ("manager", "OpenBmc BF-23.10-5") in kinds


def test_zero_figures_are_unknown_and_every_firmware_component_is_kept(
    site: Operator, trees: dict[str, TinyService]
) -> None:
    status = dpu(site, BF3_SERIAL)["status"]
    assert set(status["recognition"]["unknown"]) == {
        "ProcessorSummary.Count=0",
        "ProcessorSummary.CoreCount=0",
        "MemorySummary.TotalSystemMemoryGiB=0",
    }
    caps = status["capabilities"]
    assert caps["cpu"]["cores"] != 0 and caps["memoryGiB"] != 0  # the catalog's figures, never the zeros
    firmware = {f["id"]: f for f in status["firmware"]}
    assert set(firmware) == {
        "BMC_Firmware", "DPU_OS", "DPU_NIC", "DPU_UEFI", "DPU_ATF", "DPU_BSP", "Bluefield_FW_ERoT", "DPU_SYS_IMAGE",
    }  # fmt: skip
    assert firmware["DPU_OS"]["version"] == "DOCA_2.2.0_BSP_4.2.0_Ubuntu_22.04-2.23-07"  # trimmed
    assert (firmware["DPU_SYS_IMAGE"]["version"], firmware["DPU_SYS_IMAGE"]["versionParsed"]) == ("N/A", False)
    assert firmware["DPU_NIC"]["versionParsed"] is True
    bmc = bmc_of(site, trees["bluefield3-bf2310"])
    assert any("DPU_SYS_IMAGE" in w and "N/A" in w for w in bmc["status"]["warnings"])
    assert is_true(dpu(site, BF3_SERIAL), "ModelKnown")


def test_describe_dpu_shows_the_rule_and_the_evidence(site: Operator) -> None:
    status = dpu(site, BF3_SERIAL)["status"]

    def render(table: Any) -> list[str]:
        from rich.console import Console

        console = Console(width=200, record=True)
        with console.capture() as captured:
            console.print(table)
        return captured.get().splitlines()

    text = "\n".join(dpu_sections(status, render))
    assert "Recognition:" in text and "card-chassis" in text and "nvidia-bluefield-3 (by part-number)" in text
    assert "chassis-part-number" in text and BF3_PART in text
    assert "MemorySummary.TotalSystemMemoryGiB=0" in text
    assert "N/A (not a version number)" in text


# --- DMTF's SmartNIC model: the host server's BMC manages the host and its DPU ---------------------------


def test_a_host_bmc_that_manages_a_dpu_yields_a_paired_host_and_dpu(
    site: Operator, trees: dict[str, TinyService]
) -> None:
    bmc = bmc_of(site, trees["dmtf-public-smartnic"])
    assert bmc["status"]["phase"] == "Managed" and bmc["status"]["serialNumbers"] == [DMTF_DPU_SERIAL]
    obj = dpu(site, DMTF_DPU_SERIAL)
    status = obj["status"]
    assert status["recognition"]["rule"] == "system-type"
    assert status["host"] == "host-web483"
    host = site.wait_object("hosts", "host-web483", lambda h: bool(h["status"].get("dpus")))
    assert host["spec"]["bmcRef"] == bmc["metadata"]["name"]
    assert host["status"]["dpus"] == [obj["metadata"]["name"]]
    assert host["status"]["serialNumber"] == DMTF_HOST_SERIAL
    hardware = site.wait_object("hosts", "host-web483", lambda h: bool(h["status"].get("hardware")))["status"][
        "hardware"
    ]
    assert hardware["serialNumber"] == DMTF_HOST_SERIAL and hardware["system"] == "/redfish/v1/Systems/437XR1138R2"
    assert (hardware["cpuCount"], hardware["memoryGiB"]) == (2, 96)
    assert hardware["cpuModel"] == "Multi-Core Intel(R) Xeon(R) processor 7xxx Series"
    # the consoles and virtual media of the manager that names the host in ManagerForServers
    consoles = {c["kind"]: c for c in hardware["consoles"]}
    assert consoles["serial"]["connectTypes"] == ["Telnet", "SSH", "IPMI"] and consoles["serial"]["enabled"]
    assert consoles["graphical"]["connectTypes"] == ["KVMIP"]
    assert consoles["shell"]["source"] == "/redfish/v1/Managers/BMC"
    assert hardware["virtualMedia"] == "/redfish/v1/Managers/BMC/VirtualMedia"
    links = {(e["kind"], e["value"]) for e in status["evidence"]}
    assert ("redfish-contained-by", "/redfish/v1/Chassis/1U") in links
    assert {v for k, v in links if k == "redfish-offloaded-function"} == {
        "/redfish/v1/Chassis/Card1/NetworkAdapters/Slot1/NetworkDeviceFunctions/SC2KP1F0",
        "/redfish/v1/Chassis/Card1/NetworkAdapters/Slot1/NetworkDeviceFunctions/SC2KP2F0",
    }


def test_the_host_is_never_taken_for_a_dpu(site: Operator) -> None:
    names = {d["metadata"]["name"] for d in site.objects("dpus")}
    assert f"dpu-{DMTF_HOST_SERIAL.lower()}" not in names
    assert names == {f"dpu-{BF3_SERIAL.lower()}", f"dpu-{DMTF_DPU_SERIAL.lower()}"}


def test_an_unknown_dpu_model_is_adopted_as_generic_and_flagged(site: Operator) -> None:
    obj = dpu(site, DMTF_DPU_SERIAL)
    status = obj["status"]
    assert status["recognition"]["model"] == "generic"
    assert (status["vendor"], status["model"], status["partNumber"]) == ("Contoso", "9900", "334587-S34")
    assert status["capabilities"]["memoryGiB"] == 8.0  # inventoried from what it reports
    assert "accelerators" not in status["capabilities"]  # no catalog: capabilities unknown
    known = condition(obj, "ModelKnown")
    assert known is not None and (known["status"], known["reason"]) == ("False", "GenericModel")
    assert is_true(obj, "Ready")  # flagged, not refused
    site.wait_for(
        "a GenericModel event",
        lambda: [e["reason"] for e in site.events("DPU", obj["metadata"]["name"])],
        lambda reasons: "GenericModel" in reasons,
    )


def test_the_trees_bmcs_refuse_a_request_without_the_credentials(trees: dict[str, TinyService]) -> None:
    url = trees["bluefield3-bf2310"].url
    assert httpx.get(f"{url}/redfish/v1").status_code == 200  # the service root is anonymous, as on a real BMC
    assert httpx.get(f"{url}/redfish/v1/Systems").status_code == 401
    assert httpx.get(f"{url}/redfish/v1/Systems", auth=(USER, PASSWORD)).status_code == 200
