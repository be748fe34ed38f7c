"""Flavors are checked against the DPU's inventory before use; reservations admit one owner at a time."""

from __future__ import annotations

import time
from typing import Any

from dpufleet.api.kinds import DPUFlavorSpec
from dpufleet.inventory.catalog import catalog_capabilities
from dpufleet.provisioning.flavor import check_flavor, profile_of
from dpufleet.store import reservations
from dpufleet.store.store import Store
from dpufleet.vendors import builtin_catalog

BF3 = builtin_catalog().models["nvidia-bluefield-3"]
STATUS: dict[str, Any] = {"capabilities": catalog_capabilities(BF3), "vendor": BF3.vendor, "model": BF3.model}


def problems(spec: dict[str, Any]) -> dict[str, str]:
    found = check_flavor(DPUFlavorSpec.model_validate(spec), STATUS, profile_of(STATUS))
    return {p.field: p.message for p in found}


def test_a_flavor_that_fits_has_no_problems() -> None:
    spec = {
        "hugepages": [{"pageSize": "2Mi", "count": 4096}],
        "firmwareParameters": {"NUM_OF_VFS": 16, "LINK_TYPE_P1": "ETH", "SRIOV_EN": True},
        "reservedResources": {"cpus": 2, "memoryMiB": 2048},
    }
    assert problems(spec) == {}


def test_hugepages_beyond_memory_are_refused_naming_the_field() -> None:
    found = problems({"hugepages": [{"pageSize": "1Gi", "count": 40}]})
    assert "40960 MiB of hugepages; the DPU has 32768 MiB" in found["spec.hugepages[0].count"]


def test_hugepages_and_reservations_together_beyond_memory_are_refused() -> None:
    found = problems({"hugepages": [{"pageSize": "1Gi", "count": 30}], "reservedResources": {"memoryMiB": 4096}})
    assert "remain after reservedResources" in found["spec.hugepages"]


def test_more_vfs_than_the_device_supports_are_refused() -> None:
    assert "at most 127" in problems({"firmwareParameters": {"NUM_OF_VFS": 128}})["spec.firmwareParameters.NUM_OF_VFS"]


def test_a_parameter_unknown_for_the_vendor_is_refused_listing_the_known_ones() -> None:
    message = problems({"firmwareParameters": {"num_vfs": 8}})["spec.firmwareParameters.num_vfs"]
    assert "unknown for NVIDIA" in message and "NUM_OF_VFS" in message


def test_bad_values_and_reservations_beyond_the_dpu_are_refused() -> None:
    found = problems(
        {"firmwareParameters": {"LINK_TYPE_P1": "FC"}, "reservedResources": {"cpus": 17, "memoryMiB": 40000}}
    )
    assert "not one of ETH, IB" in found["spec.firmwareParameters.LINK_TYPE_P1"]
    assert "the DPU has 16" in found["spec.reservedResources.cpus"]
    assert "32768 MiB" in found["spec.reservedResources.memoryMiB"]


def test_one_owner_at_a_time_until_release_or_expiry(store: Store) -> None:
    assert reservations.reserve(store, "DPU", "default", "d1", "a", "provisioning", ttl=30) is None
    assert reservations.reserve(store, "DPU", "default", "d1", "a", "provisioning", ttl=30) is None  # renew
    other = reservations.reserve(store, "DPU", "default", "d1", "b", "provisioning", ttl=30)
    assert other is not None and other.owner == "a"
    assert reservations.release(store, "DPU", "default", "d1", "b") is False  # not b's to release
    assert reservations.release(store, "DPU", "default", "d1", "a") is True
    assert reservations.reserve(store, "DPU", "default", "d1", "b", "provisioning", ttl=0.05) is None
    time.sleep(0.1)
    assert reservations.reserve(store, "DPU", "default", "d1", "a", "provisioning", ttl=30) is None  # b expired
    reservations.reserve(store, "DPU", "default", "d2", "a", "provisioning", ttl=30)
    assert reservations.release_all(store, "a") == 2  # a restarted controller clears its own
    assert reservations.holder(store, "DPU", "default", "d1") is None
