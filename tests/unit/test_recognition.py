"""Recognition from evidence (inventory/recognition.py): which systems of one crawl are DPUs, by
which rule, and which are hosts; what a device reports wrongly is read as unknown, never as fact."""

from __future__ import annotations

from typing import Any

from dpufleet.drivers.redfish.inventory import (
    BMCInventory,
    ChassisInfo,
    FirmwareInfo,
    ServiceInfo,
    SystemInfo,
    parse_chassis,
    parse_firmware,
    parse_system,
)
from dpufleet.inventory.recognition import recognize
from dpufleet.vendors import builtin_catalog

BF3_PART = "900-9D3B6-00CV-AA0"


def system(id_: str, system_type: str = "Physical", **fields: Any) -> SystemInfo:
    return SystemInfo(id=id_, odataId=f"/redfish/v1/Systems/{id_}", systemType=system_type, **fields)


def card(id_: str, **fields: Any) -> ChassisInfo:
    return ChassisInfo(id=id_, odataId=f"/redfish/v1/Chassis/{id_}", chassisType="Card", **fields)


def found(inventory: BMCInventory) -> list[tuple[str, str]]:
    return [(d.system.id, d.rule) for d in recognize(inventory, builtin_catalog(), "bmc/b").dpus]


def test_a_plain_server_is_never_a_dpu() -> None:
    inv = BMCInventory(service=ServiceInfo(vendor="Contoso"), systems=[system("node-0", serialNumber="S1")])
    assert found(inv) == []


def test_a_host_with_a_plain_nic_card_is_not_a_dpu() -> None:
    nic = card(
        "NIC1", manufacturer="Contoso", model="25G NIC", partNumber="X-1", computerSystems=["/redfish/v1/Systems/h"]
    )
    inv = BMCInventory(service=ServiceInfo(), systems=[system("h", serialNumber="S1")], chassis=[nic])
    assert found(inv) == []


def test_a_physical_system_whose_card_chassis_is_a_catalog_model_is_a_dpu() -> None:
    bf = card("Card1", manufacturer="Nvidia", partNumber=BF3_PART, serialNumber="MT1")
    inv = BMCInventory(
        service=ServiceInfo(), systems=[system("Bluefield", chassisLinks=["/redfish/v1/Chassis/Card1"])], chassis=[bf]
    )
    [dpu] = recognize(inv, builtin_catalog(), "bmc/b").dpus
    assert (dpu.rule, dpu.model.name if dpu.model else None, dpu.system.serialNumber) == (
        "card-chassis",
        "nvidia-bluefield-3",
        "MT1",
    )


def test_a_lone_system_whose_firmware_inventory_is_a_catalog_models_is_a_dpu() -> None:
    firmware = [FirmwareInfo(id=i, version="1.0") for i in ("BMC_Firmware", "DPU_OS", "DPU_NIC", "DPU_UEFI")]
    inv = BMCInventory(service=ServiceInfo(), systems=[system("Bluefield", serialNumber="MT2")], firmware=firmware)
    assert found(inv) == [("Bluefield", "firmware-inventory")]
    two = inv.model_copy(update={"systems": [*inv.systems, system("other", serialNumber="S3")]})
    assert found(two) == []  # which of two systems would it be? neither: not evidence enough


def test_strings_are_trimmed_and_zero_figures_are_unknown() -> None:
    parsed = parse_system({
        "Id": "Bluefield ", "SerialNumber": "  MT3  ", "Manufacturer": " ", "PowerState": "On",
        "ProcessorSummary": {"Count": 0, "CoreCount": 16}, "MemorySummary": {"TotalSystemMemoryGiB": 0},
        "Links": {"Chassis": "not a list", "HostingComputerSystem": {"@odata.id": "/redfish/v1/Systems/h/"}},
    })  # fmt: skip
    assert (parsed.id, parsed.serialNumber, parsed.manufacturer) == ("Bluefield", "MT3", None)
    assert (parsed.processors.count, parsed.processors.cores, parsed.memoryGiB) == (None, 16, None)
    assert parsed.implausible == ["MemorySummary.TotalSystemMemoryGiB=0", "ProcessorSummary.Count=0"]
    assert (parsed.chassisLinks, parsed.hostingSystem) == ([], "/redfish/v1/Systems/h")
    chassis = parse_chassis({"Id": "Card1", "ChassisType": "Card", "SerialNumber": "MT3   ", "Links": []})
    assert (chassis.serialNumber, chassis.containedBy) == ("MT3", None)


def test_a_firmware_version_that_is_no_version_is_kept_raw_and_flagged() -> None:
    assert parse_firmware({"Id": "DPU_NIC", "Version": " 32.38.1002 "}).model_dump(
        include={"version", "versionParsed"}
    ) == {
        "version": "32.38.1002",
        "versionParsed": True,
    }
    for raw, kept in (("N/A", "N/A"), (None, ""), (7, "7")):
        fw = parse_firmware({"Id": "X", "Version": raw})
        assert (fw.version, fw.versionParsed) == (kept, False)
