"""A control plane with the health controller on fast timings, and an emulated fleet discovered through it.

The DPUs' agents are stand-ins that speak the agent protocol (POST /agent/v1/report) for every
emulated DPU whose OS is up: a DPU reports while its BMC shows it On and OSRunning, unless a test
silenced it (until its next boot: an OS hang or a panic ends with a reset) or partitioned it.
Faults are injected through the emulator's public objects (power state, boot progress, the BMC's
event log, its request latency), which is what `dpufleet.sim.faults` drives too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from dpufleet import plane as manager
from dpufleet.health.controller import HealthConfig, HealthReconciler
from dpufleet.inventory import reports
from dpufleet.sim.bmc import SYSTEM_ID, SimBMC, SimLogEntry, utcnow_iso
from dpufleet.sim.devices import PowerState, SimDPU
from dpufleet.sim.runner import sim_in_thread
from provisioning.conftest import Operator, discover, fleet_options
from support.net import poll
from support.server import RunningServer, threaded_server

FAST = HealthConfig(
    poll_seconds=0.3,
    heartbeat_seconds=0.5,
    allowed_misses=3,
    heartbeat_write_seconds=0.1,
    redfish_timeout=0.5,
    bmc_failures_before_down=2,
    boot_stuck_seconds=3.0,
    agent_start_seconds=3.0,
    log_window_seconds=60.0,
    full_look_seconds=2.0,  # a BMC that pushes events is read in full this often (and after each event)
)
# Detection bound on these timings: silence (1.5 s) + a poll (0.3 s) + Redfish and store time.
DETECTION_BOUND = 6.0


# The default policy's steps, with the waits shrunk (minutes become fractions of a second).
FAST_POLICY: dict[str, Any] = {
    "kind": "RemediationPolicy",
    "metadata": {"name": "fast"},
    "spec": {
        "rules": [
            {
                "failureClass": "OSHang",
                "actions": [
                    {"action": "reboot", "maxPerHour": 2},
                    {"action": "power-cycle", "after": "2s", "maxPerHour": 2},
                    {"action": "quarantine", "after": "2s"},
                    {"action": "alert"},
                ],
            },
            {"failureClass": "PowerLoss", "actions": [{"action": "power-on", "maxPerHour": 3}]},
            {
                "failureClass": "KernelCrash",
                "actions": [{"action": "wait"}, {"action": "power-cycle", "after": "0.5s", "maxPerHour": 2}],
            },
            {
                "failureClass": "BMCDown",
                "actions": [
                    {"action": "wait"},
                    {"action": "alert", "after": "0.5s"},
                    {"action": "bmc-reset", "after": "60s", "maxPerHour": 1},
                ],
            },
            {
                "failureClass": "AgentUnreachable",
                "actions": [
                    {"action": "wait"},
                    {"action": "restart-agent", "after": "0.3s"},
                    {"action": "alert", "after": "0.3s"},
                ],
            },
            {"failureClass": "MemoryFailure", "actions": [{"action": "quarantine"}, {"action": "alert"}]},
        ]
    },
}


@dataclass
class Agents:
    """Stand-in DPU agents: one report per DPU every `every` seconds while its OS runs."""

    http: httpx.Client
    dpus: list[SimDPU]
    every: float = 0.1
    hung: dict[str, int] = field(default_factory=dict)  # serial -> boot count when its OS stopped
    partitioned: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def running(self, dpu: SimDPU) -> bool:
        if dpu.power_state != PowerState.ON or dpu.boot_progress != "OSRunning":
            return False
        if not getattr(dpu, "os_alive", True):  # dpufleet.sim.faults: the OS hangs or panicked
            return False
        if getattr(dpu, "network_partitioned", False):  # dpufleet.sim.faults: agent-partition
            return False
        hung_at = self.hung.get(dpu.serial)
        return hung_at is None or dpu.boot_count > hung_at

    def loop(self) -> None:
        while not self._stop.is_set():
            for dpu in self.dpus:
                if dpu.serial in self.partitioned or not self.running(dpu):
                    continue
                body = {"serial": dpu.serial, "role": "dpu", "agentVersion": "test"}
                try:
                    resp = self.http.post("/agent/v1/report", json=body)
                    if resp.status_code >= 400:
                        self.errors.append(f"{resp.status_code} {resp.text[:200]}")
                except httpx.HTTPError as exc:
                    self.errors.append(str(exc))
            self._stop.wait(self.every)

    def stop(self) -> None:
        self._stop.set()


def dpu_summary(dpu: dict[str, Any] | None) -> dict[str, Any]:
    """What a failed wait shows of a DPU: what the health controller and the agent wrote."""
    status = (dpu or {}).get("status") or {}
    return {k: status.get(k) for k in ("diagnosis", "remediation", "powerState", "bootProgress", "agent")}


@dataclass
class FleetView:
    """An operator's view of the fleet's DPUs through the API: read one, wait for one to reach a state."""

    op: Operator

    def get(self, name: str) -> dict[str, Any]:
        found = self.op.get("dpus", name)
        assert found is not None
        return found

    def wait(
        self, what: str, name: str, done: Callable[[dict[str, Any]], bool], timeout: float = 15.0
    ) -> dict[str, Any]:
        dpu = poll(
            f"dpus/{name}: {what}",
            lambda: self.op.get("dpus", name),
            lambda found: found is not None and done(found),
            timeout,
            show=dpu_summary,
        )
        assert dpu is not None  # done() is asked only of a DPU that exists
        return dpu


@dataclass
class Lab(FleetView):
    agents: Agents
    fleet: Any
    names: list[str]
    api: RunningServer

    def dpu(self, index: int) -> tuple[str, SimDPU, SimBMC]:
        sim = sorted(self.fleet.fleet.dpus, key=lambda d: f"dpu-{d.serial.lower()}")[index]
        return f"dpu-{sim.serial.lower()}", sim, self.fleet.fleet.bmc_for_serial(sim.serial)


def bmc_log(bmc: SimBMC, message: str, severity: str = "Critical", message_id: str = "OpenBMC.0.4.Fault") -> None:
    """Append an entry to the BMC's event log (what a BMC writes when the DPU fails), and push it to the
    BMC's event subscribers as a BMC does."""
    entry = SimLogEntry(str(len(bmc.sel) + 1), utcnow_iso(), severity, message, message_id, [])
    bmc.sel.append(entry)
    bmc.publish(entry, f"Systems/{SYSTEM_ID}")


