"""Hosts carry their own health condition; BMCs push their events; a host power cycle is coordinated.

Given an emulated fleet (real API server and controllers, the real agents on every DPU and host,
one DPU per host), when a host resets, power-cycles or crashes, then its Host object says which
(HostReset / HostPowerCycle / HostDown, with evidence), evented, and says Healthy again after.
Every BMC gets one EventService subscription to the API server's receiver, which the emulated
BMCs use with real HTTP POSTs; a lost subscription is re-created, a deleted BMC loses it. And
remediation's host-power-cycle is a PowerAction that cycles the DPU and its host in boot order.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from dpufleet import plane as manager
from dpufleet.drivers.redfish import events as inbox
from dpufleet.health.subscriptions import FINALIZER, EventSubscriptionReconciler
from dpufleet.inventory import reports
from dpufleet.sim import faults
from dpufleet.sim.devices import SimDPU
from dpufleet.sim.faults import FaultKind
from dpufleet.sim.runner import SimRunning, sim_in_thread
from provisioning.conftest import Operator, discover, fleet_options
from support.server import RunningServer

from .conftest import FAST, diagnosis, health_server, history, wait_all_reporting

AGENT_HEARTBEAT = 0.3
HEARTBEAT, MISSES = 0.5, 6  # the policy's detection: an agent (and a host agent) is silent after 3 s
SILENCE = HEARTBEAT * MISSES
HOST_DOWN = SILENCE + 3.0  # a host silent this long is down (the default is 120 s)
CONFIG = dataclasses.replace(FAST, redfish_timeout=3.0, agent_start_seconds=5.0, host_down_seconds=HOST_DOWN)
POLICY: dict[str, Any] = {
    "kind": "RemediationPolicy",
    "metadata": {"name": "hosts"},
    "spec": {
        "detection": {"heartbeatSeconds": HEARTBEAT, "allowedMisses": MISSES},
        "rules": [
            {
                "failureClass": "PCIeError",
                "actions": [{"action": "host-power-cycle", "maxPerHour": 1}, {"action": "quarantine", "after": "60s"}],
            }
        ],
    },
}


@dataclass
class Fleet:
    op: Operator
    running: SimRunning
    api: RunningServer

    def inbox(self) -> inbox.Inbox:
        """The API server's inbox of pushed events (the server runs in this process)."""
        assert self.api.server is not None
        return self.api.server.services.inbox

    def sim(self, index: int) -> SimDPU:
        return sorted(self.running.fleet.dpus, key=lambda d: d.id)[index]

    def host_name(self, sim: SimDPU) -> str:
        dpu = self.op.get("dpus", f"dpu-{sim.serial.lower()}")
        assert dpu is not None and dpu["status"].get("host")
        return str(dpu["status"]["host"])

    def bmc_name(self, sim: SimDPU) -> str:
        dpu = self.op.get("dpus", f"dpu-{sim.serial.lower()}")
        assert dpu is not None
        return str(dpu["status"]["bmc"])

    def host_condition(self, name: str) -> tuple[str, str] | None:
        host = self.op.get("hosts", name) or {}
        for cond in (host.get("status") or {}).get("conditions") or []:
            if cond["type"] == "Healthy":
                return str(cond["status"]), str(cond["reason"])
        return None

    def wait_host(self, name: str, want: tuple[str, str], timeout: float = 20.0) -> dict[str, Any]:
        def shown() -> dict[str, Any]:  # what a failure shows: the condition, the diagnosis, the last report
            status = (self.op.get("hosts", name) or {}).get("status") or {}
            return {
                "condition": self.host_condition(name),
                "diagnosis": status.get("diagnosis"),
                "lastSeen": status.get("lastSeen"),
                "now": time.time(),
            }

        self.op.wait_for(f"host {name} {want}", shown, lambda s: s["condition"] == want, timeout)
        host = self.op.get("hosts", name)
        assert host is not None
        return host


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(reports.ReportHandler.__init__, "__defaults__", (AGENT_HEARTBEAT, 300.0))
        factories = [
            (lambda s: manager.wire(EventSubscriptionReconciler, s, check_seconds=0.5, retry_seconds=0.5))
            if f is EventSubscriptionReconciler
            else f
            for f in manager.DEFAULT_RECONCILERS
        ]
        mp.setattr(manager, "DEFAULT_RECONCILERS", factories)
        with health_server(tmp_path_factory.mktemp("api"), CONFIG) as api, api.client() as http:
            options = dataclasses.replace(
                fleet_options(api, tmp_path_factory.mktemp("fleet"), hosts=5),
                dpus_per_host=1,
                agents=True,
                heartbeat_seconds=AGENT_HEARTBEAT,
            )
            with sim_in_thread(options) as running:
                op = Operator(http)
                names = discover(op, running)
                op.create("remediationpolicies", POLICY)
                wait_all_reporting(op, names, timeout=30)
                yield Fleet(op, running, api)


