"""The vendor catalog: a bad model file is refused naming the file and the field; a card is matched
by part number, then vendor and model, then PCI IDs; a card nothing matches is unknown, not an error."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from dpufleet.api.kinds import ImageSpec
from dpufleet.drivers.registry import INSTALL_PATH_NAMES
from dpufleet.inventory.catalog import find_profile
from dpufleet.provisioning.machine import StepFailed
from dpufleet.provisioning.plan import choose_install_path, plan_components
from dpufleet.vendors import (
    INSTALL_PATHS,
    MODELS_DIR,
    Catalog,
    DataFileError,
    DpuModel,
    builtin_catalog,
    load_catalog,
    load_generic,
)

BUILTIN = {"nvidia-bluefield-2", "nvidia-bluefield-3", "intel-ipu-e2100", "amd-pensando-dsc", "marvell-octeon-10"}


def bf3_data(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((MODELS_DIR / "nvidia-bluefield-3.yaml").read_text())
    data.update(changes)
    return data


def model(**changes: Any) -> DpuModel:
    return DpuModel.model_validate(bf3_data(**changes))


def write(directory: Path, data: dict[str, Any], name: str | None = None) -> Path:
    directory.mkdir(exist_ok=True)
    path = directory / f"{name or data['name']}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# --- the packaged catalog ---------------------------------------------------------------------------


def test_the_packaged_catalog_knows_five_models_each_recognisable():
    catalog = builtin_catalog()
    assert {m.name for m in catalog} == BUILTIN
    for m in catalog:
        assert m.part_numbers and m.host_pci and m.install_paths
        assert catalog.lookup(part_number=m.part_numbers[0]).model == m
        assert catalog.lookup(vendor=m.vendor, model=m.model).model == m
        host_nic = next(f for f in m.host_pci if f.role == "nic")
        assert catalog.lookup(pci=(host_nic.vendor_id, host_nic.device_id)).model == m


def test_every_install_path_a_model_may_name_has_a_driver():
    assert set(INSTALL_PATHS) == INSTALL_PATH_NAMES


# --- schema errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"cpu": {"cores": 0, "model": "x"}}, "cpu.cores: Input should be greater than 0"),
        ({"cpu": {"cores": 16, "model": "x", "mhz": 2000}}, "cpu.mhz: unknown field"),
        ({"family": None}, "family: Input should be a valid string"),
        ({"part_numbers": []}, "part_numbers: List should have at least 1 item"),
        ({"part_numbers": ["900[AB]"]}, "part_numbers: '900[AB]': a part number may hold"),
        ({"install_paths": ["pxe"]}, "install_paths[0]: Input should be 'redfish-update'"),
    ],
)
def test_a_bad_model_file_names_the_file_and_the_field(tmp_path: Path, changes: dict[str, Any], expected: str):
    path = write(tmp_path, bf3_data(**{"name": "acme-dpu-9", "vendor": "Acme", "part_numbers": ["AC-9"], **changes}))
    with pytest.raises(DataFileError) as caught:
        load_catalog([tmp_path])
    assert str(caught.value).startswith(f"{path}: ")
    assert expected in str(caught.value)


def test_a_bad_pci_id_and_a_missing_field_are_both_named(tmp_path: Path):
    data = bf3_data(name="acme-dpu-9", vendor="Acme", part_numbers=["AC-9"])
    data["host_pci"][0]["vendor_id"] = "15b"
    del data["memory"]
    write(tmp_path, data)
    with pytest.raises(DataFileError) as caught:
        load_catalog([tmp_path])
    assert caught.value.problems == [
        "host_pci[0].vendor_id: expected 4 hex digits, got '15b'",
        "memory: required field is missing",
    ]


def test_files_that_are_not_a_model_are_refused_with_a_reason(tmp_path: Path):
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    with pytest.raises(DataFileError, match=r"broken\.yaml: not valid YAML \(line 2\)"):
        load_catalog([tmp_path])
    (tmp_path / "broken.yaml").write_text("- a list\n")
    with pytest.raises(DataFileError, match=r"broken\.yaml: must be a YAML mapping, not list"):
        load_catalog([tmp_path])
    (tmp_path / "broken.yaml").unlink()
    write(tmp_path, bf3_data(name="acme-dpu-9"), name="acme")
    with pytest.raises(DataFileError, match=r"acme\.yaml: name: 'acme-dpu-9' must match the file name \('acme'\)"):
        load_catalog([tmp_path])


def test_repeated_firmware_ids_are_refused():
    data = bf3_data()
    data["firmware"].append(dict(data["firmware"][0]))
    with pytest.raises(ValueError, match="firmware ids must be unique; repeated: BMC_Firmware"):
        DpuModel.model_validate(data)


def test_two_models_claiming_one_part_number_are_refused_naming_both_files(tmp_path: Path):
    path = write(tmp_path, bf3_data(name="acme-dpu-9", vendor="Acme"))
    with pytest.raises(DataFileError) as caught:
        load_catalog([tmp_path])
    assert str(caught.value).startswith(f"{path}: part_numbers: '900-9D3B6-00CV-AA0' is also claimed by ")
    assert str(caught.value).endswith("nvidia-bluefield-3.yaml")


def test_a_site_directory_corrects_a_builtin_model(tmp_path: Path):
    write(tmp_path, bf3_data(family="BlueField-3"))
    catalog = load_catalog([tmp_path])
    assert catalog.models["nvidia-bluefield-3"].family == "BlueField-3"
    assert catalog.sources["nvidia-bluefield-3"] == tmp_path / "nvidia-bluefield-3.yaml"
    assert len(catalog) == len(BUILTIN)


# --- lookup order -----------------------------------------------------------------------------------

PN_MODEL = model(name="by-part", vendor="Acme", model="DPU 9", part_numbers=["AC-9*"])
NAMED_MODEL = model(name="by-name", vendor="Zeta", model="Z1", part_numbers=["ZE-1"])
CATALOG = Catalog({m.name: m for m in (PN_MODEL, NAMED_MODEL)})


def test_the_part_number_decides_before_vendor_and_model():
    match = CATALOG.lookup(part_number="ac-9000-a1", vendor="Zeta", model="Z1")
    assert (match.model, match.matched_by) == (PN_MODEL, "part-number")


def test_vendor_and_model_decide_when_the_part_number_matches_nothing():
    match = CATALOG.lookup(part_number="XX-1", vendor="zeta ", model="z1", pci=("15b3", "a2dc"))
    assert (match.model, match.matched_by) == (NAMED_MODEL, "vendor-model")


def test_pci_ids_decide_last_and_only_when_one_model_has_them():
    pci_only = model(
        name="by-pci",
        vendor="Omega",
        model="O1",
        part_numbers=["OM-1"],
        host_pci=[
            {"role": "nic", "vendor_id": "abcd", "device_id": "0001", "class_code": "020000", "description": "x"}
        ],
    )
    catalog = Catalog({m.name: m for m in (PN_MODEL, NAMED_MODEL, pci_only)})
    match = catalog.lookup(vendor="Nobody", model="Nothing", pci=("0xABCD", "0x0001"))
    assert (match.model, match.matched_by) == (pci_only, "pci-id")
    # PN_MODEL and NAMED_MODEL share BlueField-3's PCI IDs: the IDs alone do not say which card this is
    assert not catalog.lookup(pci=("15b3", "a2dc")).known


def test_an_exact_part_number_beats_a_pattern():
    exact = model(name="exact", vendor="Acme", model="DPU 9 rev B", part_numbers=["AC-9000-B"])
    catalog = Catalog({m.name: m for m in (PN_MODEL, exact)})
    assert catalog.lookup(part_number="AC-9000-B").model == exact
    assert catalog.lookup(part_number="AC-9000-C").model == PN_MODEL


def test_a_card_nothing_matches_is_unknown_not_an_error():
    match = CATALOG.lookup(part_number="NOPE", vendor="Nobody", model="Nothing", pci=("ffff", "ffff"))
    assert not match.known and match.model is None and match.matched_by is None
    assert match.identity.part_number == "NOPE"
    assert CATALOG.lookup().model is None


def test_an_unknown_model_is_planned_onto_the_slots_its_bmc_reports():
    """A generic DPU is never refused for its model: a component is planned onto the reported slot it names."""
    assert find_profile(part_number="NOPE-1", vendor="Nobody", model="Nothing") is None
    image = ImageSpec.model_validate(
        {"version": "1", "components": [{"name": "X_OS", "type": "os", "version": "1", "sha256": "0" * 64}]}
    )
    reported = [{"id": "X_OS", "name": "OS", "version": "0.9"}, {"id": "X_ROM", "version": "1", "updateable": False}]
    planned = plan_components(image, find_profile(part_number="NOPE-1"), "img", reported)
    assert [(p.component.name, p.target) for p in planned] == [("X_OS", "X_OS")]
    assert choose_install_path({}, None) == "redfish-update"


@pytest.mark.parametrize("slot", ["X_ROM", "DPU_OS"], ids=["not-updateable", "not-reported"])
def test_a_generic_dpus_component_naming_no_updateable_reported_slot_is_refused_naming_them(slot: str):
    image = ImageSpec.model_validate(
        {"version": "1", "components": [{"name": slot, "type": "os", "version": "1", "sha256": "0" * 64}]}
    )
    reported = [{"id": "X_OS", "version": "0.9"}, {"id": "X_ROM", "version": "1", "updateable": False}]
    with pytest.raises(StepFailed) as caught:
        plan_components(image, None, "img", reported)
    assert caught.value.reason == "NoInstallTarget" and not caught.value.retryable
    assert "(X_OS)" in caught.value.message and repr(slot) in caught.value.message
    with pytest.raises(StepFailed, match="not supported by a generic DPU"):
        choose_install_path({"installPath": "rshim"}, None)


def test_the_checker_lists_the_models_or_names_the_field_at_fault(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from dpufleet.vendors.__main__ import main

    data = bf3_data(name="acme-dpu-9", vendor="Acme", model="Acme DPU 9", part_numbers=["AC-9*"])
    path = write(tmp_path, data)
    assert main([str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "VENDOR", "FAMILY", "MODEL", "PART", "NUMBERS", "FILE"]
    assert lines[-1].split() == ["acme-dpu-9", "Acme", "BlueField", "Acme", "DPU", "9", "AC-9*", str(path)]
    data["cpu"]["threads"] = 32
    write(tmp_path, data)
    assert main([str(tmp_path)]) == 1
    assert capsys.readouterr().err == f"error: {path}: cpu.threads: unknown field\n"


# --- PCI IDs against the pci.ids database Debian ships (apt: hwdata) -------------------------------------

PCI_IDS = Path("/usr/share/misc/pci.ids")
# IDs the catalog names that pci.ids (hwdata 0.368, April 2023) does not list yet: checked by hand
# against the vendors' Linux drivers, to be replaced by pci.ids' word once it lists them.
NOT_IN_PCI_IDS = {("8086", "1452"), ("8086", "145c"), ("177d", "b900"), ("177d", "b903")}


def _pci_ids() -> dict[tuple[str, str], str]:
    names: dict[tuple[str, str], str] = {}
    vendor = ""
    for line in PCI_IDS.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("C "):
            break  # device classes follow the vendors
        if not line.strip() or line.startswith("#") or line.startswith("\t\t"):
            continue
        if line.startswith("\t"):
            names[(vendor, line[1:5])] = line[7:].strip()
        else:
            vendor = line[:4]
    return names


def test_every_catalog_pci_id_is_the_one_pci_ids_names():
    if not PCI_IDS.exists():
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("pci.ids is missing (apt-get install pci.ids)", pytrace=False)
        pytest.skip("pci.ids is missing (apt-get install pci.ids)")
    names = _pci_ids()
    for m in builtin_catalog():
        for vendor_id, device_id, _role in m.pci_ids():
            if (vendor_id, device_id) in NOT_IN_PCI_IDS:
                assert (vendor_id, device_id) not in names, f"{m.name}: pci.ids now lists {vendor_id}:{device_id}"
                continue
            assert (vendor_id, device_id) in names, f"{m.name}: {vendor_id}:{device_id} is not in pci.ids"
        described = {(f.vendor_id, f.device_id): f.description for f in m.host_pci}
        for ids, description in described.items():
            if ids in names:
                assert description == names[ids], f"{m.name}: {ids} is {names[ids]!r} in pci.ids"


def test_the_generic_model_is_a_catalog_entry_with_no_capabilities_to_claim(tmp_path: Path):
    generic = builtin_catalog().generic
    assert (generic.name, list(generic.install_paths)) == ("generic", ["redfish-update"])
    assert builtin_catalog().get("generic") is None  # never matched: what a card matching nothing becomes
    bad = tmp_path / "generic.yaml"
    bad.write_text("name: generic\ndescription: x\ninstall_paths: [carrier-pigeon]\n")
    with pytest.raises(DataFileError, match="install_paths"):
        load_generic(bad)
