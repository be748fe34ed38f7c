"""The acceptance matrix: every fault kind of dpufleet.sim.faults, injected on one emulated DPU of a
running fleet (real API server, controllers on fast timings, the real agents on every DPU and host),
is detected within its bound, diagnosed as docs/faults.md says, remediated in the policy's order,
ends in the expected state, and leaves the desired state and the other DPUs alone.

The remediation policy is the built-in default with every wait scaled by SCALE (minutes become
seconds), so the order asserted here is the default policy's order. Its detection settings give a
silent agent MATRIX_SILENCE seconds: ten missed heartbeats, so that a busy 2-core machine that
delays a report is not mistaken for a fault.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from dpufleet.api.kinds import DEFAULT_RULES
from dpufleet.inventory import reports
from dpufleet.sim import faults
from dpufleet.sim.devices import SimDPU
from dpufleet.sim.faults import FaultKind
from dpufleet.sim.runner import SimRunning, sim_in_thread
from provisioning.conftest import Operator, discover, fleet_options

from .conftest import FAST, FleetView, diagnosis, health_server, healthy, history, wait_all_reporting

SCALE = 0.01  # 60 s -> 0.6 s, 120 s -> 1.2 s, 300 s -> 3 s, 600 s and more -> LONGEST_WAIT
LONGEST_WAIT = 6.0
AGENT_HEARTBEAT = 0.3  # what the report handler tells the agents (the default is 10 s)
MATRIX_HEARTBEAT, MATRIX_MISSES = 0.5, 6  # the policy's detection: silent after 3 s
MATRIX_SILENCE = MATRIX_HEARTBEAT * MATRIX_MISSES
DETECTION_BOUND = MATRIX_SILENCE + 7.0  # silence, then a poll, Redfish and store time on a loaded machine
# a loaded machine answers slower than FAST allows; a BMC request is not given up after half a second
MATRIX = dataclasses.replace(FAST, redfish_timeout=3.0, agent_start_seconds=5.0)
HOST_FAULT_SECONDS = MATRIX_SILENCE + 2.0  # host faults last this long (real seconds): longer than silence


def matrix_policy() -> dict[str, Any]:
    rules = [
        {
            "failureClass": str(cls),
            "actions": [
                {"action": str(s.action), "after": min(s.after * SCALE, LONGEST_WAIT)}
                | ({"maxPerHour": s.maxPerHour} if s.maxPerHour is not None else {})
                for s in steps
            ],
        }
        for cls, steps in DEFAULT_RULES.items()
    ]
    detection = {"heartbeatSeconds": MATRIX_HEARTBEAT, "allowedMisses": MATRIX_MISSES}
    return {
        "kind": "RemediationPolicy",
        "metadata": {"name": "matrix"},
        "spec": {"rules": rules, "detection": detection},
    }


@dataclass
class Fleet(FleetView):
    running: SimRunning
    names: list[str]

    def sims(self) -> list[SimDPU]:
        return sorted(self.running.fleet.dpus, key=lambda d: d.id)

    def name(self, sim: SimDPU) -> str:
        return f"dpu-{sim.serial.lower()}"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with pytest.MonkeyPatch.context() as mp:
        # the agents heartbeat every AGENT_HEARTBEAT seconds (the handler's reply sets their interval)
        mp.setattr(reports.ReportHandler.__init__, "__defaults__", (AGENT_HEARTBEAT, 300.0))
        with health_server(tmp_path_factory.mktemp("api"), MATRIX) as api, api.client() as http:
            options = dataclasses.replace(
                fleet_options(api, tmp_path_factory.mktemp("fleet"), hosts=len(FaultKind) + 1),
                dpus_per_host=1,  # one DPU per host: a host fault touches only its case's DPU
                agents=True,
                heartbeat_seconds=AGENT_HEARTBEAT,
            )
            with sim_in_thread(options) as running:
                op = Operator(http)
                names = discover(op, running)
                op.create("remediationpolicies", matrix_policy())
                wait_all_reporting(op, names, timeout=30)
                yield Fleet(op, running, names)


@dataclass(frozen=True)
class Case:
    kind: FaultKind
    diagnosis: str | None  # the Healthy condition's reason; None: the DPU stays Healthy (a host fault)
    actions: list[tuple[str, str]]  # status.remediation.history of the episode, in order
    final_healthy: bool = True
    quarantined: bool = False
    duration: float | None = None  # inject with --for
    clear_after: tuple[str, str] | None = None  # clear the fault once this history entry is there
    reset_first: bool = False  # the fault takes effect at the next reset: an operator reboots the DPU


# Ordered as the kinds are in FaultKind; each case gets its own DPU (and host).
CASES = [
    Case(
        FaultKind.KERNEL_CRASH,
        "KernelCrash",
        [("wait", "Succeeded"), ("power-cycle", "Succeeded"), ("reflash", "NotAvailable"), ("recovered", "Recovered")],
        clear_after=("reflash", "NotAvailable"),  # the loop goes on until the fault ends (no spec.image to re-flash)
    ),
    Case(FaultKind.OS_HANG, "OSHang", [("reboot", "Succeeded"), ("recovered", "Recovered")]),
    Case(FaultKind.NIC_CRASH, "NICFirmwareCrash", [("reboot", "Succeeded"), ("recovered", "Recovered")]),
    Case(FaultKind.POWER_LOSS, "PowerLoss", [("power-on", "Succeeded"), ("recovered", "Recovered")]),
    Case(FaultKind.HOST_SOFT_RESET, None, [], duration=HOST_FAULT_SECONDS),
    Case(FaultKind.HOST_POWER_CYCLE, None, [], duration=HOST_FAULT_SECONDS),
    Case(FaultKind.HOST_CRASH, None, [], duration=HOST_FAULT_SECONDS),
    Case(
        FaultKind.BMC_CRASH,
        "BMCDown",
        [("wait", "Succeeded"), ("alert", "Succeeded"), ("bmc-reset", "NotAvailable"), ("recovered", "Recovered")],
        clear_after=("bmc-reset", "NotAvailable"),
    ),
    Case(
        FaultKind.PCIE_AER,
        "PCIeError",
        # the AER counters stay (the host is not power-cycled yet: DPU side only), so policy quarantines
        [("host-power-cycle", "Succeeded"), ("quarantine", "Succeeded"), ("alert", "Succeeded")],
        final_healthy=False,
        quarantined=True,
    ),
    Case(
        FaultKind.CORRUPTED_FLASH,
        "CorruptedFlash",
        [("reflash", "NotAvailable"), ("quarantine", "Succeeded"), ("alert", "Succeeded")],
        final_healthy=False,
        quarantined=True,
        reset_first=True,
    ),
    Case(
        FaultKind.DIMM_FAILURE,
        "MemoryFailure",
        [("quarantine", "Succeeded"), ("alert", "Succeeded"), ("recovered", "Recovered")],
        quarantined=True,
        clear_after=("alert", "Succeeded"),  # the DIMM is replaced
    ),
    Case(
        FaultKind.AGENT_PARTITION,
        "AgentUnreachable",
        [("wait", "Succeeded"), ("restart-agent", "NotAvailable"), ("alert", "Succeeded"), ("recovered", "Recovered")],
        clear_after=("alert", "Succeeded"),
    ),
    Case(
        FaultKind.DISK_FULL,
        "DiskFull",
        [("alert", "Succeeded"), ("recovered", "Recovered")],
        clear_after=("alert", "Succeeded"),
    ),
    Case(
        FaultKind.CLOCK_SKEW,
        "ClockSkew",
        [("alert", "Succeeded"), ("recovered", "Recovered")],
        clear_after=("alert", "Succeeded"),
    ),
]
DISTURBING = {"reboot", "power-cycle", "power-on", "host-power-cycle", "reflash", "quarantine", "bmc-reset"}


def test_every_kind_has_a_case() -> None:
    assert [c.kind for c in CASES] == list(FaultKind)


def _snapshot(fleet: Fleet) -> dict[str, tuple[dict[str, Any], list[tuple[str, str]], int]]:
    boots = {fleet.name(s): s.boot_count for s in fleet.sims()}
    return {
        d["metadata"]["name"]: (d["spec"], history(d), boots[d["metadata"]["name"]]) for d in fleet.op.items("dpus")
    }


def _host_silent(fleet: Fleet, sim: SimDPU) -> bool:
    dpu = fleet.get(fleet.name(sim))
    host = fleet.op.get("hosts", dpu["status"].get("host") or "")
    if host is None:
        return False
    seen = (host.get("status") or {}).get("lastSeen")
    from dpufleet.health.diagnosis import parse_time

    when = parse_time(seen)
    return when is not None and time.time() - when.timestamp() > MATRIX_SILENCE


@pytest.mark.parametrize("case", CASES, ids=[str(c.kind) for c in CASES])
def test_fault(fleet: Fleet, case: Case) -> None:
    sim = fleet.sims()[list(FaultKind).index(case.kind)]
    name = fleet.name(sim)
    # untouched so far, it is Healthy (a slow heartbeat on a loaded machine may show late)
    fleet.wait(f"Healthy before {case.kind}", name, healthy, timeout=MATRIX_SILENCE + 5)
    before = _snapshot(fleet)
    mark = len(before[name][1])
    boots = sim.boot_count

    def mine(dpu: dict[str, Any]) -> list[tuple[str, str]]:
        return history(dpu)[mark:]

    try:
        if case.reset_first:
            faults.inject(fleet.running, sim.id, case.kind, case.duration)
            with httpx.Client(timeout=5) as rf:  # the next reset reads the flash: an operator reboots the DPU
                url = fleet.running.servers.endpoints[sim.id] + "/redfish/v1/Systems/DPU/Actions/ComputerSystem.Reset"
                auth = (fleet.running.username, fleet.running.password)
                rf.post(url, json={"ResetType": "ForceRestart"}, auth=auth).raise_for_status()
            start = time.monotonic()
        else:
            start = time.monotonic()
            faults.inject(fleet.running, sim.id, case.kind, case.duration)

        if case.diagnosis is None:
            # a host fault: the host agent goes silent (what the Host shows); the DPU stays Healthy throughout
            silent_at: float | None = None
            while time.monotonic() < start + (case.duration or HOST_FAULT_SECONDS) + 1.0:
                dpu = fleet.get(name)
                if silent_at is None and _host_silent(fleet, sim):
                    silent_at = time.monotonic() - start
                assert diagnosis(dpu) in ("Healthy", None), f"{case.kind}: the DPU was diagnosed {diagnosis(dpu)}"
                assert not [a for a, _ in mine(dpu) if a in DISTURBING], mine(dpu)
                time.sleep(0.1)
            assert silent_at is not None and silent_at <= DETECTION_BOUND, f"the host agent silent at {silent_at}"
            faults.clear(fleet.running, sim.id)
            dpu = fleet.wait("Healthy after the host fault", name, healthy, timeout=10)
            if case.kind is FaultKind.HOST_POWER_CYCLE:
                assert sim.boot_count == boots + 1  # it lost slot power and booted by itself
            else:
                assert sim.boot_count == boots
            assert [a for a, _ in mine(dpu) if a != "wait"] in ([], ["recovered"]), mine(dpu)
        else:
            expected = case.diagnosis
            dpu = fleet.wait(expected, name, lambda d: diagnosis(d) == expected, timeout=DETECTION_BOUND + 10)
            took = time.monotonic() - start
            assert took <= DETECTION_BOUND, f"{case.kind}: {expected} after {took:.1f}s (bound {DETECTION_BOUND}s)"
            cond = next(c for c in dpu["status"]["conditions"] if c["type"] == "Healthy")
            assert (cond["status"], cond["reason"]) == ("False", expected)
            assert "evidence" in cond["message"] and dpu["status"]["diagnosis"]["evidence"]
            if case.clear_after is not None:
                step = case.clear_after
                fleet.wait(f"{step} ran", name, lambda d: step in mine(d), timeout=15)
                faults.clear(fleet.running, sim.id)
            want = case.actions
            dpu = fleet.wait(f"actions {want}", name, lambda d: len(mine(d)) >= len(want), timeout=40)
            time.sleep(0.5)  # nothing more happens
            dpu = fleet.get(name)
            entries = ((dpu.get("status") or {}).get("remediation") or {}).get("history") or []
            assert mine(dpu) == want, f"{case.kind}: {mine(dpu)}; in full: {entries[mark:]}"
            assert healthy(dpu) is case.final_healthy
            if not case.final_healthy:
                assert diagnosis(dpu) == expected
        # the desired state is untouched (quarantine only sets spec.unschedulable)
        spec = dict(dpu["spec"])
        assert spec.pop("unschedulable", None) is (True if case.quarantined else before[name][0].get("unschedulable"))
        assert spec == {k: v for k, v in before[name][0].items() if k != "unschedulable"}
        # ... and so are the other DPUs: their spec, their remediation, their boots
        after = _snapshot(fleet)
        for other, (ospec, ohist, oboots) in before.items():
            if other == name:
                continue
            nspec, nhist, nboots = after[other]
            assert nspec == ospec, f"{other}: spec changed"
            # nothing that touches the device: a late heartbeat on a busy 2-core machine may start a
            # "wait", which changes nothing, but never a reboot, power action, reflash or quarantine
            new = [h for h in nhist[len(ohist) :] if h[0] in DISTURBING]
            assert new == [], f"{other}: remediated during {case.kind}: {new}"
            assert nboots == oboots, f"{other}: rebooted during {case.kind}"
    finally:
        faults.clear(fleet.running, sim.id)
