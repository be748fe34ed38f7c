"""Vendor profiles: an emulated DPU model is a catalog model plus how the emulator presents it."""

from pathlib import Path

import pytest
import yaml

from dpufleet.sim.fleet import build_fleet
from dpufleet.sim.profiles import PROFILE_DIR, builtin_profiles, get_profile, load_profiles
from dpufleet.vendors import MODELS_DIR, DataFileError, builtin_catalog, load_catalog

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


def test_an_emulated_card_is_what_the_catalog_says_its_model_is():
    for profile in builtin_profiles().values():
        model = builtin_catalog().models[profile.emulates]
        facts = set(type(model).model_fields) - {"name"}
        assert profile.model_dump(include=facts) == model.model_dump(include=facts)
        match = builtin_catalog().lookup(part_number=profile.part_number)
        assert match.model == model and match.matched_by == "part-number"
        assert set(profile.factory_firmware) == {fw.id for fw in model.firmware}


def test_bluefield3_matches_real_hardware_identity():
    bf3 = get_profile("nvidia-bluefield-3")
    assert {(s.vendor_id, s.device_id) for s in bf3.host_pci} >= {("15b3", "a2dc")}
    ids = {fw.id for fw in bf3.firmware}
    assert {"BMC_Firmware", "DPU_OS", "DPU_NIC", "DPU_UEFI", "DPU_ATF", "DPU_BSP"} <= ids
    assert any(fw.kind == "golden" and not fw.updateable for fw in bf3.firmware)
    assert bf3.serial(23, 34, 1) == "MT2334X00001"


def _acme(tmp_path: Path) -> tuple[Path, Path]:
    """A new vendor: a catalog file for its model and a profile file to emulate it."""
    models, sims = tmp_path / "models", tmp_path / "profiles"
    models.mkdir()
    sims.mkdir()
    model = yaml.safe_load((MODELS_DIR / "nvidia-bluefield-3.yaml").read_text())
    model.update(name="acme-dpu-9", vendor="Acme", family="Roadrunner", model="Acme DPU 9", part_numbers=["AC-9*"])
    (models / "acme-dpu-9.yaml").write_text(yaml.safe_dump(model))
    profile = yaml.safe_load((PROFILE_DIR / "nvidia-bluefield-3.yaml").read_text())
    profile.update(
        name="acme-dpu-9", emulates="acme-dpu-9", part_number="AC-9000-A1", serial_pattern="AC{year:02d}{n:06d}"
    )
    (sims / "acme-dpu-9.yaml").write_text(yaml.safe_dump(profile))
    return models, sims


def test_adding_a_vendor_is_two_data_files(tmp_path: Path):
    models, sims = _acme(tmp_path)
    catalog = load_catalog([models])
    profiles = load_profiles([sims], catalog=catalog)
    acme = profiles["acme-dpu-9"]
    assert (acme.vendor, acme.model, acme.part_number) == ("Acme", "Acme DPU 9", "AC-9000-A1")
    assert set(profiles) >= EXPECTED
    assert catalog.lookup(part_number="AC-9000-A1").model == catalog.models["acme-dpu-9"]


def test_a_profile_may_not_restate_a_hardware_fact(tmp_path: Path):
    _models, sims = _acme(tmp_path)
    path = sims / "acme-dpu-9.yaml"
    data = yaml.safe_load(path.read_text())
    data.update(emulates="nvidia-bluefield-3", part_number="900-9D3B6-00CV-AA0", ports=[])
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(DataFileError, match=r"acme-dpu-9\.yaml: ports: a hardware fact, kept in the vendor catalog"):
        load_profiles([sims])


def test_a_profile_must_present_a_card_of_its_model(tmp_path: Path):
    models, sims = _acme(tmp_path)
    path = sims / "acme-dpu-9.yaml"
    data = yaml.safe_load(path.read_text())
    data["part_number"] = "900-9D3B6-00CV-AA0"  # a BlueField's
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(DataFileError, match=r"part_number '900-9D3B6-00CV-AA0' is not one of the catalog's"):
        load_profiles([sims], catalog=load_catalog([models]))
    data.update(part_number="AC-9000-A1", emulates="acme-dpu-10")
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(DataFileError, match=r"emulates: 'acme-dpu-10' is not a catalog model; known: acme-dpu-9, "):
        load_profiles([sims], catalog=load_catalog([models]))
    data.update(emulates="acme-dpu-9")
    del data["factory_firmware"]["DPU_NIC"]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(
        DataFileError, match="factory_firmware needs a version of every firmware component; missing DPU_NIC"
    ):
        load_profiles([sims], catalog=load_catalog([models]))


def test_a_broken_profile_is_refused_with_a_reason(tmp_path: Path):
    data = yaml.safe_load((PROFILE_DIR / "intel-ipu-e2100.yaml").read_text())
    data.update(name="bad", serial_pattern="X{unknown}")
    data["bmc"]["boot_seconds"] = 0
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match=r"bad\.yaml: ") as caught:
        load_profiles([tmp_path])
    assert "serial_pattern: serial_pattern may use only {year}, {week}, {n}" in str(caught.value)
    assert "bmc.boot_seconds: Input should be greater than 0" in str(caught.value)


def test_unknown_profile_names_the_known_ones():
    with pytest.raises(KeyError, match="nvidia-bluefield-3"):
        get_profile("no-such-dpu")


def test_every_profile_builds_an_emulated_card():
    fleet = build_fleet(len(builtin_profiles()), 1, sorted(builtin_profiles()), seed=2)
    for dpu in fleet.dpus:
        assert dpu.firmware == dpu.profile.factory_firmware
        assert [n.name for n in dpu.data_nics] == [p.name for p in dpu.profile.ports]