# --- host conditions ----------------------------------------------------------------------------------------


def test_a_host_reset_is_a_host_condition_not_a_dpu_failure(fleet: Fleet) -> None:
    sim = fleet.sim(0)
    host = fleet.host_name(sim)
    fleet.wait_host(host, ("True", "Healthy"))
    faults.inject(fleet.running, sim.id, FaultKind.HOST_SOFT_RESET, SILENCE + 2.0)
    found = fleet.wait_host(host, ("False", "HostReset"), timeout=SILENCE + 10)
    evidence = found["status"]["diagnosis"]["evidence"]
    assert {"source": "host-agent", "signal": "reports", "value": evidence[0]["value"]} == evidence[0]
    assert evidence[0]["value"].startswith("silent for")
    assert any(e["signal"] == "power" and e["value"] == "On" for e in evidence)  # its DPU kept running
    assert diagnosis(fleet.op.get("dpus", f"dpu-{sim.serial.lower()}") or {}) == "Healthy"
    faults.clear(fleet.running, sim.id)
    fleet.wait_host(host, ("True", "Healthy"), timeout=15)
    reasons = [e["reason"] for e in fleet.op.events("Host", host)]
    assert "HostReset" in reasons and "Recovered" in reasons


def test_a_host_power_cycle_is_told_from_a_reset_by_its_dpus_power(fleet: Fleet) -> None:
    sim = fleet.sim(1)
    host = fleet.host_name(sim)
    fleet.wait_host(host, ("True", "Healthy"))
    faults.inject(fleet.running, sim.id, FaultKind.HOST_POWER_CYCLE, SILENCE + 4.0)
    found = fleet.wait_host(host, ("False", "HostPowerCycle"), timeout=SILENCE + 10)
    assert any(e["signal"] == "power" and e["value"] == "Off" for e in found["status"]["diagnosis"]["evidence"])
    faults.clear(fleet.running, sim.id)
    fleet.wait_host(host, ("True", "Healthy"), timeout=15)
    assert "HostPowerCycle" in [e["reason"] for e in fleet.op.events("Host", host)]


def test_a_host_silent_longer_than_a_reboot_is_down(fleet: Fleet) -> None:
    sim = fleet.sim(2)
    host = fleet.host_name(sim)
    fleet.wait_host(host, ("True", "Healthy"))
    faults.inject(fleet.running, sim.id, FaultKind.HOST_CRASH, HOST_DOWN + 4.0)
    fleet.wait_host(host, ("False", "HostReset"), timeout=SILENCE + 10)  # first it looks like a reboot
    found = fleet.wait_host(host, ("False", "HostDown"), timeout=HOST_DOWN + 10)
    cond = next(c for c in found["status"]["conditions"] if c["type"] == "Healthy")
    assert cond["severity"] == "Error" and "evidence" in cond["message"]
    faults.clear(fleet.running, sim.id)
    fleet.wait_host(host, ("True", "Healthy"), timeout=15)


# --- EventService subscriptions -----------------------------------------------------------------------------


def _subscribed(fleet: Fleet, bmc: str) -> dict[str, Any]:
    def state(obj: dict[str, Any] | None) -> bool:
        return ((obj or {}).get("status") or {}).get("eventSubscription", {}).get("state") == "Subscribed"

    found: dict[str, Any] = fleet.op.wait_for(f"bmc {bmc} subscribed", lambda: fleet.op.get("bmcs", bmc), state)
    return found


