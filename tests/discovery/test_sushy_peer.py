"""Our Redfish driver against a Redfish service we did not write: OpenStack's sushy-tools emulator.

Given sushy-emulator (fake driver, HTTP Basic auth) on 127.0.0.1, when the driver crawls it and
resets a system, then it reads every system and the system's PowerState follows the reset.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import aiohttp
import pytest

from dpufleet.drivers.discovery.scan import ProbeOutcome, probe
from dpufleet.drivers.hostpower import HostPowerError
from dpufleet.drivers.redfish.client import AuthenticationFailed, Credentials, RedfishClient
from dpufleet.drivers.redfish.hostbmc import RedfishHostPower
from dpufleet.drivers.redfish.inventory import crawl
from dpufleet.drivers.redfish.power import RedfishPower
from dpufleet.inventory.recognition import recognize
from dpufleet.vendors import builtin_catalog
from support.sushy import PASSWORD, SYSTEMS, USER, Sushy, running_sushy

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def sushy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sushy]:
    with running_sushy(tmp_path_factory.mktemp("sushy")) as running:
        yield running


def client(sushy: Sushy, password: str = PASSWORD) -> RedfishClient:
    # sushy-tools' fake driver keeps its state in one SQLite file shared by Flask's request threads and
    # answers "HTTP 500: database is locked" to concurrent requests: one request at a time, as for a
    # BMC that serves a single session.
    return RedfishClient(sushy.url, Credentials(USER, password), verify=False, timeout=5, retries=0, max_concurrency=1)


def test_a_scan_recognises_sushy_as_redfish(sushy: Sushy) -> None:
    async def run() -> None:
        async with aiohttp.ClientSession() as http:
            result = await probe(http, sushy.url, timeout=5)
        assert result.outcome == ProbeOutcome.REDFISH, result.detail

    asyncio.run(run())


def test_crawl_reads_every_system_with_its_power_state(sushy: Sushy) -> None:
    async def run() -> None:
        async with client(sushy) as rf:
            inventory = await crawl(rf)
        systems = {s.id: s for s in inventory.systems}
        assert set(systems) == {s["uuid"] for s in SYSTEMS}
        for spec in SYSTEMS:
            system = systems[spec["uuid"]]
            assert system.powerState == spec["power_state"]
            assert system.uuid == spec["uuid"]
            assert "ForceOff" in system.resetTypes and "On" in system.resetTypes
            assert system.macAddresses == [nic["mac"] for nic in spec["nics"]]
            assert not system.is_dpu  # sushy's systems are plain servers
        assert inventory.service.redfishVersion
        # and no evidence makes one of them a DPU: a host server is never taken for one
        assert recognize(inventory, builtin_catalog(), "bmc/sushy").dpus == []

    asyncio.run(run())


def test_reset_force_off_then_on_changes_the_power_state(sushy: Sushy) -> None:
    async def wait_power(power: RedfishPower, state: str) -> None:
        for _ in range(100):  # bounded: 100 reads, 0.05 s apart
            if await power.get_power_state() == state:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"PowerState never became {state}; last {await power.get_power_state()}")

    async def run() -> None:
        async with client(sushy) as rf:
            power = RedfishPower(rf, f"/redfish/v1/Systems/{SYSTEMS[0]['uuid']}")
            await power.validate()
            await wait_power(power, "On")
            await power.reset("ForceOff")
            await wait_power(power, "Off")
            await power.reset("On")
            await wait_power(power, "On")

    asyncio.run(run())


def test_wrong_password_is_an_authentication_failure(sushy: Sushy) -> None:
    async def run() -> None:
        async with client(sushy, password="wrong") as rf:
            root = await rf.service_root()  # anonymous: still answers
            assert root["RedfishVersion"]
            with pytest.raises(AuthenticationFailed):
                await crawl(rf, root)

    asyncio.run(run())


def host_bmc(rf: RedfishClient, index: int = 0) -> RedfishHostPower:
    return RedfishHostPower(rf, f"/redfish/v1/Systems/{SYSTEMS[index]['uuid']}")


def test_sushy_as_a_host_bmc_powers_the_host_off_and_on(sushy: Sushy) -> None:
    async def wait_power(host: RedfishHostPower, state: str) -> None:
        for _ in range(100):  # bounded: 100 reads, 0.05 s apart
            if (await host.state()).power_state == state:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"PowerState never became {state}")

    async def run() -> None:
        async with client(sushy) as rf:
            host = host_bmc(rf, 1)
            await host.validate()
            await host.reset("On")
            await wait_power(host, "On")
            assert (await host.state()).running
            await host.reset("ForceRestart")
            await wait_power(host, "On")
            await host.reset("ForceOff")
            await wait_power(host, "Off")
            assert not (await host.state()).running

    asyncio.run(run())


def test_sushy_as_a_host_bmc_refuses_a_reset_type_it_does_not_allow(sushy: Sushy) -> None:
    async def run() -> None:
        async with client(sushy) as rf:
            with pytest.raises(HostPowerError, match="not supported here"):
                await host_bmc(rf).reset("NoSuchReset")

    asyncio.run(run())


def test_sushy_as_a_host_bmc_takes_a_boot_override(sushy: Sushy) -> None:
    async def run() -> None:
        async with client(sushy) as rf:
            host = host_bmc(rf)
            await host.set_boot_override("Pxe", "Once")
            assert (await host.boot_override())[0] == "Pxe"
            await host.set_boot_override("Hdd", "Continuous")
            assert await host.boot_override() == ("Hdd", "Continuous")

    asyncio.run(run())


def test_sushy_as_a_host_bmc_reports_hardware_with_unknown_for_zero(sushy: Sushy) -> None:
    async def run() -> None:
        async with client(sushy) as rf:
            hardware = await host_bmc(rf).hardware()
        assert hardware.cpu_count is None or hardware.cpu_count > 0
        assert hardware.memory_gib is None or hardware.memory_gib > 0
        assert hardware.serial_number is None or hardware.serial_number == hardware.serial_number.strip()

    asyncio.run(run())
