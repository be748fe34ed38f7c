"""Host-side discovery: the agent on a host finds its DPUs by PCI vendor/device ID and reads each
card's serial number from its PCI VPD, from the same files a real host's /sys shows.

(Through the API, the Host object's DPUs and PCI functions are specified in test_discovery_e2e.)
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dpufleet.agent.inventory import collect_inventory
from dpufleet.sim.fleet import Fleet, build_fleet

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    """Two hosts with two DPUs each, one vendor per host."""
    return build_fleet(
        2, 2, ["marvell-octeon-10", "amd-pensando-dsc"], seed=5, directory=tmp_path_factory.mktemp("fleet")
    )


def test_the_host_agent_finds_each_dpu_by_pci_id_and_reads_its_serial_from_vpd(fleet: Fleet) -> None:
    for host in fleet.hosts:
        assert host.osroot is not None
        inv = collect_inventory(host.osroot)
        assert inv.serial_number == host.serial  # the host's own identity, from DMI
        cards = {card.slot: card for card in inv.dpus}
        assert len(cards) == len(host.dpus)
        for dpu in host.dpus:
            slot = f"0000:{dpu.host_bus:02x}:00"
            card = cards[slot]
            assert card.serial_number == dpu.serial
            assert card.part_number == dpu.profile.part_number
            assert (card.profile, card.vendor, card.model) == (dpu.profile.name, dpu.profile.vendor, dpu.profile.model)
            assert card.functions == [f.bdf for f in dpu.host_functions()]


def test_the_hosts_own_devices_are_listed_but_not_taken_for_dpus(fleet: Fleet) -> None:
    host = fleet.hosts[0]
    assert host.osroot is not None
    inv = collect_inventory(host.osroot)
    dpu_functions = {f.bdf for dpu in host.dpus for f in dpu.host_functions()}
    others = [f for f in inv.pci if f.bdf not in dpu_functions]
    assert others and all(f.dpu is None for f in others)
    assert {f.bdf for f in inv.pci if f.dpu is not None} == dpu_functions


def test_a_card_without_readable_vpd_is_still_found_but_without_a_serial(fleet: Fleet, tmp_path: Path) -> None:
    """A firmware that hides VPD must not hide the card: it is listed, unpaired, so someone can look."""

    host = fleet.hosts[1]
    assert host.osroot is not None
    root = tmp_path / "root"
    shutil.copytree(host.osroot, root)
    hidden = host.dpus[0]
    for function in hidden.host_functions():
        (root / "sys/bus/pci/devices" / function.bdf / "vpd").unlink()
    inv = collect_inventory(root)
    serials = {card.slot: card.serial_number for card in inv.dpus}
    assert serials[f"0000:{hidden.host_bus:02x}:00"] is None
    assert serials[f"0000:{host.dpus[1].host_bus:02x}:00"] == host.dpus[1].serial


def test_the_dpu_agent_reports_the_dpus_own_serial_cores_and_ports(fleet: Fleet) -> None:
    dpu = fleet.dpus[0]
    assert dpu.osroot is not None
    inv = collect_inventory(dpu.osroot)
    assert inv.serial_number == dpu.serial
    assert inv.cpu.count == dpu.profile.cpu.cores and inv.cpu.architecture == "aarch64"
    speeds = {n.name: n.speed_mbps for n in inv.nics}
    assert {p.name: p.speed_gbps * 1000 for p in dpu.profile.ports}.items() <= speeds.items()
