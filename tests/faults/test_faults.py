"""Every fault kind shows the signals docs/faults.md lists: Redfish over HTTP, and what the agents send."""

from __future__ import annotations

import time
from datetime import datetime

import httpx
import pytest

from dpufleet.sim.faults import FaultKind, active, clear, golden_version, inject
from support.net import wait_until

from .conftest import Sim


def _other_untouched(sim: Sim) -> None:
    """DPU 1 (another host) keeps running and reporting, healthy."""
    system = sim.system(1)
    assert system["PowerState"] == "On" and system["BootProgress"]["LastState"] == "OSRunning"
    assert system["Status"]["Health"] == "OK"
    assert sim.capture.reporting(sim.dpu(1).serial)


def test_there_are_fourteen_kinds():
    assert len(FaultKind) == 14


def test_kernel_crash_reboot_loops_until_cleared(sim: Sim):
    dpu = sim.dpu(0)
    inject(sim.fleet, dpu.id, "kernel-crash")
    assert sim.system(0)["Status"]["Health"] == "Critical"
    time.sleep(0.2)  # the first panic reboots after 10 emulated seconds
    states: set[str] = set()
    deadline = time.monotonic() + 1.2
    while time.monotonic() < deadline:
        states.add(sim.system(0)["BootProgress"]["LastState"])
        time.sleep(0.01)
    assert {"OSBootStarted", "SystemHardwareInitializationComplete"} <= states  # it cycles...
    assert "OSRunning" not in states  # ...and never comes up
    assert sim.message_ids(0).count("Platform.1.3.OperatingSystemCrash") >= 2  # it keeps panicking
    assert sim.capture.silent(dpu.serial)
    _other_untouched(sim)
    clear(sim.fleet, dpu.id, "kernel-crash")
    sim.wait_running(0)
    assert sim.system(0)["Status"]["Health"] == "OK"
    assert sim.capture.reporting(dpu.serial)


def test_kernel_crash_with_a_duration_recovers_by_itself(sim: Sim):
    dpu = sim.dpu(0)
    inject(sim.fleet, dpu.serial, "kernel-crash", 0.5)
    assert sim.capture.silent(dpu.serial, 0.2)
    wait_until(lambda: not active(sim.fleet), timeout=5, what="the fault to expire")
    sim.wait_running(0)
    assert sim.capture.reporting(dpu.serial)


def test_os_hang(sim: Sim):
    dpu = sim.dpu(0)
    inject(sim.fleet, f"dpu-{dpu.serial.lower()}", "os-hang", 1.0)
    system = sim.system(0)
    assert (system["PowerState"], system["BootProgress"]["LastState"], system["Status"]["Health"]) == (
        "On",
        "OSRunning",
        "OK",
    )
    assert sim.capture.silent(dpu.serial)
    wait_until(lambda: "Platform.1.3.DeviceWatchdogTimeout" in sim.message_ids(0), timeout=3, what="the watchdog entry")
    _other_untouched(sim)
    wait_until(lambda: not active(sim.fleet), timeout=5, what="the hang to end")
    assert sim.capture.reporting(dpu.serial)


def test_os_hang_is_cured_by_a_reset(sim: Sim):
    dpu = sim.dpu(0)
    inject(sim.fleet, dpu.id, "os-hang")
    assert sim.capture.silent(dpu.serial, 0.2)
    with sim.redfish(0) as rf:
        assert (
            rf.post("/Systems/DPU/Actions/ComputerSystem.Reset", json={"ResetType": "ForceRestart"}).status_code == 204
        )
    sim.wait_running(0)
    assert sim.capture.reporting(dpu.serial)
    assert active(sim.fleet) == []


def test_nic_crash(sim: Sim):
    dpu, host = sim.dpu(0), sim.host_of(0)
    data = {n.name for n in dpu.data_nics}
    nic_bdfs = {f.bdf for f in dpu.host_functions() if f.spec.role == "nic"}
    start = time.monotonic()
    inject(sim.fleet, dpu.id, "nic-crash")
    assert sim.system(0)["Status"]["Health"] == "Warning"
    entry = next(e for e in sim.sel(0) if e["MessageId"] == "ResourceEvent.1.4.ResourceErrorsDetected")
    assert "NIC firmware fatal error" in entry["Message"]
    report = sim.capture.latest(
        dpu.serial, start, lambda b: all(n["operstate"] == "down" for n in b["inventory"]["nics"] if n["name"] in data)
    )
    assert report["inventory"]["nics"]
    host_report = sim.capture.latest(
        host.serial, start, lambda b: not nic_bdfs & {f["bdf"] for f in b["inventory"]["pci"]}
    )
    assert host_report
    _other_untouched(sim)
    start = time.monotonic()
    clear(sim.fleet, dpu.id)
    sim.capture.latest(host.serial, start, lambda b: nic_bdfs <= {f["bdf"] for f in b["inventory"]["pci"]})
    sim.capture.latest(
        dpu.serial, start, lambda b: all(n["operstate"] == "up" for n in b["inventory"]["nics"] if n["name"] in data)
    )


