"""DMTF's SmartNIC model served by the emulator: given emulated hosts whose own BMCs also show their DPUs
(`dpufleet sim --host-bmcs-manage-dpus`), when an operator points a Discovery at the host BMCs alone,
then each host is a Host paired with its DPUs, each DPU is recognised from its system type and its
catalog part number, the Redfish links are the evidence, and no host is taken for a DPU."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from dpufleet.sim.runner import SimOptions, SimRunning, sim_in_thread

from .conftest import Operator, condition

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimRunning]:
    options = SimOptions(
        hosts=2, dpus_per_host=2, profiles=["nvidia-bluefield-3", "amd-pensando-dsc"], seed=41,
        directory=tmp_path_factory.mktemp("fleet"), time_scale=0.005, per_bmc_ports=True,
        register=False, agents=False, host_bmcs_manage_dpus=True,
    )  # fmt: skip
    with sim_in_thread(options) as running:
        yield running


@pytest.fixture(scope="module")
def site(http: httpx.Client, fleet: SimRunning) -> Operator:
    op = Operator(http, "default")
    op.credential("host-bmcs", fleet.username, fleet.password)
    endpoints = sorted(fleet.host_bmcs.values())  # the host BMCs only: the DPUs' own BMCs are not asked
    op.discovery("hosts", endpoints=endpoints, credentialsRef="host-bmcs", intervalSeconds=600)
    op.wait_for(
        "every host BMC managed",
        lambda: op.objects("bmcs"),
        lambda bmcs: len(bmcs) == len(endpoints) and all(condition(b, "Ready") for b in bmcs),
        timeout=40,
    )
    return op


def test_each_host_bmc_yields_its_host_paired_with_its_dpus(site: Operator, fleet: SimRunning) -> None:
    serials = {h.serial for h in fleet.fleet.hosts}
    listed = site.wait_for(
        "a Host per host server",
        lambda: {h["status"].get("serialNumber"): h["metadata"]["name"] for h in site.objects("hosts")},
        lambda found: set(found) == serials,
    )
    for sim in fleet.fleet.hosts:
        host = site.wait_object(
            "hosts", listed[sim.serial], lambda h, sim=sim: len(h["status"].get("dpus") or []) == len(sim.dpus)
        )
        expected = sorted(f"dpu-{d.serial.lower()}" for d in sim.dpus)
        assert host["status"]["dpus"] == expected
        assert host["spec"]["bmcRef"] in {b["metadata"]["name"] for b in site.objects("bmcs")}
        for dpu in sim.dpus:
            obj = site.wait_object("dpus", f"dpu-{dpu.serial.lower()}", lambda d: bool(d["status"].get("recognition")))
            status = obj["status"]
            assert status["host"] == host["metadata"]["name"]
            assert status["recognition"]["rule"] == "system-type"
            assert status["recognition"]["model"] == dpu.profile.name  # the catalog knows its part number
            assert (status["partNumber"], status["serialNumber"]) == (dpu.profile.part_number, dpu.serial)
            evidence = {(e["kind"], e["value"]) for e in status["evidence"]}
            assert ("redfish-contained-by", "/redfish/v1/Chassis/Chassis") in evidence
            offloaded = {v for k, v in evidence if k == "redfish-offloaded-function"}
            assert offloaded == {
                f"/redfish/v1/Chassis/Card{dpu.slot}/NetworkAdapters/NIC/NetworkDeviceFunctions/{nic.name}"
                for nic in dpu.data_nics
            }


def test_no_host_is_taken_for_a_dpu(site: Operator, fleet: SimRunning) -> None:
    names = {d["metadata"]["name"] for d in site.objects("dpus")}
    assert names == {f"dpu-{d.serial.lower()}" for d in fleet.fleet.dpus}
    assert not names & {f"dpu-{h.serial.lower()}" for h in fleet.fleet.hosts}
