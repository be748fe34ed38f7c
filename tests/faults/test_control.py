"""The sim control API (token required), the CLI, the EventService, and bmc-crash on a port of its own."""

from __future__ import annotations

import stat

import httpx
from typer.testing import CliRunner

from dpufleet.main import app
from dpufleet.sim.control import read_control_file
from dpufleet.sim.faults import active, inject
from dpufleet.sim.fleet import build_fleet, fleet_in_thread
from support.net import wait_until

from .conftest import Sim


def test_control_api_needs_its_token(sim: Sim):
    control = read_control_file(sim.directory)
    assert stat.S_IMODE((sim.directory / "sim-control.json").stat().st_mode) == 0o600
    url = control["url"] + "/sim/v1/faults"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    auth = {"Authorization": f"Bearer {control['token']}"}
    dpu = sim.dpu(0)
    created = httpx.post(url, headers=auth, json={"dpu": dpu.serial, "kind": "disk-full", "duration": 30})
    assert created.status_code == 201 and created.json()["dpu"] == dpu.id
    listed = httpx.get(url, headers=auth).json()["faults"]
    assert [(f["dpu"], f["kind"]) for f in listed] == [(dpu.id, "disk-full")]
    assert httpx.post(url, headers=auth, json={"dpu": "nope", "kind": "disk-full"}).status_code == 404
    assert httpx.post(url, headers=auth, json={"dpu": dpu.id, "kind": "meteor"}).status_code == 400
    cleared = httpx.delete(url, headers=auth, params={"dpu": f"dpu-{dpu.serial.lower()}"}).json()["cleared"]
    assert [f["kind"] for f in cleared] == ["disk-full"]
    assert active(sim.fleet) == []


def test_cli_inject_list_clear(sim: Sim):
    runner = CliRunner()
    dpu = sim.dpu(0)
    args = ["--dir", str(sim.directory)]
    result = runner.invoke(app, ["sim", "fault", "inject", dpu.id, "clock-skew", "--for", "30s", *args])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"injected clock-skew into {dpu.id} for 30s"
    result = runner.invoke(app, ["sim", "fault", "list", *args])
    assert result.exit_code == 0 and "clock-skew" in result.output and dpu.id in result.output
    result = runner.invoke(app, ["sim", "fault", "clear", dpu.id, "clock-skew", *args])
    assert result.output.strip() == f"cleared clock-skew on {dpu.id}"
    result = runner.invoke(app, ["sim", "fault", "inject", dpu.id, "meteor", *args])
    assert result.exit_code != 0 and "unknown fault kind" in result.output


def test_cli_load_moves_the_bmc_sensors_and_a_hang_heats_the_soc(sim: Sim):
    runner = CliRunner()
    dpu = sim.dpu(0)
    args = ["--dir", str(sim.directory)]

    def soc() -> float:  # what the BMC serves, over Redfish
        with sim.redfish(0) as rf:
            return float(rf.get("/Chassis/Card1/Sensors/SoC_Temp").json()["Reading"])

    idle = soc()
    result = runner.invoke(app, ["sim", "load", f"dpu-{dpu.serial.lower()}", "0.5", *args])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"{dpu.id} (dpu-{dpu.serial.lower()}): load 0.5"
    assert soc() > idle + 10
    result = runner.invoke(app, ["sim", "load", dpu.id, "1.5", *args])
    assert result.exit_code != 0 and "from 0 (idle) to 1" in result.output and dpu.load == 0.5
    runner.invoke(app, ["sim", "load", dpu.id, "0", *args])
    assert soc() == idle
    inject(sim.fleet, dpu.id, "os-hang", 30)  # a locked-up core spins: the SoC heats without any load
    assert soc() > idle + 20
    runner.invoke(app, ["sim", "fault", "clear", dpu.id, *args])
    assert soc() == idle


def test_events_reach_a_subscriber(sim: Sim):
    with sim.redfish(0) as rf:
        sub = rf.post(
            "/EventService/Subscriptions",
            json={"Destination": sim.capture_url + "/events", "Protocol": "Redfish", "Context": "faults"},
        )
        assert sub.status_code == 201
        location = sub.headers["Location"]
        assert rf.get("/EventService/Subscriptions").json()["Members@odata.count"] == 1
        try:
            inject(sim.fleet, sim.dpu(0).id, "pcie-aer")

            def got() -> bool:
                with sim.capture.lock:
                    return any(
                        e["Context"] == "faults"
                        and e["Events"][0]["MessageId"] == "Platform.1.3.PCIeUncorrectableError"
                        for e in sim.capture.events
                    )

            wait_until(got, timeout=5, what="the PCIe error event")
        finally:
            assert rf.delete(location.split("/redfish/v1", 1)[1]).status_code == 204
            assert rf.get("/EventService/Subscriptions").json()["Members@odata.count"] == 0


def test_bmc_crash_closes_its_own_port(tmp_path):
    fleet = build_fleet(
        1,
        2,
        ["nvidia-bluefield-3"],
        seed=3,
        directory=tmp_path,
        username="u",
        password_for=lambda _id: "p4ssw0rd-sim",
        time_scale=0.005,
    )
    with fleet_in_thread(fleet, per_bmc_ports=True) as running:
        crashed, other = fleet.dpus
        url = running.endpoints[crashed.id] + "/redfish/v1/Systems/DPU"
        inject(fleet, crashed.id, "bmc-crash", 0.6)
        wait_until(lambda: _refused(url), timeout=5, what="the port to close")
        assert (
            httpx.get(running.endpoints[other.id] + "/redfish/v1/Systems/DPU", auth=("u", "p4ssw0rd-sim")).status_code
            == 200
        )
        wait_until(lambda: not _refused(url), timeout=10, interval=0.05, what="the BMC to come back")
        assert httpx.get(url, auth=("u", "p4ssw0rd-sim")).status_code == 200


def _refused(url: str) -> bool:
    try:
        httpx.get(url, auth=("u", "p4ssw0rd-sim"), timeout=1)
    except httpx.ConnectError:
        return True
    except httpx.TransportError:
        return False
    return False
