"""A move between DPUs of a service with a state handoff, as the scheduler and the agent protocol's
desired set see it: the leaving instance and its replacement are paired in their DPUs' allocation
records; the leaving one stays until the replacement serves (with the state it exported), or until the
handoff is given up; one that does not serve has nothing to hand on and goes at once."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from dpufleet.api.agent_services import InstanceReport, ServiceReport
from dpufleet.api.kinds.services import StateExport
from dpufleet.api.meta import isotime, now
from dpufleet.runtime.events import EventRecorder
from dpufleet.services import controller
from dpufleet.services.controller import mark_instance, schedule_service
from dpufleet.services.desired import desired_services
from dpufleet.services.reports import record_service_report
from dpufleet.store.store import Store
from services.test_scheduler_store import P, add_service, fleet  # noqa: F401  (the fixture)

STATE = "b" * 64
TIMEOUT = 5
HANDOFF = {"listen": [8080], "timeoutSeconds": TIMEOUT}


def placed_on(store: Store) -> dict[str, dict[str, Any]]:
    """DPU -> the tally instance its allocation record holds."""
    found = {}
    for record in store.list("DPUAllocation", P).items:
        for inst in record["spec"].get("instances") or []:
            if inst["service"] == "tally":
                found[record["spec"]["dpu"]] = inst
    return found


def report(
    store: Store, dpu: str, *, ready: bool, export: StateExport | None = None, awaiting: bool = False
) -> None:
    revision = desired_services(store, P, dpu).instances[0].revision
    entry = InstanceReport(service="tally", instance=f"tally/{dpu}", revision=revision,
                           phase="Pending" if awaiting else "Running", ready=ready, stateExport=export,
                           awaitingState=awaiting)  # fmt: skip
    record_service_report(store, EventRecorder(store, "test"), P, dpu, ServiceReport(instances=[entry]))


def reasons(store: Store) -> list[str]:
    return [e["reason"] for e in store.list("Event", P).items if e["involvedObject"]["name"] == "tally"]


def moving(store: Store) -> tuple[str, str]:
    add_service(store, "tally", {"mode": "Replicas", "replicas": 1}, handoff=HANDOFF)
    schedule_service(store, P, "tally")
    (old,) = placed_on(store)
    report(store, old, ready=True)
    store.patch("DPUService", "tally", {"spec": {"placement": {"exclude": [old]}}}, P)  # `dpufleet service move`
    schedule_service(store, P, "tally")
    return old, next(d for d in placed_on(store) if d != old)


def test_the_leaving_instance_hands_its_state_to_the_replacement_then_goes(fleet: Store) -> None:  # noqa: F811
    old, new = moving(fleet)
    records = placed_on(fleet)
    assert records[old]["stateTo"] == new and records[new]["stateFrom"] == old
    assert "StateHandoff" in reasons(fleet)
    (leaving,) = desired_services(fleet, P, old).instances
    (coming,) = desired_services(fleet, P, new).instances
    assert coming.stateFrom == old and coming.stateSha256 is None  # not exported yet
    assert leaving.stateTo is None, "it serves on until its replacement has pulled its artifact"
    report(fleet, new, ready=False, awaiting=True)
    (leaving,) = desired_services(fleet, P, old).instances
    assert leaving.stateTo == new  # drain, export, hand it on

    schedule_service(fleet, P, "tally")
    assert set(placed_on(fleet)) == {old, new}, "the leaving instance stays until the new one serves"
    report(fleet, old, ready=False, export=StateExport(to=new, sha256=STATE, bytes=3))
    (coming,) = desired_services(fleet, P, new).instances
    assert coming.stateSha256 == STATE  # its runtime now fetches it (the agent API signs a URL to it)
    report(fleet, new, ready=False)  # starting: no longer waiting, and the leaving one stays drained
    assert desired_services(fleet, P, old).instances[0].stateTo == new
    schedule_service(fleet, P, "tally")
    assert set(placed_on(fleet)) == {old, new}

    report(fleet, new, ready=True)
    schedule_service(fleet, P, "tally")
    records = placed_on(fleet)
    assert set(records) == {new} and "stateFrom" not in records[new]
    assert "StateHandedOff" in reasons(fleet)
    status = fleet.get("DPUService", "tally", P)["status"]
    assert status["scheduled"] == 1 and status["ready"] == 1


def test_a_handoff_nothing_answers_is_given_up_and_the_replacement_starts_without_it(
    fleet: Store,  # noqa: F811
) -> None:
    old, new = moving(fleet)
    schedule_service(fleet, P, "tally")
    assert set(placed_on(fleet)) == {old, new}
    began = now() - timedelta(seconds=TIMEOUT * 3 + controller.HANDOFF_GRACE + 1)
    mark_instance(fleet, P, old, "tally", {"stateSince": isotime(began)})  # the leaving DPU never answered
    schedule_service(fleet, P, "tally")
    records = placed_on(fleet)
    assert set(records) == {new} and "stateFrom" not in records[new]
    assert "StateHandoffAbandoned" in reasons(fleet)
    assert desired_services(fleet, P, new).instances[0].stateFrom is None


def test_a_leaving_instance_that_does_not_serve_is_released_without_a_handoff(fleet: Store) -> None:  # noqa: F811
    add_service(fleet, "tally", {"mode": "Replicas", "replicas": 1}, handoff=HANDOFF)
    schedule_service(fleet, P, "tally")
    (old,) = placed_on(fleet)
    report(fleet, old, ready=False)  # failing: nothing worth handing on, and nothing answers the drain
    fleet.patch("DPUService", "tally", {"spec": {"placement": {"exclude": [old]}}}, P)
    schedule_service(fleet, P, "tally")
    records = placed_on(fleet)
    assert old not in records and len(records) == 1
    assert "stateFrom" not in next(iter(records.values()))
    assert "StateHandoff" not in reasons(fleet)
