"""DPU status shaped in one place (inventory/status.py): the BMC's crawl, the DPU's agent and the
host's agent each write their own part, and none undoes another whatever order they arrive in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from dpufleet.api.agent import CpuInfo, HostDpu, Inventory, MemoryInfo, NicInfo, OsRelease
from dpufleet.drivers.redfish.inventory import BMCInventory, FirmwareInfo, ProcessorInfo, ServiceInfo, SystemInfo
from dpufleet.inventory.catalog import find_profile
from dpufleet.inventory.status import apply_agent_report, apply_crawl, apply_host_pairing

SERIAL = "MT2301X00042"
NOW = datetime(2030, 1, 1, tzinfo=UTC)


def system(**changes: Any) -> SystemInfo:
    fields: dict[str, Any] = {
        "id": "Bluefield", "odataId": "/redfish/v1/Systems/Bluefield", "systemType": "DPU",
        "manufacturer": "Nvidia", "model": "BlueField-3", "serialNumber": SERIAL, "powerState": "On",
        "processors": ProcessorInfo(cores=16, model="Cortex-A78AE"), "memoryGiB": 32.0,
        "macAddresses": ["b8:3f:d2:00:00:01"],
    }  # fmt: skip
    fields.update(changes)
    return SystemInfo(**fields)


def inventory(bmc_fw: str = "24.04") -> BMCInventory:
    return BMCInventory(
        service=ServiceInfo(vendor="Nvidia"),
        firmware=[FirmwareInfo(id="BMC_Firmware", version=bmc_fw), FirmwareInfo(id="DPU_OS", version="2.7.0")],
    )


def crawl(status: dict[str, Any], sys: SystemInfo | None = None, bmc_fw: str = "24.04") -> list[dict[str, Any]]:
    sys = sys or system()
    profile = find_profile(part_number=sys.partNumber, vendor=sys.manufacturer, model=sys.model)
    return apply_crawl(
        status, bmc="bmc-a", inventory=inventory(bmc_fw), system=sys, part_number=sys.partNumber,
        profile=profile, stamp="2030-01-01T00:00:00Z", generation=1,
    )  # fmt: skip


def report(status: dict[str, Any], cores: int = 8, memory_gib: int = 16) -> None:
    inv = Inventory(
        os=OsRelease(pretty_name="DOCA 2.7", image_version="2.7.0"),
        cpu=CpuInfo(count=cores, model="agent-cpu"),
        memory=MemoryInfo(total_bytes=memory_gib * 2**30),
        nics=[NicInfo(name="p0", mac="B8:3F:D2:00:00:99", operstate="up")],
    )
    apply_agent_report(
        status, serial=SERIAL, agent_version="1.2.0", received=NOW, sent_at=NOW + timedelta(seconds=2),
        inventory=inv,
    )  # fmt: skip


def evidence(status: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {(e["source"], e["kind"], e["value"]) for e in status["evidence"]}


def test_the_bmc_and_the_agent_each_keep_their_part_in_either_order() -> None:
    bmc_first: dict[str, Any] = {}
    crawl(bmc_first)
    report(bmc_first)
    agent_first: dict[str, Any] = {}
    report(agent_first)
    crawl(agent_first)
    for status in (bmc_first, agent_first):
        caps = status["capabilities"]
        assert caps["cpu"] == {"cores": 16, "model": "Cortex-A78AE"}, "the BMC's figures win over the agent's"
        assert caps["memoryGiB"] == 32.0
        assert caps["os"]["nics"][0]["name"] == "p0", "the agent's OS view stays"
        assert (status["bmc"], status["bmcSystem"], status["serialNumber"]) == (
            "bmc-a", "/redfish/v1/Systems/Bluefield", SERIAL,
        )  # fmt: skip
        assert status["agent"]["version"] == "1.2.0" and status["agent"]["clockSkewSeconds"] == 2.0
        assert evidence(status) == {
            ("bmc/bmc-a", "serial", SERIAL),
            ("bmc/bmc-a", "mac", "b8:3f:d2:00:00:01"),
            ("agent", "mac", "b8:3f:d2:00:00:99"),
        }
        assert status["remaining"] == {"cores": 16, "memoryGiB": 32.0}


def test_the_agent_fills_cpu_and_memory_only_while_no_bmc_reported_them() -> None:
    status: dict[str, Any] = {}
    silent = system(manufacturer="Acme", model="X1", processors=ProcessorInfo(), memoryGiB=None)  # not in the catalog
    crawl(status, silent)
    report(status, cores=8, memory_gib=16)
    assert status["capabilities"]["cpu"] == {"cores": 8, "model": "agent-cpu"}
    assert status["capabilities"]["memoryGiB"] == 16.0
    crawl(status, system(manufacturer="Acme", model="X1"))  # the BMC now reports them: its figures win
    report(status, cores=8, memory_gib=16)
    assert status["capabilities"]["cpu"] == {"cores": 16, "model": "Cortex-A78AE"}
    assert status["capabilities"]["memoryGiB"] == 32.0


def test_a_crawl_replaces_only_its_own_evidence() -> None:
    status: dict[str, Any] = {}
    crawl(status)
    report(status)
    apply_host_pairing(status, host="h1", serial=SERIAL, slot="3", card=None)
    crawl(status, system(macAddresses=["b8:3f:d2:00:00:02"]))
    assert evidence(status) == {
        ("bmc/bmc-a", "serial", SERIAL),
        ("bmc/bmc-a", "mac", "b8:3f:d2:00:00:02"),
        ("agent", "mac", "b8:3f:d2:00:00:99"),
        ("host-agent/h1", "pci-vpd-serial", SERIAL),
    }


def test_the_host_agent_names_a_card_no_bmc_describes_and_leaves_a_described_one() -> None:
    card = HostDpu(slot="3", profile="x", vendor="Vendor-H", model="Model-H", part_number="P-H", functions=[])
    alone: dict[str, Any] = {}
    apply_host_pairing(alone, host="h1", serial=SERIAL, slot="3", card=card)
    assert (alone["host"], alone["vendor"], alone["model"], alone["partNumber"]) == ("h1", "Vendor-H", "Model-H", "P-H")
    described: dict[str, Any] = {}
    crawl(described)
    apply_host_pairing(described, host="h1", serial=SERIAL, slot="3", card=card)
    assert (described["host"], described["vendor"], described["model"]) == ("h1", "Nvidia", "BlueField-3")
    crawl(alone)
    assert (alone["vendor"], alone["model"]) == ("Nvidia", "BlueField-3"), "the BMC is the authority on identity"


def test_a_firmware_change_is_history_and_says_who_made_it() -> None:
    status: dict[str, Any] = {}
    assert crawl(status) == [], "the first crawl only learns the versions"
    out_of_band = crawl(status, bmc_fw="24.07")
    assert [(c["component"], c["from"], c["to"], c["source"]) for c in out_of_band] == [
        ("BMC_Firmware", "24.04", "24.07", "out-of-band")
    ]
    status["provisioning"] = {"phase": "Installing"}
    ours = crawl(status, bmc_fw="24.10")
    assert [c["source"] for c in ours] == ["provisioning"]
    assert [c["to"] for c in status["updateHistory"]] == ["24.07", "24.10"]


def crawl_paired(status: dict[str, Any], host: str) -> None:
    sys = system()
    apply_crawl(
        status, bmc="bmc-h", inventory=inventory(), system=sys, part_number=None, profile=None,
        stamp="2030-01-01T00:00:00Z", generation=1, host=host,
        host_evidence=[{"source": "bmc/bmc-h", "kind": "redfish-contained-by", "value": "/redfish/v1/Chassis/1U"}],
    )  # fmt: skip


def test_redfish_pairing_and_the_host_agents_merge_and_the_host_agent_has_the_last_word() -> None:
    first_bmc: dict[str, Any] = {}
    crawl_paired(first_bmc, "host-web483")
    apply_host_pairing(first_bmc, host="host-web483", serial=SERIAL, slot="3", card=None)
    assert first_bmc["host"] == "host-web483"
    assert {"redfish-contained-by", "pci-vpd-serial"} <= {e["kind"] for e in first_bmc["evidence"]}
    first_agent: dict[str, Any] = {}
    apply_host_pairing(first_agent, host="host-a", serial=SERIAL, slot="3", card=None)
    crawl_paired(first_agent, "host-web483")  # a crawl fills the host only while none is known
    assert first_agent["host"] == "host-a"
    assert {"redfish-contained-by", "pci-vpd-serial"} <= {e["kind"] for e in first_agent["evidence"]}


def test_a_dpu_no_catalog_model_names_is_flagged_not_refused() -> None:
    status: dict[str, Any] = {}
    crawl_paired(status, "host-web483")
    known = next(c for c in status["conditions"] if c["type"] == "ModelKnown")
    assert (known["status"], known["reason"], known["severity"]) == ("False", "GenericModel", "Warning")
    assert "Nvidia" in known["message"] and "BlueField-3" in known["message"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