def test_every_bmc_pushes_its_events_to_the_api_server(fleet: Fleet) -> None:
    for sim in fleet.running.fleet.dpus:
        bmc = fleet.bmc_name(sim)
        obj = _subscribed(fleet, bmc)
        subs = list(fleet.running.fleet.bmcs[sim.id].subscriptions.values())
        assert [s.destination for s in subs] == [f"{fleet.api.url}/health/v1/redfish-events/default/{bmc}"]
        assert obj["status"]["eventSubscription"]["destination"] == subs[0].destination
        assert FINALIZER in obj["metadata"]["finalizers"]
    # a forged event (no or a wrong Context) is refused, without a bearer token or with one
    sim = fleet.sim(4)
    dest = fleet.running.fleet.bmcs[sim.id].subscriptions["1"].destination
    forged = {"Context": "dpufleet-events-0000", "Events": [{"Message": "forged", "MessageId": "Base.1.0.X"}]}
    assert httpx.post(dest, json=forged).status_code == 401
    assert httpx.post(dest, json={"Events": []}).status_code == 401
    assert not [e for e in fleet.inbox().recent("default", fleet.bmc_name(sim)) if e.message == "forged"]
    # what is not an event message is refused with a reason; an oversized one before it is read whole
    bad = httpx.post(dest, content=b"{not json", headers={"content-type": "application/json"})
    assert bad.status_code == 400 and "JSON" in bad.json()["message"]
    assert httpx.post(dest, json=["an array"]).status_code == 400
    huge = httpx.post(dest, content=b" " * (300 * 1024), headers={"content-type": "application/json"})
    assert huge.status_code == 413
    # the receiver is counted in the API metrics under its path template, like a route
    with fleet.api.client() as api:
        metrics = api.get("/metrics").text
    assert 'route="/health/v1/redfish-events/{project}/{bmc}"' in metrics


def test_a_pushed_event_reaches_the_health_controller_and_host_power_cycle_is_coordinated(fleet: Fleet) -> None:
    """pcie-aer: the BMC's PCIeUncorrectableError arrives by push; the policy power-cycles host and DPU."""
    sim = fleet.sim(3)
    name, host, bmc = f"dpu-{sim.serial.lower()}", fleet.host_name(sim), fleet.bmc_name(sim)
    _subscribed(fleet, bmc)
    # the host's power driver: the host's own emulated BMC, over Redfish
    fleet.op.credential("sim-host-bmc", fleet.running.username, fleet.running.password)
    bmc_spec = {"address": fleet.running.host_bmcs[sim.host_id], "credentialsRef": "sim-host-bmc"}
    bmc_doc = {"kind": "BMC", "metadata": {"name": f"{sim.host_id}-hostbmc"}, "spec": bmc_spec}
    assert fleet.op.http.post(fleet.op.path("bmcs"), json=bmc_doc).status_code == 201
    power = {"bmcRef": f"{sim.host_id}-hostbmc"}
    resp = fleet.op.http.patch(
        fleet.op.path("hosts", host), json={"spec": power}, headers={"Content-Type": "application/merge-patch+json"}
    )
    assert resp.status_code == 200, resp.text
    emulated_host = next(h for h in fleet.running.fleet.hosts if h.id == sim.host_id)
    host_boots, dpu_boots = emulated_host.boot_count, sim.boot_count

    faults.inject(fleet.running, sim.id, FaultKind.PCIE_AER)
    fleet.op.wait_for(
        "the BMC's event pushed to the receiver",
        lambda: fleet.inbox().recent("default", bmc),
        lambda entries: any(e.message_id.endswith("PCIeUncorrectableError") for e in entries),
        timeout=10,
    )
    dpu = fleet.op.wait_for(
        "host-power-cycle issued",
        lambda: fleet.op.get("dpus", name),
        lambda d: any(a == "host-power-cycle" and r != "Issued" for a, r in history(d)),
        timeout=SILENCE + 15,
    )
    assert ("host-power-cycle", "Succeeded") in history(dpu)
    entry = next(h for h in dpu["status"]["remediation"]["history"] if h["action"] == "host-power-cycle")
    assert "poweraction/" in entry["message"] and "bootOrder dpu-first" in entry["message"]
    actions = [a for a in fleet.op.items("poweractions") if a["spec"]["target"] == {"kind": "DPU", "name": name}]
    assert len(actions) == 1
    assert (actions[0]["spec"]["mode"], actions[0]["spec"]["resetType"]) == ("both", "PowerCycle")
    done = fleet.op.wait_for(
        "the PowerAction done",
        lambda: fleet.op.get("poweractions", actions[0]["metadata"]["name"]),
        lambda a: (a.get("status") or {}).get("phase") in ("Succeeded", "Failed"),
        timeout=30,
    )
    assert done["status"]["phase"] == "Succeeded", done["status"]
    # dpu-first (the default boot order): the DPU is cycled and runs again before its host is
    assert [s["action"] for s in done["status"]["steps"]] == ["reset-dpu", "wait-dpu", "reset-host", "wait-host"]
    assert emulated_host.boot_count == host_boots + 1
    assert sim.boot_count >= dpu_boots + 1
    faults.clear(fleet.running, sim.id)