def test_power_loss(sim: Sim):
    dpu, host = sim.dpu(0), sim.host_of(0)
    start = time.monotonic()
    inject(sim.fleet, dpu.id, "power-loss")
    system = sim.system(0)
    assert system["PowerState"] == "Off" and system["BootProgress"]["LastState"] == "None"
    assert "Power.1.2.LossOfInputPower" in sim.message_ids(0)
    assert sim.capture.silent(dpu.serial)
    bdfs = {f.bdf for f in dpu.host_functions()}
    sim.capture.latest(
        host.serial,
        start,
        lambda b: all(f["aer"]["errors"].get("fatal/SDES", 0) >= 1 for f in b["inventory"]["pci"] if f["bdf"] in bdfs),
    )
    _other_untouched(sim)
    with sim.redfish(0) as rf:  # power on through the BMC
        assert rf.post("/Systems/DPU/Actions/ComputerSystem.Reset", json={"ResetType": "On"}).status_code == 204
    sim.wait_running(0)
    assert sim.capture.reporting(dpu.serial)
    assert active(sim.fleet) == []


def test_host_soft_reset(sim: Sim):
    dpu, host = sim.dpu(0), sim.host_of(0)
    inject(sim.fleet, dpu.id, "host-soft-reset", 0.6)
    assert sim.capture.silent(host.serial, 0.3)
    assert sim.capture.reporting(dpu.serial)  # the DPU is unaffected
    assert sim.system(0)["BootProgress"]["LastState"] == "OSRunning"
    wait_until(lambda: not active(sim.fleet), timeout=5, what="the reset to end")
    assert sim.capture.reporting(host.serial)


def test_host_power_cycle(sim: Sim):
    dpu, host = sim.dpu(0), sim.host_of(0)
    boots = dpu.boot_count
    inject(sim.fleet, dpu.id, "host-power-cycle", 1.0)
    assert sim.system(0)["PowerState"] in ("Off", "PoweringOn")  # slots are unpowered for 5 emulated seconds
    ids = sim.message_ids(0)
    assert "Power.1.2.LossOfInputPower" in ids and "ResourceEvent.1.4.ResourcePoweredOff" in ids
    assert sim.capture.silent(host.serial, 0.2)
    sim.wait_running(0)  # the slot power comes back and the DPU boots by itself
    assert dpu.boot_count == boots + 1
    assert sim.capture.reporting(dpu.serial)
    wait_until(lambda: not active(sim.fleet), timeout=5, what="the host to come back")
    assert sim.capture.reporting(host.serial)
    _other_untouched(sim)


def test_host_crash(sim: Sim):
    dpu, host = sim.dpu(0), sim.host_of(0)
    inject(sim.fleet, dpu.id, "host-crash")
    assert sim.capture.silent(host.serial)
    assert sim.capture.reporting(dpu.serial)
    assert sim.system(0)["Status"]["Health"] == "OK"
    clear(sim.fleet, dpu.id)
    assert sim.capture.reporting(host.serial)


def test_bmc_crash(sim: Sim):
    dpu = sim.dpu(0)
    inject(sim.fleet, dpu.id, "bmc-crash", 0.8)
    with pytest.raises(httpx.TransportError):
        sim.system(0)
    _other_untouched(sim)
    assert sim.capture.reporting(dpu.serial)  # the DPU's OS is fine
    wait_until(lambda: not active(sim.fleet), timeout=5, what="the BMC to come back")
    assert sim.system(0)["Status"]["Health"] == "OK"
    assert "ManagerEvent.1.0.ManagerResetWatchdogTimer" in sim.message_ids(0)


def test_pcie_aer(sim: Sim):
    dpu, host = sim.dpu(0), sim.host_of(0)
    bdf = dpu.host_functions()[0].bdf
    start = time.monotonic()
    inject(sim.fleet, dpu.id, "pcie-aer")
    entry = next(e for e in sim.sel(0) if e["MessageId"] == "Platform.1.3.PCIeUncorrectableError")
    assert entry["MessageArgs"] == [bdf]
    assert sim.system(0)["Status"]["Health"] == "Warning"
    report = sim.capture.latest(
        host.serial,
        start,
        lambda b: any(f["bdf"] == bdf and (f["aer"] or {}).get("fatal", 0) >= 1 for f in b["inventory"]["pci"]),
    )
    assert report
    assert sim.capture.reporting(dpu.serial)
    _other_untouched(sim)


