"""Given an emulated fleet with the health controller, when a DPU fails, then it is diagnosed within
its bound from Redfish and agent signals, remediated in policy order, and nothing else changes."""

from __future__ import annotations

import time
from typing import Any

from dpufleet.sim.bmc import BmcLimits, SimBMC, SimLogEntry, utcnow_iso

from .conftest import DETECTION_BOUND, FAST, Lab, bmc_log, diagnosis, healthy
from .conftest import history as full_history

_MARK: dict[str, int] = {}


def mark(lab: Lab, name: str) -> None:
    """Remember how much history the DPU has now: each test asserts only what its fault caused."""
    _MARK[name] = len(full_history(lab.get(name)))


def history(dpu: dict[str, Any]) -> list[tuple[str, str]]:
    return full_history(dpu)[_MARK.get(dpu["metadata"]["name"], 0) :]


def specs(lab: Lab) -> dict[str, Any]:
    return {d["metadata"]["name"]: d["spec"] for d in lab.op.items("dpus")}


def untouched_except(lab: Lab, before: dict[str, Any], name: str) -> None:
    """Every other DPU is Healthy with no remediation, and every spec is as it was."""
    for dpu in lab.op.items("dpus"):
        other = dpu["metadata"]["name"]
        assert dpu["spec"] == before[other], f"{other}: spec changed"
        if other == name:
            continue
        if diagnosis(dpu) not in (None, "Healthy"):
            continue  # another scenario's DPU (module-scoped fleet): checked by its own test
        assert [h for h in history(dpu) if h[0] not in ("recovered",)] == [] or other != name


def detect(lab: Lab, name: str, expected: str, start: float) -> dict[str, Any]:
    dpu = lab.wait(expected, name, lambda d: diagnosis(d) == expected, timeout=DETECTION_BOUND + 5)
    took = time.monotonic() - start
    assert took <= DETECTION_BOUND, f"{expected} detected after {took:.1f}s (bound {DETECTION_BOUND}s)"
    cond = next(c for c in dpu["status"]["conditions"] if c["type"] == "Healthy")
    assert cond["status"] == "False" and cond["reason"] == expected
    assert "evidence" in cond["message"]
    return dpu


def test_os_hang_is_rebooted_through_the_bmc(lab: Lab) -> None:
    name, sim, bmc = lab.dpu(0)
    mark(lab, name)
    before = specs(lab)
    boots = sim.boot_count
    start = time.monotonic()
    lab.agents.hung[sim.serial] = sim.boot_count
    bmc_log(bmc, "HostWatchdogTimer expired: the host OS stopped responding")
    dpu = detect(lab, name, "OSHang", start)
    assert any(e["signal"] == "log entry" and "Watchdog" in e["value"] for e in dpu["status"]["diagnosis"]["evidence"])
    dpu = lab.wait("recovered", name, lambda d: healthy(d) and ("recovered", "Recovered") in history(d))
    assert history(dpu) == [("reboot", "Succeeded"), ("recovered", "Recovered")]
    assert sim.boot_count == boots + 1
    untouched_except(lab, before, name)


def test_power_loss_is_powered_on(lab: Lab) -> None:
    name, sim, bmc = lab.dpu(1)
    mark(lab, name)
    before = specs(lab)
    start = time.monotonic()
    bmc._powered_off(f"{sim.id} system")
    bmc_log(bmc, "AC lost: the card lost input power")
    detect(lab, name, "PowerLoss", start)
    # the evidence the episode opened on: status.diagnosis may already show the DPU booting back (PowerState
    # On, still PowerLoss) by the time it is read, so it is read from the episode's Event
    opened = [e for e in lab.op.events("DPU", name) if e.get("reason") == "PowerLoss"]
    assert opened and "redfish PowerState: Off" in opened[-1]["message"], opened
    dpu = lab.wait("recovered", name, lambda d: healthy(d) and ("recovered", "Recovered") in history(d))
    assert history(dpu) == [("power-on", "Succeeded"), ("recovered", "Recovered")]
    assert str(sim.power_state) == "On"
    untouched_except(lab, before, name)


