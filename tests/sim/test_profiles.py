"""Vendor profiles: data files that fully describe an emulated DPU model."""

from pathlib import Path

import pytest
import yaml

from dpufleet.sim.profiles import PROFILE_DIR, builtin_profiles, get_profile, load_profiles

EXPECTED = {"nvidia-bluefield-3", "intel-ipu-e2100", "amd-pensando-dsc", "marvell-octeon-10"}


def test_the_four_builtin_profiles_load_and_are_complete():
    profiles = builtin_profiles()
    assert set(profiles) >= EXPECTED
    for profile in profiles.values():
        assert profile.cpu.cores > 0 and profile.memory.total_mib >= 16384
        assert profile.ports and all(p.speed_gbps >= 100 for p in profile.ports)
        assert any(s.role == "nic" for s in profile.host_pci)
        kinds = {a.kind for a in profile.accelerators}
        assert {"crypto", "compression"} <= kinds
        assert profile.firmware_of_kind("bmc") is not None
        assert profile.firmware_of_kind("os") is not None
        assert profile.firmware_of_kind("uefi") is not None
        assert profile.serial(24, 7, 1) != profile.serial(24, 7, 2)


def test_bluefield3_matches_real_hardware_identity():
    bf3 = get_profile("nvidia-bluefield-3")
    assert {(s.vendor_id, s.device_id) for s in bf3.host_pci} >= {("15b3", "a2dc")}
    ids = {fw.id for fw in bf3.firmware}
    assert {"BMC_Firmware", "DPU_OS", "DPU_NIC", "DPU_UEFI", "DPU_ATF", "DPU_BSP"} <= ids
    assert any(fw.kind == "golden" and not fw.updateable for fw in bf3.firmware)
    assert bf3.serial(23, 34, 1) == "MT2334X00001"


def test_adding_a_vendor_is_a_data_file(tmp_path: Path):
    data = yaml.safe_load((PROFILE_DIR / "nvidia-bluefield-3.yaml").read_text())
    data.update(name="acme-dpu-9", vendor="Acme", model="Acme DPU 9", serial_pattern="AC{year:02d}{n:06d}")
    (tmp_path / "acme-dpu-9.yaml").write_text(yaml.safe_dump(data))
    profiles = load_profiles([tmp_path])
    assert profiles["acme-dpu-9"].vendor == "Acme"
    assert set(profiles) >= EXPECTED


def test_a_broken_profile_is_refused_with_a_reason(tmp_path: Path):
    data = yaml.safe_load((PROFILE_DIR / "intel-ipu-e2100.yaml").read_text())
    data.update(name="bad", serial_pattern="X{unknown}")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match="serial_pattern"):
        load_profiles([tmp_path])


def test_unknown_profile_names_the_known_ones():
    with pytest.raises(KeyError, match="nvidia-bluefield-3"):
        get_profile("no-such-dpu")