def test_a_lost_subscription_is_recreated_and_a_deleted_bmc_loses_it(fleet: Fleet) -> None:
    sim = fleet.sim(4)
    bmc = fleet.bmc_name(sim)
    emulated = fleet.running.fleet.bmcs[sim.id]
    _subscribed(fleet, bmc)
    emulated.subscriptions.clear()  # the BMC forgot it (a factory reset, a firmware update)
    fleet.op.wait_for("re-created", lambda: len(emulated.subscriptions), lambda n: n == 1, timeout=10)
    fleet.op.wait_for(
        "the re-creation evented",
        lambda: [e["reason"] for e in fleet.op.events("BMC", bmc)],
        lambda reasons: "EventSubscriptionRecreated" in reasons,
        timeout=5,
    )
    time.sleep(1.5)  # checked again and again: never a second one
    assert len(emulated.subscriptions) == 1

    resp = fleet.op.http.delete(fleet.op.path("bmcs", bmc))
    assert resp.status_code in (200, 202), resp.text
    fleet.op.wait_for("the BMC gone", lambda: fleet.op.get("bmcs", bmc), lambda b: b is None, timeout=10)
    assert emulated.subscriptions == {}


# --- the classification, as a pure function --------------------------------------------------------------------


def test_diagnose_host_from_silence_and_the_dpus_power() -> None:
    from datetime import UTC, datetime, timedelta

    from dpufleet.api.kinds import FailureClass
    from dpufleet.health.diagnosis import diagnose_host, dpu_power_for_host
    from dpufleet.health.evidence import BMCView

    seen = datetime(2026, 11, 23, 3, 0, 0, 500000, tzinfo=UTC)
    running = BMCView(reachable=True, power_state="On", boot_progress_since=seen - timedelta(hours=2))
    rebooted = BMCView(reachable=True, power_state="On", boot_progress_since=seen.replace(microsecond=0))
    assert dpu_power_for_host(running, seen) == "On"
    assert dpu_power_for_host(rebooted, seen) == "Off"  # restarted with the host (whole-second BMC time)
    assert dpu_power_for_host(BMCView(reachable=True, power_state="Off"), seen) == "Off"
    assert dpu_power_for_host(BMCView(reachable=False), seen) is None

    healthy_host = diagnose_host(None, ["On"])
    assert healthy_host.failure_class == FailureClass.HEALTHY and healthy_host.evidence
    reset = diagnose_host(20, ["On"], 120, ["dpu-a"])
    assert reset.failure_class == FailureClass.HOST_RESET
    assert [(e.source, e.value) for e in reset.evidence] == [("host-agent", "silent for 20s"), ("redfish/dpu-a", "On")]
    assert diagnose_host(20, ["On", "Off"]).failure_class == FailureClass.HOST_POWER_CYCLE
    assert diagnose_host(121, ["On"], 120).failure_class == FailureClass.HOST_DOWN