def test_bmc_crash_is_told_apart_from_power_loss(lab: Lab) -> None:
    name, _sim, bmc = lab.dpu(2)
    mark(lab, name)
    before = specs(lab)
    start = time.monotonic()
    bmc.set_limits(BmcLimits(latency_seconds=30.0, queue_when_busy=True))  # answers nothing in time
    try:
        dpu = detect(lab, name, "BMCDown", start)
        assert "agent still reports" in dpu["status"]["diagnosis"]["message"]
        dpu = lab.wait("alert", name, lambda d: ("alert", "Succeeded") in history(d))
        assert history(dpu) == [("wait", "Succeeded"), ("alert", "Succeeded")]  # no reset of anything
    finally:
        bmc.set_limits(BmcLimits())
    lab.wait("recovered", name, lambda d: healthy(d))
    untouched_except(lab, before, name)


def test_kernel_crash_is_power_cycled(lab: Lab) -> None:
    name, sim, bmc = lab.dpu(3)
    mark(lab, name)
    before = specs(lab)
    start = time.monotonic()
    lab.agents.hung[sim.serial] = sim.boot_count
    bmc_log(bmc, "Kernel panic - not syncing: Fatal exception")
    bmc.set_boot_progress("OSBootStarted")  # the hang after the panic
    detect(lab, name, "KernelCrash", start)
    dpu = lab.wait("recovered", name, lambda d: healthy(d) and ("recovered", "Recovered") in history(d))
    assert history(dpu) == [("wait", "Succeeded"), ("power-cycle", "Succeeded"), ("recovered", "Recovered")]
    untouched_except(lab, before, name)


def test_agent_partition_is_not_rebooted(lab: Lab) -> None:
    name, sim, _bmc = lab.dpu(4)
    mark(lab, name)
    before = specs(lab)
    boots = sim.boot_count
    start = time.monotonic()
    lab.agents.partitioned.add(sim.serial)
    try:
        detect(lab, name, "AgentUnreachable", start)
        dpu = lab.wait("alert", name, lambda d: ("alert", "Succeeded") in history(d))
        assert history(dpu) == [("wait", "Succeeded"), ("restart-agent", "NotAvailable"), ("alert", "Succeeded")]
        assert sim.boot_count == boots
    finally:
        lab.agents.partitioned.discard(sim.serial)
    lab.wait("recovered", name, lambda d: healthy(d))
    assert sim.boot_count == boots
    untouched_except(lab, before, name)


def test_dimm_failure_is_quarantined(lab: Lab) -> None:
    name, sim, bmc = lab.dpu(5)
    mark(lab, name)
    before = specs(lab)
    start = time.monotonic()
    lab.agents.hung[sim.serial] = sim.boot_count
    bmc.set_boot_progress("MemoryInitializationStarted")
    bmc_log(bmc, "POST failed: memory DIMM0 absent")
    detect(lab, name, "MemoryFailure", start)
    dpu = lab.wait("quarantined", name, lambda d: ("alert", "Succeeded") in history(d))
    assert history(dpu) == [("quarantine", "Succeeded"), ("alert", "Succeeded")]
    assert dpu["spec"]["unschedulable"] is True
    assert {k: v for k, v in dpu["spec"].items() if k != "unschedulable"} == {
        k: v for k, v in before[name].items() if k != "unschedulable"
    }
    reasons = {(e["reason"], e["type"]) for e in lab.op.events("DPU", name)}
    assert ("Quarantined", "Warning") in reasons and ("MemoryFailure", "Warning") in reasons
    audit = lab.op.http.get("/audit/v1/records", params={"limit": 1000}).json()["items"]
    mine = [r for r in audit if r["subject"] == "health-controller" and r["name"] == name]
    assert [r["action"] for r in mine] == ["remediation:quarantine", "remediation:alert"]
    metrics = lab.op.http.get("/metrics").text
    assert f'dpufleet_dpu_quarantined{{dpu="{name}",project="default"}} 1.0' in metrics
    before[name] = dpu["spec"]
    untouched_except(lab, before, name)


