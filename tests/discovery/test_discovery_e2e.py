"""Given an emulated fleet, a Credential and a Discovery created through the HTTP API,
then every BMC is managed and every DPU is known: identity, firmware, capabilities, host and agent.

The fleet is reached only through real protocols: Redfish for its BMCs, the agent endpoint for the
DPU and host agents (the real agent code, reading each machine's emulated OS root).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from dpufleet import __version__
from dpufleet.sim.devices import SimDPU
from dpufleet.sim.runner import SimOptions, SimRunning, sim_in_thread
from support.net import poll
from support.server import RunningServer

from .conftest import Operator, condition, is_true

pytestmark = pytest.mark.timeout(60)

PROFILES = ["nvidia-bluefield-3", "intel-ipu-e2100"]


def dpu_object_name(dpu: SimDPU) -> str:
    return f"dpu-{dpu.serial.lower()}"


@pytest.fixture(scope="module")
def fleet(api: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimRunning]:
    """Two hosts with two DPUs each (one vendor per host), their BMCs on one loopback port, agents running."""
    options = SimOptions(
        hosts=2,
        dpus_per_host=2,
        profiles=PROFILES,
        seed=21,
        directory=tmp_path_factory.mktemp("fleet"),
        time_scale=0.01,
        server=api.url,
        token=api.token,
        register=False,  # the test registers the fleet itself, as an operator would
        agents=True,
        heartbeat_seconds=1.0,
    )
    with sim_in_thread(options) as running:
        yield running


@pytest.fixture(scope="module")
def site(http: httpx.Client, fleet: SimRunning) -> Operator:
    """The operator's two objects, then every DPU discovered, inventoried, paired and reporting."""
    op = Operator(http, "default")
    op.credential("site-bmcs", fleet.username, fleet.password)
    op.discovery("lab", endpoints=fleet.endpoints, credentialsRef="site-bmcs", intervalSeconds=600)
    names = {dpu_object_name(d) for d in fleet.fleet.dpus}

    def complete(dpus: list[dict[str, Any]]) -> bool:
        by_name = {d["metadata"]["name"]: d for d in dpus}
        return set(by_name) >= names and all(
            by_name[n]["status"].get(key) for n in names for key in ("bmc", "host", "agent", "firmware")
        )

    op.wait_for("every DPU discovered, paired and reporting", lambda: op.objects("dpus"), complete, timeout=30)
    op.wait_for(
        "every BMC settled",
        lambda: op.objects("bmcs"),
        lambda bmcs: len(bmcs) == len(fleet.endpoints) and all(condition(b, "Ready") for b in bmcs),
    )
    return op


def test_every_bmc_found_by_the_discovery_is_managed_and_ready(site: Operator, fleet: SimRunning) -> None:
    bmcs = {b["spec"]["address"]: b for b in site.objects("bmcs")}
    assert set(bmcs) == set(fleet.endpoints)
    for address, bmc in bmcs.items():
        sim_bmc = next(b for b in fleet.fleet.bmcs.values() if fleet.servers.endpoints[b.id] == address)
        assert bmc["metadata"]["labels"]["dpufleet.io/discovery"] == "lab"
        assert bmc["spec"]["credentialsRef"] == "site-bmcs"
        assert bmc["status"]["phase"] == "Managed"
        assert bmc["status"]["reachable"] is True and bmc["status"]["adopted"] is True
        for step in ("Reachable", "Authenticated", "Inventoried", "Adopted", "Ready"):
            assert is_true(bmc, step), f"{bmc['metadata']['name']}: {step} is {condition(bmc, step)}"
        assert bmc["status"]["vendor"] == sim_bmc.dpu.profile.vendor
        assert bmc["status"]["firmwareVersion"] == sim_bmc.firmware_version
        assert bmc["status"]["serialNumbers"] == [sim_bmc.dpu.serial]
        assert bmc["status"]["dpus"] == [dpu_object_name(sim_bmc.dpu)]


def test_the_discovery_reports_what_it_probed(site: Operator, fleet: SimRunning) -> None:
    disc = site.get("discoveries", "lab")
    assert disc is not None
    status = disc["status"]
    n = len(fleet.endpoints)
    assert (status["phase"], status["probed"], status["redfishFound"]) == ("Idle", n, n)
    assert (status["unreachable"], status["notRedfish"], status["errors"]) == (0, 0, [])
    assert status["observedGeneration"] == disc["metadata"]["generation"]
    assert is_true(disc, "Scanned") and is_true(disc, "Ready")
    site.wait_for(
        "a ScanFinished event",
        lambda: [e["message"] for e in site.events("Discovery", "lab") if e["reason"] == "ScanFinished"],
        lambda messages: any(f"probed {n}: {n} Redfish ({n} new)" in m for m in messages),
    )