def healthy(dpu: dict[str, Any]) -> bool:
    for cond in (dpu.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Healthy":
            return bool(cond.get("status") == "True")
    return False


def diagnosis(dpu: dict[str, Any]) -> str | None:
    value = ((dpu.get("status") or {}).get("diagnosis") or {}).get("failureClass")
    return str(value) if value else None


def history(dpu: dict[str, Any]) -> list[tuple[str, str]]:
    entries = ((dpu.get("status") or {}).get("remediation") or {}).get("history") or []
    return [(h["action"], h["result"]) for h in entries]


def wait_all_reporting(op: Operator, names: list[str], timeout: float) -> None:
    """Every DPU Healthy, its agent reporting: where each test of a fleet starts from."""
    op.wait_for(
        "every DPU Healthy, its agent reporting",
        lambda: op.items("dpus"),
        lambda dpus: (
            len(dpus) == len(names)
            and all(healthy(d) and (d["status"].get("agent") or {}).get("lastHeartbeat") for d in dpus)
        ),
        timeout=timeout,
    )


@contextmanager
def health_server(data_dir: Path, config: HealthConfig = FAST) -> Iterator[RunningServer]:
    with pytest.MonkeyPatch.context() as mp:

        def health(services: manager.Services) -> HealthReconciler:
            return manager.wire(HealthReconciler, services, config)

        factories = [f for f in manager.DEFAULT_RECONCILERS if f is not HealthReconciler] + [health]
        mp.setattr(manager, "DEFAULT_RECONCILERS", factories)
        mp.setattr(reports, "HEARTBEAT_WRITE_EVERY", 0.1)
        with threaded_server(data_dir) as running:
            yield running


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with health_server(tmp_path_factory.mktemp("api")) as api, api.client() as http:
        options = fleet_options(api, tmp_path_factory.mktemp("fleet"), hosts=5)
        with sim_in_thread(options) as fleet:
            op = Operator(http)
            names = discover(op, fleet)
            op.create("remediationpolicies", FAST_POLICY)
            with api.client() as agent_http:
                agents = Agents(agent_http, list(fleet.fleet.dpus))
                thread = threading.Thread(target=agents.loop, daemon=True)
                thread.start()
                try:
                    wait_all_reporting(op, names, timeout=20)
                    yield Lab(op, agents, fleet, names, api)
                finally:
                    agents.stop()
                    thread.join(timeout=5)


def elapsed_since(start: float) -> float:
    return time.monotonic() - start
