"""The emulated host BMC is a Redfish service: given an emulated fleet, when the host driver restarts a
host, sets its boot override and reads its hardware through the host's own BMC, then the emulated host
really reboots, the override is kept (and a Once override is spent by the boot), and the figures are the host's."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from dpufleet.drivers.hostpower import HostPowerError
from dpufleet.drivers.redfish.client import Credentials, RedfishClient
from dpufleet.drivers.redfish.hostbmc import RedfishHostPower, RedfishVirtualMedia, find_host_system
from dpufleet.drivers.redfish.inventory import crawl
from dpufleet.sim.runner import SimOptions, SimRunning, sim_in_thread

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimRunning]:
    options = SimOptions(
        hosts=1, dpus_per_host=1, profiles=["nvidia-bluefield-3"], seed=5,
        directory=tmp_path_factory.mktemp("fleet"), time_scale=0.005, register=False, agents=False,
    )  # fmt: skip
    with sim_in_thread(options) as running:
        yield running


async def host_bmc(fleet: SimRunning, rf: RedfishClient) -> RedfishHostPower:
    return RedfishHostPower(rf, await find_host_system(rf), owns_client=False)


def client(fleet: SimRunning) -> RedfishClient:
    url = fleet.host_bmcs[fleet.fleet.hosts[0].id]
    return RedfishClient(url, Credentials(fleet.username, fleet.password), verify=False, timeout=5, retries=0)


def test_a_restart_through_the_host_bmc_reboots_the_emulated_host(fleet: SimRunning) -> None:
    async def run() -> None:
        async with client(fleet) as rf:
            host = await host_bmc(fleet, rf)
            before = await host.state()
            assert before.power_state == "On" and before.running
            await host.reset("ForceRestart")
            for _ in range(200):  # bounded: 200 reads, 0.05 s apart (the reboot takes 0.45 s here)
                now = await host.state()
                if now.running and now.boot_count > before.boot_count:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"the host never came back: {now}")
        assert fleet.fleet.hosts[0].boot_count >= 1

    asyncio.run(run())


def test_the_host_bmc_refuses_a_reset_type_outside_its_allowable_values(fleet: SimRunning) -> None:
    async def run() -> None:
        async with client(fleet) as rf:
            host = await host_bmc(fleet, rf)
            with pytest.raises(HostPowerError, match="not supported here"):
                await host.reset("Nmi")

    asyncio.run(run())


def test_a_boot_override_is_kept_by_the_host_bmc(fleet: SimRunning) -> None:
    async def run() -> None:
        async with client(fleet) as rf:
            host = await host_bmc(fleet, rf)
            await host.set_boot_override("Pxe", "Continuous")
            assert await host.boot_override() == ("Pxe", "Continuous")
            with pytest.raises(HostPowerError, match="not supported here"):
                await host.set_boot_override("Floppy")

    asyncio.run(run())


def test_hardware_info_is_the_emulated_hosts(fleet: SimRunning) -> None:
    async def run() -> None:
        async with client(fleet) as rf:
            return await (await host_bmc(fleet, rf)).hardware()

    hardware = asyncio.run(run())
    sim = fleet.fleet.hosts[0]
    assert hardware.serial_number == sim.serial
    assert hardware.cpu_model == sim.model.cpu_model and hardware.cpu_count == sim.model.cpu_count
    assert hardware.memory_gib == sim.model.memory_mib / 1024


def test_the_host_bmc_reports_its_consoles(fleet: SimRunning) -> None:
    """The crawl reads the host system's SerialConsole (per protocol, with ports) and its manager's
    serial and graphical consoles: where an operator's console session goes."""

    async def run() -> None:
        async with client(fleet) as rf:
            inventory = await crawl(rf)
        (system,) = inventory.systems
        (serial,) = system.consoles
        assert (serial.kind, serial.enabled, serial.connectTypes) == ("serial", True, ["SSH", "IPMI"])
        assert serial.ports == {"SSH": 2200, "IPMI": 623}
        (manager,) = inventory.managers
        assert system.odataId in manager.managerForServers
        assert {c.kind: c.connectTypes for c in manager.consoles} == {"serial": ["SSH", "IPMI"], "graphical": ["KVMIP"]}
        assert manager.virtualMedia is not None and manager.virtualMedia.endswith("/Managers/BMC/VirtualMedia")

    asyncio.run(run())


def test_virtual_media_is_inserted_and_ejected_through_the_host_bmc(fleet: SimRunning) -> None:
    image = "http://127.0.0.1:9/images/installer.iso"

    async def run() -> None:
        async with client(fleet) as rf:
            media = RedfishVirtualMedia(rf, await find_host_system(rf))
            (slot,) = await media.slots()
            assert not slot.inserted and slot.image is None and "CD" in slot.media_types
            inserted = await media.insert(image)
            assert inserted.inserted and inserted.image == image
            assert (await media.insert(image)).image == image  # the same image again: left as it is
            other = await media.insert("http://127.0.0.1:9/images/other.iso")  # another: swapped
            assert other.image is not None and other.image.endswith("other.iso")
            with pytest.raises(HostPowerError, match="no virtual media slot takes 'Floppy'"):
                await media.insert(image, "Floppy")
            await media.eject()
            (slot,) = await media.slots()
            assert not slot.inserted and slot.image is None
            await media.eject()  # nothing inserted: nothing to do

    asyncio.run(run())


def test_the_host_bmc_refuses_media_that_is_not_a_url(fleet: SimRunning) -> None:
    async def run() -> None:
        async with client(fleet) as rf:
            media = RedfishVirtualMedia(rf, await find_host_system(rf))
            with pytest.raises(HostPowerError, match="http:// or https:// URL"):
                await media.insert("/tmp/installer.iso")
            (slot,) = await media.slots()
            assert not slot.inserted  # nothing changed

    asyncio.run(run())
