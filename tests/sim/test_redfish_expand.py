"""Redfish $expand: given BMCs that offer it in their service root, when the crawl reads a collection it
asks for the members in place and reads the same inventory in fewer requests; a BMC that does not offer
it (the BF-23.10 style) is read member by member, and refuses the query if asked anyway."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dpufleet.drivers.redfish.client import Credentials, RedfishClient, expands_members
from dpufleet.drivers.redfish.inventory import BMCInventory, crawl
from dpufleet.sim.fleet import FleetServer, build_fleet, fleet_in_thread

from .conftest import PASSWORD, USER

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetServer]:
    fleet = build_fleet(
        2, 1, ["nvidia-bluefield-3", "nvidia-bluefield-3-bf2310"], seed=77,
        directory=tmp_path_factory.mktemp("fleet"), username=USER, password_for=lambda _b: PASSWORD,
        time_scale=0.005,
    )  # fmt: skip
    with fleet_in_thread(fleet) as running:
        yield running


def _bmc(served: FleetServer, style: str) -> str:
    return next(i for i, b in served.fleet.bmcs.items() if b.dpu.profile.redfish_style == style)


def _crawl(served: FleetServer, bmc_id: str, *, expand: bool = True) -> tuple[BMCInventory, int]:
    """The crawl's inventory and how many requests the BMC served for it."""
    bmc = served.fleet.bmcs[bmc_id]

    async def run() -> BMCInventory:
        async with RedfishClient(served.endpoints[bmc_id], Credentials(USER, PASSWORD), timeout=5) as rf:
            root = await rf.service_root()
            if expand is False:  # as if the root had not offered it
                root = {k: v for k, v in root.items() if k != "ProtocolFeaturesSupported"}
            return await crawl(rf, root)

    before = bmc.requests_served
    inventory = asyncio.run(run())
    return inventory, bmc.requests_served - before


def test_a_standard_bmc_offers_expand_and_the_crawl_reads_the_same_inventory_in_fewer_requests(
    served: FleetServer,
) -> None:
    bmc_id = _bmc(served, "standard")
    root = httpx.get(served.endpoints[bmc_id] + "/redfish/v1").json()
    assert expands_members(root)
    expanded, with_expand = _crawl(served, bmc_id)
    one_by_one, without = _crawl(served, bmc_id, expand=False)
    assert expanded.model_dump() == one_by_one.model_dump()
    assert len(expanded.firmware) >= 5 and expanded.systems and expanded.chassis
    # every collection's members (systems, NICs, managers, chassis, firmware) come with the collection
    assert with_expand <= without - len(expanded.firmware)


def test_the_emulator_expands_a_collection_in_place(served: FleetServer) -> None:
    url = served.endpoints[_bmc(served, "standard")] + "/redfish/v1/UpdateService/FirmwareInventory"
    plain = httpx.get(url, auth=(USER, PASSWORD)).json()
    expanded = httpx.get(url, params={"$expand": ".($levels=1)"}, auth=(USER, PASSWORD)).json()
    assert [m["@odata.id"] for m in expanded["Members"]] == [m["@odata.id"] for m in plain["Members"]]
    for member in expanded["Members"]:
        alone = httpx.get(served.endpoints[_bmc(served, "standard")].split("/bmc/")[0] + member["@odata.id"],
                          auth=(USER, PASSWORD)).json()  # fmt: skip
        assert member == alone
    bad = httpx.get(url, params={"$expand": "*($levels=3)"}, auth=(USER, PASSWORD))
    assert bad.status_code == 400
    assert "QueryParameterValueFormatError" in bad.json()["error"]["@Message.ExtendedInfo"][0]["MessageId"]


def test_a_bmc_without_expand_is_read_member_by_member_and_refuses_the_query(served: FleetServer) -> None:
    bmc_id = _bmc(served, "bf-23.10")
    root = httpx.get(served.endpoints[bmc_id] + "/redfish/v1").json()
    assert not expands_members(root)
    inventory, requests = _crawl(served, bmc_id)
    assert len(inventory.firmware) >= 5
    assert requests > len(inventory.firmware)  # one per firmware component, at least
    refused = httpx.get(
        served.endpoints[bmc_id] + "/redfish/v1/Systems", params={"$expand": "."}, auth=(USER, PASSWORD)
    )
    assert refused.status_code == 501


def test_expand_is_read_from_the_service_root_as_devices_state_it() -> None:
    def root(**expand: object) -> dict[str, object]:
        return {"ProtocolFeaturesSupported": {"ExpandQuery": expand}}

    assert expands_members(root(NoLinks=True, Levels=True, MaxLevels=1))
    assert expands_members(root(ExpandAll=True))
    assert not expands_members(root(Links=True))  # only hyperlinks in Links: members are not among them
    assert not expands_members(root(NoLinks=True, Levels=True, MaxLevels=0))
    assert not expands_members({"ProtocolFeaturesSupported": {"ExpandQuery": None}})
    assert not expands_members({})


def test_the_crawl_fetches_members_an_expanding_bmc_left_as_links(tmp_path: Path) -> None:
    """A BMC may leave a member it cannot read now as a bare link: the crawl reads that one alone."""
    fleet = build_fleet(
        1, 1, ["nvidia-bluefield-3"], seed=78, directory=tmp_path / "f", username=USER,
        password_for=lambda _b: PASSWORD, time_scale=0.005,
    )  # fmt: skip

    async def run(url: str) -> list[dict[str, object]]:
        async with RedfishClient(url, Credentials(USER, PASSWORD), timeout=5) as rf:
            await rf.service_root()
            original = rf.get

            async def get(path: str, *, anonymous: bool = False) -> dict[str, object]:
                body = await original(path, anonymous=anonymous)
                if "$expand" in path:  # as a BMC that expanded all but the first member
                    members = body["Members"]
                    body = {**body, "Members": [{"@odata.id": members[0]["@odata.id"]}, *members[1:]]}
                return body

            rf.get = get  # type: ignore[method-assign]
            return await rf.members("/redfish/v1/UpdateService/FirmwareInventory")

    with fleet_in_thread(fleet) as running:
        url = next(iter(running.endpoints.values()))
        members = asyncio.run(run(url))
        plain = httpx.get(url + "/redfish/v1/UpdateService/FirmwareInventory", auth=(USER, PASSWORD)).json()
    assert [m["@odata.id"] for m in members] == [m["@odata.id"] for m in plain["Members"]]
    assert all("Version" in m for m in members)


def test_a_bmc_that_offers_expand_but_refuses_it_is_read_member_by_member(served: FleetServer) -> None:
    """A root that says more than the firmware does (DMTF's mockups, served statically, are such): the
    first refused $expand turns it off for that BMC, and the crawl still reads everything."""
    bmc_id = _bmc(served, "bf-23.10")

    async def run() -> tuple[BMCInventory, bool]:
        async with RedfishClient(served.endpoints[bmc_id], Credentials(USER, PASSWORD), timeout=5) as rf:
            root = await rf.service_root()
            claims = {**root, "ProtocolFeaturesSupported": {"ExpandQuery": {"NoLinks": True}}}
            inventory = await crawl(rf, claims)
            return inventory, rf.transport.expand_members

    inventory, still_expanding = asyncio.run(run())
    reference, _ = _crawl(served, bmc_id)
    assert inventory.model_dump() == reference.model_dump()
    assert not still_expanding
