"""The emulated BMC speaks real Redfish over HTTP: auth, power, boot, updates, sessions, limits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from dpufleet.sim.bmc import BmcLimits
from dpufleet.sim.fleet import FleetServer
from dpufleet.sim.messages import MESSAGES
from support.net import poll

from .conftest import PASSWORD, USER

AUTH = (USER, PASSWORD)
POLL_SECONDS = 10.0


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = POLL_SECONDS) -> Any:
    return poll(what, predicate, bool, timeout, interval=0.02)


def first(served: FleetServer, index: int = 0) -> tuple[str, str]:
    bmc_id = list(served.endpoints)[index]
    return bmc_id, served.service_root(bmc_id)


def message_ids(response: httpx.Response) -> list[str]:
    return [m["MessageId"] for m in response.json()["error"]["@Message.ExtendedInfo"]]


def test_service_root_is_anonymous_everything_else_needs_credentials(served: FleetServer):
    _, root = first(served)
    assert httpx.get(root).status_code == 200
    assert httpx.get(root + "/").json()["Links"]["Sessions"]["@odata.id"].endswith("/SessionService/Sessions")
    assert httpx.get(root + "/$metadata").text.startswith("<?xml")
    denied = httpx.get(root + "/Systems")
    assert denied.status_code == 401
    assert denied.headers["WWW-Authenticate"].startswith("Basic")
    assert message_ids(denied) == ["Base.1.22.NoValidSession"]
    assert httpx.get(root + "/Systems", auth=(USER, "wrong-password")).status_code == 401
    assert httpx.get(root + "/Nope").status_code == 401  # no probing without credentials
    missing = httpx.get(root + "/Nope", auth=AUTH)
    assert missing.status_code == 404 and message_ids(missing) == ["Base.1.22.ResourceNotFound"]
    assert httpx.delete(root + "/Systems/DPU", auth=AUTH).status_code == 405


def test_bmc_data_agrees_with_its_dpu(served: FleetServer):
    for bmc_id, bmc in served.fleet.bmcs.items():
        root = served.service_root(bmc_id)
        dpu = bmc.dpu
        system = httpx.get(root + "/Systems/DPU", auth=AUTH).json()
        assert system["SystemType"] == "DPU"
        assert system["SerialNumber"] == dpu.serial
        assert system["ProcessorSummary"]["CoreCount"] == dpu.profile.cpu.cores
        chassis = httpx.get(root + "/Chassis/Card1", auth=AUTH).json()
        assert (chassis["ChassisType"], chassis["SerialNumber"]) == ("Card", dpu.serial)
        for nic in dpu.nics:
            iface = httpx.get(root + f"/Systems/DPU/EthernetInterfaces/{nic.name}", auth=AUTH).json()
            assert iface["MACAddress"] == nic.mac
        inventory = httpx.get(root + "/UpdateService/FirmwareInventory", auth=AUTH).json()
        assert inventory["Members@odata.count"] == len(dpu.profile.firmware)
        for member in inventory["Members"]:
            item = httpx.get(httpx.URL(root).join(member["@odata.id"]), auth=AUTH).json()
            assert item["Version"] == dpu.firmware[item["Id"]]
        manager = httpx.get(root + "/Managers/BMC", auth=AUTH).json()
        assert manager["FirmwareVersion"] == dpu.firmware[dpu.profile.bmc.firmware_id]


def test_power_reset_changes_power_state_over_time(served: FleetServer):
    _, root = first(served, 1)
    system_url = root + "/Systems/DPU"
    reset = root + "/Systems/DPU/Actions/ComputerSystem.Reset"

    def power() -> str:
        return str(httpx.get(system_url, auth=AUTH).json()["PowerState"])

    assert httpx.post(reset, json={"ResetType": "ForceOff"}, auth=AUTH).status_code == 204
    wait_for(lambda: power() == "Off", "power off")
    assert httpx.post(reset, json={"ResetType": "On"}, auth=AUTH).status_code == 204
    assert power() == "PoweringOn"  # booting takes (emulated) time
    wait_for(lambda: power() == "On", "power on")
    assert httpx.get(system_url, auth=AUTH).json()["BootProgress"]["LastState"] == "OSRunning"
    bad = httpx.post(reset, json={"ResetType": "Explode"}, auth=AUTH)
    assert bad.status_code == 400 and message_ids(bad) == ["Base.1.22.ActionParameterValueNotInList"]
    entries = httpx.get(root + "/Managers/BMC/LogServices/SEL/Entries", auth=AUTH).json()["Members"]
    assert {"ResourceEvent.1.4.ResourcePoweredOff", "ResourceEvent.1.4.ResourcePoweredOn"} <= {
        e["MessageId"] for e in entries
    }


def test_boot_override_patch_persists_until_the_next_boot(served: FleetServer):
    _, root = first(served, 2)
    url = root + "/Systems/DPU"
    patched = httpx.patch(
        url, json={"Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once"}}, auth=AUTH
    )
    assert patched.status_code == 200
    boot = httpx.get(url, auth=AUTH).json()["Boot"]
    assert (boot["BootSourceOverrideTarget"], boot["BootSourceOverrideEnabled"]) == ("Pxe", "Once")
    bad = httpx.patch(url, json={"Boot": {"BootSourceOverrideTarget": "Floppy"}}, auth=AUTH)
    assert bad.status_code == 400 and message_ids(bad) == ["Base.1.22.PropertyValueNotInList"]
    httpx.post(url + "/Actions/ComputerSystem.Reset", json={"ResetType": "ForceRestart"}, auth=AUTH)
    wait_for(
        lambda: httpx.get(url, auth=AUTH).json()["Boot"]["BootSourceOverrideEnabled"] == "Disabled",
        "one-time boot override consumed",
    )


def test_simple_update_runs_a_task_that_changes_the_firmware_version(served: FleetServer):
    bmc_id, root = first(served, 3)
    dpu = served.fleet.bmcs[bmc_id].dpu
    uefi = dpu.profile.firmware_of_kind("uefi")
    assert uefi is not None
    started = httpx.post(
        root + "/UpdateService/Actions/UpdateService.SimpleUpdate",
        json={
            "ImageURI": f"http://127.0.0.1:9/images/{uefi.id}-9.9.9.bin",
            "Targets": [f"{httpx.URL(root).path}/UpdateService/FirmwareInventory/{uefi.id}"],
        },
        auth=AUTH,
    )
    assert started.status_code == 202
    task_url = str(httpx.URL(root).join(started.headers["Location"]))
    first_state = started.json()["TaskState"]
    assert first_state in ("New", "Running")
    done = wait_for(
        lambda: (t := httpx.get(task_url, auth=AUTH).json())["TaskState"] == "Completed" and t, "update task"
    )
    assert done["PercentComplete"] == 100 and done["TaskStatus"] == "OK"
    item = httpx.get(root + f"/UpdateService/FirmwareInventory/{uefi.id}", auth=AUTH).json()
    assert item["Version"] == "9.9.9"
    assert httpx.get(root + "/Systems/DPU", auth=AUTH).json()["BiosVersion"] == "9.9.9"
    # The DPU's own OS sees the new firmware too.
    assert dpu.osroot is not None
    assert (dpu.osroot / "sys/class/dmi/id/bios_version").read_text().strip() == "9.9.9"
    golden = next(fw for fw in dpu.profile.firmware if not fw.updateable)
    refused = httpx.post(
        root + "/UpdateService/Actions/UpdateService.SimpleUpdate",
        json={
            "ImageURI": "http://127.0.0.1:9/x.bin",
            "Targets": [f"{httpx.URL(root).path}/UpdateService/FirmwareInventory/{golden.id}"],
        },
        auth=AUTH,
    )
    assert refused.status_code == 400


def test_sessions_log_in_use_the_token_and_log_out(served: FleetServer):
    _, root = first(served)
    created = httpx.post(root + "/SessionService/Sessions", json={"UserName": USER, "Password": PASSWORD})
    assert created.status_code == 201
    token, location = created.headers["X-Auth-Token"], created.headers["Location"]
    assert created.json()["Password"] is None
    headers = {"X-Auth-Token": token}
    assert httpx.get(root + "/Systems/DPU", headers=headers).status_code == 200
    session_url = str(httpx.URL(root).join(location))
    assert httpx.delete(session_url, headers=headers).status_code == 204
    assert httpx.get(root + "/Systems/DPU", headers=headers).status_code == 401
    bad = httpx.post(root + "/SessionService/Sessions", json={"UserName": USER, "Password": "nope-nope"})
    assert bad.status_code == 401


def test_read_only_accounts_cannot_act(served: FleetServer):
    _, root = first(served)
    made = httpx.post(
        root + "/AccountService/Accounts",
        auth=AUTH,
        json={"UserName": "auditor", "Password": "read-0nly-pass", "RoleId": "ReadOnly"},
    )
    assert made.status_code == 201
    reader = ("auditor", "read-0nly-pass")
    assert httpx.get(root + "/Systems/DPU", auth=reader).status_code == 200
    denied = httpx.post(root + "/Systems/DPU/Actions/ComputerSystem.Reset", json={"ResetType": "On"}, auth=reader)
    assert denied.status_code == 403 and message_ids(denied) == ["Base.1.22.InsufficientPrivilege"]
    assert httpx.delete(httpx.URL(root).join(made.headers["Location"]), auth=AUTH).status_code == 204


def test_latency_setting_is_honoured_per_bmc(served: FleetServer):
    slow_id, slow_root = first(served)
    _, fast_root = first(served, 1)
    bmc = served.fleet.bmcs[slow_id]
    bmc.set_limits(BmcLimits(latency_seconds=0.3))
    try:
        with httpx.Client(auth=AUTH) as client:
            client.get(fast_root + "/Systems/DPU")  # warm the connection
            began = time.monotonic()
            assert client.get(slow_root + "/Systems/DPU").status_code == 200
            slow = time.monotonic() - began
            began = time.monotonic()
            assert client.get(fast_root + "/Systems/DPU").status_code == 200
            fast = time.monotonic() - began
        assert slow >= 0.3
        assert fast < slow
    finally:
        bmc.set_limits(BmcLimits())


def test_concurrency_limit_answers_503_when_exceeded(served: FleetServer):
    bmc_id, root = first(served, 2)
    bmc = served.fleet.bmcs[bmc_id]
    bmc.set_limits(BmcLimits(latency_seconds=0.4, max_concurrent=2))

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(auth=AUTH, timeout=10) as client:
            return await asyncio.gather(*(client.get(root + "/Systems/DPU") for _ in range(6)))

    try:
        responses = asyncio.run(burst())
    finally:
        bmc.set_limits(BmcLimits())
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) >= 2 and codes.count(503) >= 1
    busy = next(r for r in responses if r.status_code == 503)
    assert busy.headers["Retry-After"] == "1"
    assert message_ids(busy) == ["Base.1.22.ServiceTemporarilyUnavailable"]


def test_queueing_bmc_serves_everyone_eventually(served: FleetServer):
    bmc_id, root = first(served, 2)
    bmc = served.fleet.bmcs[bmc_id]
    bmc.set_limits(BmcLimits(latency_seconds=0.05, max_concurrent=1, queue_when_busy=True))

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(auth=AUTH, timeout=10) as client:
            return await asyncio.gather(*(client.get(root + "/Managers/BMC") for _ in range(5)))

    try:
        assert {r.status_code for r in asyncio.run(burst())} == {200}
    finally:
        bmc.set_limits(BmcLimits())


def test_manager_reset_takes_the_bmc_away_for_a_while(served: FleetServer):
    _, root = first(served, 3)
    reset = httpx.post(root + "/Managers/BMC/Actions/Manager.Reset", json={"ResetType": "GracefulRestart"}, auth=AUTH)
    assert reset.status_code == 204
    assert httpx.get(root + "/Managers/BMC", auth=AUTH).status_code == 503
    wait_for(lambda: httpx.get(root + "/Managers/BMC", auth=AUTH).status_code == 200, "BMC back")


def test_one_port_per_bmc_serves_the_standard_path(served_per_port: FleetServer):
    ports = {httpx.URL(url).port for url in served_per_port.endpoints.values()}
    assert len(ports) == len(served_per_port.endpoints)
    for bmc_id, url in served_per_port.endpoints.items():
        root = httpx.get(url + "/redfish/v1", auth=AUTH).json()
        assert root["@odata.id"] == "/redfish/v1"
        serial = httpx.get(url + "/redfish/v1/Systems/DPU", auth=AUTH).json()["SerialNumber"]
        assert serial == served_per_port.fleet.bmcs[bmc_id].dpu.serial
        assert httpx.get(url + "/redfish").json() == {"v1": "/redfish/v1/"}


def test_sushy_reads_and_resets_the_dpu(served_per_port: FleetServer):
    sushy = pytest.importorskip("sushy")
    bmc_id, url = next(iter(served_per_port.endpoints.items()))
    conn = sushy.Sushy(url + "/redfish/v1", username=USER, password=PASSWORD)
    system = conn.get_system("/redfish/v1/Systems/DPU")
    assert system.serial_number == served_per_port.fleet.bmcs[bmc_id].dpu.serial
    assert system.power_state == sushy.POWER_STATE_ON
    system.reset_system(sushy.RESET_FORCE_OFF)
    wait_for(lambda: (system.refresh(), system.power_state)[1] == sushy.POWER_STATE_OFF, "sushy off")
    system.reset_system(sushy.RESET_ON)
    wait_for(lambda: (system.refresh(), system.power_state)[1] == sushy.POWER_STATE_ON, "sushy on")
    manager = conn.get_manager("/redfish/v1/Managers/BMC")
    assert manager.firmware_version == served_per_port.fleet.bmcs[bmc_id].firmware_version
    conn.__del__()  # log out now, while the BMC is up, not whenever the GC runs


def test_sushy_works_through_a_path_prefix(served: FleetServer):
    sushy = pytest.importorskip("sushy")
    bmc_id, _ = first(served)
    url = served.endpoints[bmc_id]  # http://127.0.0.1:PORT/bmc/<id>
    prefix = httpx.URL(url).path
    base = url[: -len(prefix)]
    conn = sushy.Sushy(base, username=USER, password=PASSWORD, root_prefix=prefix + "/redfish/v1/")
    system = conn.get_system(prefix + "/redfish/v1/Systems/DPU")
    assert system.serial_number == served.fleet.bmcs[bmc_id].dpu.serial
    conn.__del__()  # log out now, while the BMC is up, not whenever the GC runs


def test_error_messages_match_the_dmtf_registries():
    import json
    from pathlib import Path

    registries = Path(__file__).resolve().parents[2].parent / "shared" / "redfish" / "registries"
    if not registries.is_dir():
        pytest.skip("DMTF registries not present")
    for key, template in MESSAGES.items():
        registry = json.loads((registries / f"{_latest(registries, template.registry)}").read_text())
        assert registry["Messages"][key]["Message"] == template.text, key


def _latest(directory: Any, registry: str) -> str:
    candidates = sorted(
        (p.name for p in directory.glob(f"{registry}.*.json")),
        key=lambda n: tuple(int(x) for x in n.split(".")[1:4]),
    )
    return candidates[-1]
