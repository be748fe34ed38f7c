"""An instance that was ready and is not any more is Degraded: in its status, its service's, and the Events."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dpufleet.api.agent_services import InstanceReport, ServiceReport
from dpufleet.runtime.events import EventRecorder
from dpufleet.services.controller import schedule_service
from dpufleet.services.desired import desired_services
from dpufleet.services.reports import record_service_report
from dpufleet.store.store import Store
from services.test_scheduler_store import add_service, store_fleet

P = "default"
WHY = "readiness probe failing: exit status 1: cat: can't open '/tmp/ready'"


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Store]:
    with store_fleet(tmp_path, 2) as store:
        yield store


def report(store: Store, dpu: str, phase: str, ready: bool, reason: str | None = None) -> None:
    for inst in desired_services(store, P, dpu).instances:
        entry = InstanceReport(service=inst.service, instance=inst.instance, revision=inst.revision,
                               configRevision=inst.configRevision, phase=phase, ready=ready,  # type: ignore[arg-type]
                               reason=reason)  # fmt: skip
        record_service_report(store, EventRecorder(store, "test"), P, dpu, ServiceReport(instances=[entry]))


def events(store: Store) -> list[tuple[str, str]]:
    return [
        (e["reason"], e["message"]) for e in store.list("Event", P).items if e.get("reason", "").startswith("Instance")
    ]


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == kind)


def test_a_ready_instance_whose_readiness_fails_degrades_its_service_and_recovers(fleet: Store) -> None:
    add_service(fleet, "dns", {"replicas": 2})
    schedule_service(fleet, P, "dns")
    for dpu in ("dpu-0", "dpu-1"):
        report(fleet, dpu, "Running", True)
    schedule_service(fleet, P, "dns")
    status = fleet.get("DPUService", "dns", P)["status"]
    assert status["phase"] == "Running" and status["ready"] == 2

    report(fleet, "dpu-1", "Degraded", False, WHY)
    schedule_service(fleet, P, "dns")
    status = fleet.get("DPUService", "dns", P)["status"]
    assert status["phase"] == "Degraded"
    assert (status["running"], status["ready"]) == (2, 1)  # still running (not restarted), not serving
    (one,) = [i for i in status["instances"] if i["dpu"] == "dpu-1"]
    assert one["phase"] == "Degraded" and one["reason"] == WHY and one["ready"] is False
    running = condition(status, "Running")
    assert running["status"] == "False" and running["reason"] == "InstancesDegraded"
    assert running["message"] == f"1/2 ready; 1 degraded: dpu-1: {WHY}"
    assert ("InstanceDegraded", f"dpu-1: {WHY}") in events(fleet)

    report(fleet, "dpu-1", "Running", True)
    schedule_service(fleet, P, "dns")
    status = fleet.get("DPUService", "dns", P)["status"]
    assert status["phase"] == "Running" and condition(status, "Running")["reason"] == "AllRunning"
    assert ("InstanceRecovered", "dpu-1: ready again") in events(fleet)
    assert [r for r, _ in events(fleet)].count("InstanceStarted") == 2  # recovering is not starting again