def test_every_dpu_is_named_after_its_serial_and_shows_its_identity(site: Operator, fleet: SimRunning) -> None:
    for dpu in fleet.fleet.dpus:
        obj = site.get("dpus", dpu_object_name(dpu))
        assert obj is not None, f"no DPU object for {dpu.serial}"
        status, profile = obj["status"], dpu.profile
        assert status["serialNumber"] == dpu.serial and obj["spec"]["serialNumber"] == dpu.serial
        assert (status["vendor"], status["model"], status["partNumber"]) == (
            profile.vendor,
            profile.model,
            profile.part_number,
        )
        assert (status["powerState"], status["bootProgress"], status["health"]) == ("On", "OSRunning", "OK")
        assert is_true(obj, "Inventoried") and is_true(obj, "Ready")


def test_firmware_of_every_component_is_the_version_on_the_device(site: Operator, fleet: SimRunning) -> None:
    for dpu in fleet.fleet.dpus:
        obj = site.get("dpus", dpu_object_name(dpu))
        assert obj is not None
        shown = {fw["id"]: fw["version"] for fw in obj["status"]["firmware"]}
        assert shown == dpu.firmware
        updateable = {fw["id"]: fw["updateable"] for fw in obj["status"]["firmware"]}
        assert updateable == {fw.id: fw.updateable for fw in dpu.profile.firmware}


def test_capabilities_name_cores_memory_ports_and_accelerators(site: Operator, fleet: SimRunning) -> None:
    for dpu in fleet.fleet.dpus:
        obj = site.get("dpus", dpu_object_name(dpu))
        assert obj is not None
        caps, profile = obj["status"]["capabilities"], dpu.profile
        assert caps["catalogProfile"] == profile.name
        assert caps["cpu"] == {"cores": profile.cpu.cores, "model": profile.cpu.model}
        assert caps["memoryGiB"] == pytest.approx(profile.memory.total_mib / 1024, abs=0.1)
        assert [(p["name"], p["speedGbps"]) for p in caps["ports"]] == [(p.name, p.speed_gbps) for p in profile.ports]
        assert len(caps["accelerators"]) == len(profile.accelerators) > 0
        for shown, spec in zip(caps["accelerators"], profile.accelerators, strict=True):
            assert (shown["kind"], shown["name"], shown["algorithms"]) == (str(spec.kind), spec.name, spec.algorithms)
            figures = {"throughputGbps": spec.throughput_gbps, "iops": spec.iops, "opsPerSecond": spec.ops_per_second}
            assert {k: shown.get(k) for k in figures} == figures
        assert obj["status"]["remaining"] == {"cores": profile.cpu.cores, "memoryGiB": caps["memoryGiB"]}
        # What the DPU's own OS shows, as its agent reported it.
        os_nics = {n["name"]: n.get("speed_mbps") for n in caps["os"]["nics"]}
        assert {p.name: p.speed_gbps * 1000 for p in profile.ports}.items() <= os_nics.items()


def test_each_dpu_is_paired_with_its_host_by_two_independent_sources(site: Operator, fleet: SimRunning) -> None:
    for host in fleet.fleet.hosts:
        for dpu in host.dpus:
            obj = site.get("dpus", dpu_object_name(dpu))
            assert obj is not None
            status = obj["status"]
            assert status["host"] == host.id
            evidence = {(e["source"].split("/")[0], e["kind"], e["value"]) for e in status["evidence"]}
            assert ("host-agent", "pci-vpd-serial", dpu.serial) in evidence
            assert ("bmc", "serial", dpu.serial) in evidence
            assert any(e["source"] == f"host-agent/{host.id}" for e in status["evidence"])
            assert any(e["source"] == f"bmc/{status['bmc']}" for e in status["evidence"])
            # The MACs the BMC reports are the ones the DPU's OS shows.
            bmc_macs = {v for s, k, v in evidence if s == "bmc" and k == "mac"}
            assert bmc_macs == {nic.mac for nic in dpu.nics}


def test_the_host_lists_its_dpus_and_their_pci_functions(site: Operator, fleet: SimRunning) -> None:
    for host in fleet.fleet.hosts:
        obj = site.wait_object("hosts", host.id, lambda h: h["status"].get("phase") == "Inventoried")
        assert sorted(obj["status"]["dpus"]) == sorted(dpu_object_name(d) for d in host.dpus)
        functions = {f["bdf"]: f for f in obj["status"]["pciFunctions"]}
        expected = {f.bdf: (f.spec.vendor_id, f.spec.device_id, dpu) for dpu in host.dpus for f in dpu.host_functions()}
        assert set(functions) == set(expected)
        for bdf, (vendor_id, device_id, dpu) in expected.items():
            shown = functions[bdf]
            assert (shown["vendorId"], shown["deviceId"], shown["dpu"]) == (vendor_id, device_id, dpu_object_name(dpu))
        assert is_true(obj, "AgentConnected")