def test_rate_limit_stops_a_reboot_loop(lab: Lab) -> None:
    """A DPU that hangs again after every reboot is rebooted twice an hour, then power-cycled, then quarantined."""
    name, sim, bmc = lab.dpu(6)
    mark(lab, name)
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        dpu = lab.get(name)
        if dpu["spec"].get("unschedulable"):
            break
        if lab.agents.running(sim) and healthy(dpu):  # it came back: it hangs again
            time.sleep(1.1)  # BMC log times have whole seconds: the new entry must be after the recovery
            lab.agents.hung[sim.serial] = sim.boot_count
            bmc_log(bmc, "HostWatchdogTimer expired")
        time.sleep(0.1)
    dpu = lab.wait("quarantined", name, lambda d: d["spec"].get("unschedulable") is True, timeout=5)
    actions = [a for a, r in history(dpu) if r in ("Succeeded", "Failed", "Issued")]
    assert actions.count("reboot") == 2, history(dpu)
    assert actions.count("power-cycle") == 2, history(dpu)
    assert ("reboot", "Skipped") in history(dpu)
    assert actions[-1] == "quarantine" or actions[-2:] == ["quarantine", "alert"]


def test_hold_stops_remediation(lab: Lab) -> None:
    name, sim, bmc = lab.dpu(7)
    mark(lab, name)
    boots = sim.boot_count
    lab.op.http.patch(
        lab.op.path("dpus", name),
        json={"spec": {"held": True}},
        headers={"Content-Type": "application/merge-patch+json"},
    ).raise_for_status()
    lab.agents.hung[sim.serial] = sim.boot_count
    bmc_log(bmc, "HostWatchdogTimer expired")
    lab.wait("diagnosed", name, lambda d: diagnosis(d) == "OSHang")
    time.sleep(1.5)
    dpu = lab.get(name)
    assert history(dpu) == [] and sim.boot_count == boots
    assert "RemediationPaused" in {e["reason"] for e in lab.op.events("DPU", name)}
    lab.op.http.patch(
        lab.op.path("dpus", name),
        json={"spec": {"held": False}},
        headers={"Content-Type": "application/merge-patch+json"},
    ).raise_for_status()
    dpu = lab.wait("recovered", name, lambda d: healthy(d) and ("recovered", "Recovered") in history(d))
    assert history(dpu)[0] == ("reboot", "Succeeded")


def _log_reads(bmc: SimBMC) -> int:
    return sum(n for path, n in bmc.requests_by_path.items() if path.startswith("GET ") and path.endswith("/Entries"))


def test_a_bmc_that_pushes_is_read_in_full_seldom_and_an_entry_it_did_not_push_is_still_found(lab: Lab) -> None:
    name, sim, bmc = lab.dpu(8)
    mark(lab, name)
    lab.wait("healthy", name, healthy)
    collections = {p for p in bmc.requests_by_path if p.startswith("GET ") and p.endswith("/Entries")}
    assert collections, "the health controller read the BMC's logs at least once"
    # a subscribed BMC: most visits ask only for the system; the logs are read at each full look
    before, polls = _log_reads(bmc), 10
    time.sleep(FAST.poll_seconds * polls)
    full_looks = polls * FAST.poll_seconds / FAST.full_look_seconds + 1
    assert _log_reads(bmc) - before <= full_looks * len(collections), "the logs were read on every visit"

    # an entry the BMC logs but never pushes (an event lost on the way) is found by the next full look
    start = time.monotonic()
    lab.agents.hung[sim.serial] = sim.boot_count
    bmc.sel.append(
        SimLogEntry(
            str(len(bmc.sel) + 1), utcnow_iso(), "Critical", "HostWatchdogTimer expired", "OpenBMC.0.4.Fault", []
        )
    )
    dpu = lab.wait(
        "OSHang", name, lambda d: diagnosis(d) == "OSHang", timeout=DETECTION_BOUND + FAST.full_look_seconds + 5
    )
    assert time.monotonic() - start <= DETECTION_BOUND + FAST.full_look_seconds
    assert any(e["signal"] == "log entry" and "Watchdog" in e["value"] for e in dpu["status"]["diagnosis"]["evidence"])
    lab.wait("recovered", name, lambda d: healthy(d) and ("recovered", "Recovered") in history(d))
