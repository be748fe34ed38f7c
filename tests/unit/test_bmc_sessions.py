"""BMC sessions (inventory/bmcs.py): every caller reaches a BMC through one pooled connection, a
credential rotation is a new connection (the old one closed once its requests end), and what the
store lacks is one clear error naming the BMC.

Against a real emulated BMC on 127.0.0.1 and a real SQLite store.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dpufleet.crypto.secrets import SecretBox
from dpufleet.drivers.redfish.client import AuthenticationFailed
from dpufleet.drivers.redfish.pool import RedfishPool
from dpufleet.inventory.bmcs import BMCAccessError, BMCSessions
from dpufleet.sim.bmc import BmcLimits, SimBMC
from dpufleet.sim.fleet import build_fleet, fleet_in_thread
from dpufleet.store.store import Store

pytestmark = pytest.mark.timeout(60)

USER, PASSWORD, ROTATED = "fleetadmin", "Session-Test-Pw1", "Session-Test-Pw2"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SimBMC, str]]:
    fleet = build_fleet(
        1, 1, ["nvidia-bluefield-3"], seed=5, directory=tmp_path_factory.mktemp("fleet"),
        username=USER, password_for=lambda _bmc: PASSWORD, time_scale=0.01,
    )  # fmt: skip
    bmc = next(iter(fleet.bmcs.values()))
    with fleet_in_thread(fleet, per_bmc_ports=True) as running:
        yield bmc, running.endpoints[bmc.id]


@pytest.fixture
def bmc(served: tuple[SimBMC, str]) -> Iterator[SimBMC]:
    sim = served[0]
    yield sim
    sim.accounts["1"].password = PASSWORD  # each test starts with the site's password
    sim.set_limits(BmcLimits())


@pytest.fixture
def store(tmp_path: Path, served: tuple[SimBMC, str]) -> Iterator[Store]:
    opened = Store.open(f"sqlite:///{tmp_path / 'store.db'}", SecretBox.load_or_create(tmp_path))
    opened.migrate()
    opened.create({"kind": "Credential", "metadata": {"name": "site"}, "spec": {"username": USER, "password": PASSWORD}})
    opened.create({"kind": "BMC", "metadata": {"name": "b"}, "spec": {"address": served[1], "credentialsRef": "site"}})
    try:
        yield opened
    finally:
        opened.close()


def rotate(store: Store, bmc: SimBMC) -> None:
    """The operator's rotation: the BMC's account gets a new password, then the Credential does."""
    bmc.accounts["1"].password = ROTATED
    store.patch("Credential", "site", {"spec": {"password": ROTATED}})


def dpu(bmc: SimBMC, **status: Any) -> dict[str, Any]:
    return {
        "kind": "DPU",
        "metadata": {"name": "d", "project": "default"},
        "spec": {"serialNumber": bmc.dpu.serial},
        "status": {"bmc": "b", "serialNumber": bmc.dpu.serial, **status},
    }


def test_every_caller_shares_one_connection_with_its_own_timeout_and_retries(store: Store, bmc: SimBMC) -> None:
    async def scenario() -> None:
        sessions = BMCSessions(store, redfish_pool=RedfishPool())
        crawl = await sessions.open("default", "b", max_age=0.0, retries=2)
        poll = await sessions.open("default", "b", timeout=5.0, retries=0)
        assert crawl.client.transport is poll.client.transport, "one connection per BMC"
        assert (crawl.client.retries, poll.client.retries, poll.client.timeout) == (2, 0, 5.0)
        assert crawl.credentials is not None and crawl.credentials.username == USER
        assert (await poll.client.get("/redfish/v1/Systems"))["Members"]
        await poll.client.aclose()  # a caller closing its client leaves the shared connection open
        assert not crawl.client.transport.closed
        await sessions.pool.aclose()

    asyncio.run(scenario())


def test_a_credential_rotation_gives_a_new_connection_and_closes_the_old_one(store: Store, bmc: SimBMC) -> None:
    async def scenario() -> None:
        sessions = BMCSessions(store, redfish_pool=RedfishPool())
        before = await sessions.open("default", "b")
        await before.client.get("/redfish/v1/Systems")
        old = before.client.transport
        rotate(store, bmc)

        with pytest.raises(AuthenticationFailed):  # the old password, kept for max_age, is refused now
            await (await sessions.open("default", "b")).client.get("/redfish/v1/Systems")
        before.failed()  # as every caller does after a failed request: read the credentials again
        after = await sessions.open("default", "b")
        assert after.credentials is not None and after.credentials.password == ROTATED
        assert after.client.transport is not old and old.closed, "the old connection is closed"
        assert (await after.client.get("/redfish/v1/Systems"))["Members"]
        assert len(sessions.pool) == 1
        await sessions.pool.aclose()

    asyncio.run(scenario())


def test_a_request_in_flight_finishes_on_the_old_connection_before_it_closes(store: Store, bmc: SimBMC) -> None:
    async def scenario() -> None:
        sessions = BMCSessions(store, redfish_pool=RedfishPool())
        before = await sessions.open("default", "b")
        bmc.set_limits(BmcLimits(latency_seconds=0.5))
        slow = asyncio.create_task(before.client.get("/redfish/v1/Systems"))
        await asyncio.sleep(0.1)
        store.patch("Credential", "site", {"spec": {"password": ROTATED}})
        await sessions.open("default", "b", max_age=0.0)  # a caller that reads the credentials now
        assert not before.client.transport.closed, "not closed under a request in flight"
        assert (await slow)["Members"], "the request in flight is answered"
        assert before.client.transport.closed
        await sessions.pool.aclose()

    asyncio.run(scenario())


def test_a_changed_address_in_the_bmc_object_is_seen_at_once(store: Store, bmc: SimBMC) -> None:
    async def scenario() -> None:
        sessions = BMCSessions(store, redfish_pool=RedfishPool())
        first = await sessions.open("default", "b")
        await first.client.get("/redfish/v1/Systems")
        address = first.access.address.replace("127.0.0.1", "localhost")
        moved = store.patch("BMC", "b", {"spec": {"address": address}})
        second = await sessions.open("default", "b", bmc=moved)  # well within max_age
        assert second.client.base_url == address and second.bmc is moved
        assert first.client.transport.closed and len(sessions.pool) == 1
        assert (await second.client.get("/redfish/v1/Systems"))["Members"]
        await sessions.pool.aclose()

    asyncio.run(scenario())


def test_what_the_store_lacks_is_one_error_naming_the_bmc(store: Store, bmc: SimBMC) -> None:
    spec = {"address": "http://127.0.0.1:9", "credentialsRef": "never-created"}
    store.create({"kind": "BMC", "metadata": {"name": "orphan"}, "spec": spec})
    served = bmc.requests_served

    async def scenario() -> None:
        sessions = BMCSessions(store, redfish_pool=RedfishPool())
        with pytest.raises(BMCAccessError) as missing:
            await sessions.open("default", "orphan")
        assert missing.value.reason == "CredentialsMissing"
        assert str(missing.value) == "credentials 'never-created' of BMC 'orphan' not found in project 'default'"
        with pytest.raises(BMCAccessError) as gone:
            await sessions.open("default", "nowhere")
        assert (gone.value.reason, gone.value.message) == ("NoBMC", "BMC 'nowhere' does not exist in project 'default'")
        lone = dpu(bmc)
        lone["status"].pop("bmc")
        with pytest.raises(BMCAccessError) as unmanaged:
            await sessions.for_dpu(lone)
        assert (unmanaged.value.reason, unmanaged.value.message) == ("NoBMC", "dpu 'd' is not managed through a BMC")
        assert len(sessions.pool) == 0

    asyncio.run(scenario())
    assert bmc.requests_served == served, "nothing was asked of any BMC"


def test_the_dpu_system_is_the_crawled_one_or_found_by_serial(store: Store, bmc: SimBMC) -> None:
    async def scenario() -> None:
        sessions = BMCSessions(store, redfish_pool=RedfishPool())
        found = await (await sessions.for_dpu(dpu(bmc))).system()
        assert found.startswith("/redfish/v1/Systems/")
        body = await (await sessions.for_dpu(dpu(bmc))).client.get(found)
        assert body["SerialNumber"] == bmc.dpu.serial

        served = bmc.requests_served
        crawled = await sessions.for_dpu(dpu(bmc, bmcSystem=found))
        assert await crawled.system() == found
        assert bmc.requests_served == served, "a known system path costs no request"
        assert await crawled.system(rediscover=True) == found
        assert bmc.requests_served > served, "rediscover asks the BMC"
        await sessions.pool.aclose()

    asyncio.run(scenario())