def test_agent_status_and_last_seen_are_current(site: Operator, fleet: SimRunning) -> None:
    recent = datetime.now(UTC) - timedelta(minutes=5)
    for dpu in fleet.fleet.dpus:
        obj = site.get("dpus", dpu_object_name(dpu))
        assert obj is not None
        status = obj["status"]
        agent = status["agent"]
        assert agent["version"] == __version__
        assert (agent["os"], agent["kernel"]) == (dpu.profile.os.pretty_name, dpu.profile.os.kernel_release)
        for stamp in (status["lastSeen"], agent["lastHeartbeat"], agent["lastInventory"]):
            assert datetime.fromisoformat(stamp.replace("Z", "+00:00")) > recent
        assert is_true(obj, "AgentConnected")


def test_a_changed_discovery_rescans_without_duplicating_anything(site: Operator, fleet: SimRunning) -> None:
    bmcs_before = sorted(b["metadata"]["uid"] for b in site.objects("bmcs"))
    dpus_before = sorted(d["metadata"]["uid"] for d in site.objects("dpus"))
    generation = site.patch("discoveries", "lab", {"spec": {"concurrency": 8}})["metadata"]["generation"]
    after = site.wait_object("discoveries", "lab", lambda d: d["status"].get("observedGeneration") == generation)
    assert after["status"]["redfishFound"] == len(fleet.endpoints)
    assert sorted(b["metadata"]["uid"] for b in site.objects("bmcs")) == bmcs_before
    assert sorted(d["metadata"]["uid"] for d in site.objects("dpus")) == dpus_before
    rescanned = f"{len(fleet.endpoints)} Redfish (0 new)"
    site.wait_for(
        f"a ScanFinished event saying {rescanned!r}",
        lambda: [e["message"] for e in site.events("Discovery", "lab") if e["reason"] == "ScanFinished"],
        lambda messages: any(rescanned in m for m in messages),
    )


def test_an_update_pushed_through_the_bmc_is_detected_and_recorded(site: Operator, fleet: SimRunning) -> None:
    """Someone updates NIC firmware straight through the BMC's Redfish UpdateService (not through
    dpufleet): the next inventory records the new version, an out-of-band update-history entry and
    a Warning event, so the fleet's record of what runs where stays true."""
    dpu = next(d for d in fleet.fleet.dpus if d.profile.name == "nvidia-bluefield-3")
    name = dpu_object_name(dpu)
    bmc = next(b for b in fleet.fleet.bmcs.values() if b.dpu is dpu)
    old = dpu.firmware["DPU_NIC"]
    endpoint = fleet.servers.endpoints[bmc.id]
    url = endpoint + "/redfish/v1/UpdateService/Actions/UpdateService.SimpleUpdate"
    target = urlsplit(endpoint).path + "/redfish/v1/UpdateService/FirmwareInventory/DPU_NIC"
    resp = httpx.post(
        url,
        json={"ImageURI": "http://198.51.100.9/fw/DPU_NIC-32.99.1234.bin", "Targets": [target]},
        auth=(fleet.username, fleet.password),
        timeout=10,
    )
    assert resp.status_code in (200, 202), resp.text
    poll("the DPU to run DPU_NIC 32.99.1234", lambda: dpu.firmware["DPU_NIC"], lambda v: v == "32.99.1234", 15)
    bmc_obj = next(b for b in site.objects("bmcs") if name in b["status"].get("dpus", []))
    assert bmc_obj is not None
    # refresh now (a merge patch: the BMC reconciler may be writing its status at this moment)
    site.patch(
        "bmcs", bmc_obj["metadata"]["name"], {"metadata": {"annotations": {"dpufleet.io/refresh": str(time.time())}}}
    )
    refreshed = site.wait_object(
        "dpus", name, lambda d: any(h["to"] == "32.99.1234" for h in d["status"].get("updateHistory") or [])
    )
    entry = next(h for h in refreshed["status"]["updateHistory"] if h["component"] == "DPU_NIC")
    assert (entry["from"], entry["to"], entry["source"]) == (old, "32.99.1234", "out-of-band")
    assert {f["id"]: f["version"] for f in refreshed["status"]["firmware"]}["DPU_NIC"] == "32.99.1234"
    warnings = [e for e in site.events("DPU", name) if e["reason"] == "FirmwareChangedOutOfBand"]
    assert warnings and warnings[0]["type"] == "Warning" and "DPU_NIC" in warnings[0]["message"]
