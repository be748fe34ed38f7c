"""Emulated OS roots read back through the agent's real inventory reader."""

import os
from pathlib import Path

import pytest

from dpufleet.agent.inventory import collect_inventory, group_dpus, known_dpu_ids, parse_vpd, scan_host_pci
from dpufleet.sim.fleet import build_fleet
from dpufleet.sim.osroot import encode_vpd, materialise_dpu_root
from dpufleet.sim.profiles import builtin_profiles, get_profile


@pytest.mark.parametrize("name", sorted(builtin_profiles()))
def test_agent_reports_what_the_profile_says(tmp_path: Path, name: str):
    profile = get_profile(name)
    dpu = materialise_dpu_root(profile, serial=profile.serial(24, 10, 42), seed=5, root=tmp_path)
    inv = collect_inventory(tmp_path)
    assert inv.cpu.count == profile.cpu.cores
    assert inv.cpu.model == profile.cpu.model
    assert inv.cpu.architecture == "aarch64"
    assert inv.memory.total_bytes is not None
    assert 0.9 < inv.memory.total_bytes / (profile.memory.total_mib * 1024**2) <= 1.0
    assert inv.serial_number == dpu.serial
    assert inv.dmi.product_name == profile.dmi.product_name
    assert inv.os.pretty_name == profile.os.pretty_name
    assert inv.kernel_release == profile.os.kernel_release
    nics = {n.name: n for n in inv.nics}
    for port in profile.ports:
        assert nics[port.name].speed_mbps == port.speed_gbps * 1000
    assert {n.name: n.mac for n in inv.nics} == {n.name: n.mac for n in dpu.nics}
    assert {d.name: d.size_bytes for d in inv.disks} == {s.name: s.size_gib * 1024**3 for s in profile.storage}
    uefi = profile.firmware_of_kind("uefi")
    assert uefi is not None and inv.dmi.bios_version == profile.factory_firmware[uefi.id]
    assert inv.warnings == []


def test_host_side_discovery_pairs_each_dpu_with_its_slot(tmp_path: Path):
    fleet = build_fleet(2, 2, ["nvidia-bluefield-3", "marvell-octeon-10"], seed=11, directory=tmp_path)
    for host in fleet.hosts:
        assert host.osroot is not None
        functions = scan_host_pci(host.osroot)
        cards = group_dpus(functions)
        assert {c.serial_number: c.profile for c in cards} == {d.serial: d.profile.name for d in host.dpus}
        by_serial = {c.serial_number: c for c in cards}
        for dpu in host.dpus:
            assert by_serial[dpu.serial].functions == [f.bdf for f in dpu.host_functions()]
        # The host's own devices are listed but not mistaken for DPUs.
        assert any(f.dpu is None for f in functions)
        inv = collect_inventory(host.osroot)
        assert inv.serial_number == host.serial and len(inv.dpus) == 2


def test_known_dpu_table_covers_every_profile():
    table = known_dpu_ids()
    assert table[("15b3", "a2dc")].profile == "nvidia-bluefield-3"
    assert table[("8086", "1452")].profile == "intel-ipu-e2100"
    assert table[("1dd8", "1002")].profile == "amd-pensando-dsc"
    assert table[("177d", "b900")].profile == "marvell-octeon-10"
    assert table[("15b3", "101e")].role == "vf"


def test_vpd_round_trips_and_checksums_to_zero():
    blob = encode_vpd("BlueField-3", {"PN": "900-9D3B6-00CV-AA0", "SN": "MT2334X00001"})
    end = blob.index(b"RV") + 4  # keyword, length, checksum byte
    assert sum(blob[:end]) % 256 == 0
    vpd = parse_vpd(blob)
    assert vpd is not None
    assert (vpd.product_name, vpd.part_number, vpd.serial_number) == (
        "BlueField-3",
        "900-9D3B6-00CV-AA0",
        "MT2334X00001",
    )
    assert parse_vpd(b"\x00\x01") is None


def test_inventory_of_this_real_machine():
    inv = collect_inventory(Path("/"))
    assert inv.cpu.count == os.cpu_count()
    assert inv.memory.total_bytes and inv.memory.total_bytes > 0
    assert inv.kernel_release == os.uname().release
    assert inv.hostname
    assert inv.nics, "a machine with no network interfaces besides lo"


def test_missing_and_unreadable_files_are_tolerated(tmp_path: Path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "meminfo").write_text("garbage\n")
    (tmp_path / "sys" / "class" / "net" / "eth9").mkdir(parents=True)
    (tmp_path / "sys" / "class" / "net" / "eth9" / "speed").write_text("-1\n")
    inv = collect_inventory(tmp_path)
    assert inv.cpu.count is None and inv.memory.total_bytes is None
    assert inv.nics[0].name == "eth9" and inv.nics[0].speed_mbps is None and inv.nics[0].mac is None
    assert any("dmi" in w for w in inv.warnings)


def test_fleets_are_deterministic_and_identities_unique(tmp_path: Path):
    profiles = sorted(builtin_profiles())
    a = build_fleet(8, 4, profiles, seed=3)
    b = build_fleet(8, 4, profiles, seed=3)
    c = build_fleet(8, 4, profiles, seed=4)
    serials = [d.serial for d in a.dpus]
    assert serials == [d.serial for d in b.dpus] != [d.serial for d in c.dpus]
    assert len(set(serials)) == 32
    macs = [n.mac for d in a.dpus for n in d.nics] + [d.bmc_mac for d in a.dpus]
    assert len(set(macs)) == len(macs)
    # Passwords are never derived from the seed.
    assert a.credentials(a.dpus[0].id) != b.credentials(b.dpus[0].id)