def test_corrupted_flash_boots_the_golden_image(sim: Sim):
    dpu = sim.dpu(0)
    os_id = dpu.profile.firmware_of_kind("os").id
    with sim.redfish(0) as rf:  # run something other than the golden image first
        started = rf.post(
            "/UpdateService/Actions/UpdateService.SimpleUpdate",
            json={"ImageURI": f"http://127.0.0.1:9/{os_id}-9.9.9.bfb"},
        )
        assert started.status_code == 202
        wait_until(lambda: dpu.firmware[os_id] == "9.9.9", timeout=5, what="the update")
        inject(sim.fleet, dpu.id, "corrupted-flash")
        assert sim.system(0)["Status"]["Health"] == "OK"  # nothing shows before the next reset
        start = time.monotonic()
        rf.post("/Systems/DPU/Actions/ComputerSystem.Reset", json={"ResetType": "ForceRestart"})
        wait_until(
            lambda: sim.system(0)["BootProgress"].get("OemLastState", "").startswith("BootFailed"),
            timeout=5,
            what="BootProgress OEM BootFailed",
        )
        sim.wait_running(0)
        inventory = rf.get(f"/UpdateService/FirmwareInventory/{os_id}").json()
    golden = golden_version(dpu)
    assert inventory["Version"] == golden != "9.9.9"
    assert sim.system(0)["Status"]["Health"] == "Warning"
    assert "Platform.1.3.DeviceInRecovery" in sim.message_ids(0)
    sim.capture.latest(dpu.serial, start, lambda b: b["inventory"]["os"]["image_version"] == golden)


def test_dimm_failure(sim: Sim):
    dpu = sim.dpu(0)
    inject(sim.fleet, dpu.id, "dimm-failure", 1.5)
    wait_until(
        lambda: sim.system(0)["BootProgress"]["LastState"] == "MemoryInitializationStarted",
        timeout=5,
        what="POST to stop at memory init",
    )
    time.sleep(0.3)
    system = sim.system(0)
    assert system["BootProgress"]["LastState"] == "MemoryInitializationStarted"  # stuck
    assert system["Status"]["Health"] == "Critical" and system["PowerState"] == "On"
    with sim.redfish(0) as rf:
        memory = rf.get("/Systems/DPU/Memory/DRAM0").json()
        assert memory["Status"] == {"State": "Absent", "Health": "Critical"}
        posts = rf.get("/Systems/DPU/LogServices/PostCodes/Entries").json()["Members"]
    assert any("POST Code: 0x55" in e["Message"] for e in posts)
    assert "Platform.1.3.MemoryUncorrectableError" in sim.message_ids(0)
    assert sim.capture.silent(dpu.serial, 0.2)
    _other_untouched(sim)
    wait_until(lambda: not active(sim.fleet), timeout=5, what="the DIMM fault to expire")
    sim.wait_running(0)
    assert sim.capture.reporting(dpu.serial)


def test_agent_partition(sim: Sim):
    dpu = sim.dpu(0)
    before = len(sim.sel(0))
    inject(sim.fleet, dpu.id, "agent-partition", 0.8)
    system = sim.system(0)
    assert (system["PowerState"], system["BootProgress"]["LastState"], system["Status"]["Health"]) == (
        "On",
        "OSRunning",
        "OK",
    )
    assert sim.capture.silent(dpu.serial)
    assert sim.message_ids(0)[before:] == []  # the BMC sees nothing wrong
    wait_until(lambda: not active(sim.fleet), timeout=5, what="the partition to heal")
    assert sim.capture.reporting(dpu.serial)


def test_disk_full(sim: Sim):
    dpu = sim.dpu(0)
    start = time.monotonic()
    inject(sim.fleet, dpu.id, "disk-full")
    root = lambda b: next(f for f in b["inventory"]["filesystems"] if f["mountpoint"] == "/")  # noqa: E731
    report = sim.capture.latest(dpu.serial, start, lambda b: root(b)["used_percent"] == 100.0)
    assert root(report)["available_bytes"] == 0
    assert sim.system(0)["Status"]["Health"] == "OK"
    start = time.monotonic()
    clear(sim.fleet, dpu.id, "disk-full")
    sim.capture.latest(dpu.serial, start, lambda b: root(b)["used_percent"] < 50)


def test_clock_skew(sim: Sim):
    dpu = sim.dpu(0)
    inject(sim.fleet, dpu.id, "clock-skew")
    time.sleep(0.2)
    start = time.monotonic()
    wait_until(lambda: len(sim.capture.since(dpu.serial, start)) >= 2, timeout=5, what="reports")
    with sim.capture.lock:
        rows = [(received, body) for (at, received, body) in sim.capture.reports if at >= start]
    for received, body in rows:
        skew = (datetime.fromisoformat(body["sentAt"]) - received).total_seconds()
        assert skew > 250 if body["serial"] == dpu.serial else abs(skew) < 5
    assert sim.system(0)["Status"]["Health"] == "OK"
