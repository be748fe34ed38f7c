"""Disruption budgets: a drain takes a service's instance away only while the service stays within it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from dpufleet.api.agent_services import InstanceReport, ServiceReport
from dpufleet.api.kinds import DPUServiceSpec
from dpufleet.runtime.events import EventRecorder
from dpufleet.services.controller import schedule_service
from dpufleet.services.desired import desired_services
from dpufleet.services.reports import record_service_report
from dpufleet.services.snapshot import DRAIN_ANNOTATION
from dpufleet.store.store import Store
from services.test_scheduler_store import add_service, store_fleet

P = "default"


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Store]:
    with store_fleet(tmp_path, 4) as store:
        yield store


def report(store: Store, dpu: str, service: str, *, ready: bool = True) -> None:
    """The DPU's runtime says the instance it was told to run is Running (and ready, or not)."""
    for inst in desired_services(store, P, dpu).instances:
        if inst.service == service:
            entry = InstanceReport(service=service, instance=inst.instance, revision=inst.revision,
                                   configRevision=inst.configRevision, phase="Running", ready=ready)  # fmt: skip
            record_service_report(store, EventRecorder(store, "test"), P, dpu, ServiceReport(instances=[entry]))


def drain(store: Store, dpu: str) -> None:
    doc = store.get("DPU", dpu, P)
    doc["spec"]["unschedulable"] = True
    doc["metadata"].setdefault("annotations", {})[DRAIN_ANNOTATION] = "t"
    store.update(doc)


def where(store: Store, service: str) -> list[str]:
    status = store.get("DPUService", service, P)["status"]
    return sorted(i["dpu"] for i in status["instances"] if i.get("dpu"))


def allowed(store: Store, service: str) -> dict[str, Any]:
    status = store.get("DPUService", service, P)["status"]
    return next(c for c in status["conditions"] if c["type"] == "DisruptionAllowed")


def test_a_drained_replica_leaves_only_once_its_replacement_is_ready(fleet: Store) -> None:
    add_service(fleet, "dns", {"replicas": 2}, disruptionBudget={"maxUnavailable": 0})
    schedule_service(fleet, P, "dns")
    first = where(fleet, "dns")
    for dpu in first:
        report(fleet, dpu, "dns")
    drain(fleet, first[0])
    schedule_service(fleet, P, "dns")
    now = where(fleet, "dns")
    assert len(now) == 3 and first[0] in now  # the replacement is placed, the drained one stays
    condition = allowed(fleet, "dns")
    assert condition["status"] == "False" and "the disruption budget allows 0" in condition["message"]
    (replacement,) = set(now) - set(first)
    report(fleet, replacement, "dns")
    schedule_service(fleet, P, "dns")
    assert where(fleet, "dns") == sorted([first[1], replacement])
    assert allowed(fleet, "dns")["status"] == "True"


def test_without_a_budget_the_drained_replica_leaves_once_replaced(fleet: Store) -> None:
    add_service(fleet, "dns", {"replicas": 2})
    schedule_service(fleet, P, "dns")
    first = where(fleet, "dns")
    drain(fleet, first[0])
    schedule_service(fleet, P, "dns")
    assert first[0] not in where(fleet, "dns") and len(where(fleet, "dns")) == 2


def test_an_every_dpu_instance_waits_while_others_are_unavailable(fleet: Store) -> None:
    add_service(fleet, "agent", {"mode": "EveryDPU"}, disruptionBudget={"maxUnavailable": 1})
    schedule_service(fleet, P, "agent")
    assert where(fleet, "agent") == ["dpu-0", "dpu-1", "dpu-2", "dpu-3"]
    for dpu in ("dpu-0", "dpu-1", "dpu-2"):
        report(fleet, dpu, "agent")
    report(fleet, "dpu-3", "agent", ready=False)  # one already unavailable: the budget is spent
    drain(fleet, "dpu-0")
    schedule_service(fleet, P, "agent")
    assert "dpu-0" in where(fleet, "agent") and allowed(fleet, "agent")["reason"] == "BudgetExhausted"
    report(fleet, "dpu-3", "agent")
    schedule_service(fleet, P, "agent")
    assert where(fleet, "agent") == ["dpu-1", "dpu-2", "dpu-3"]


def test_a_budget_is_a_count_or_a_percentage() -> None:
    base = {"artifact": {"image": {"reference": "r/x@sha256:" + "a" * 64}}, "placement": {"replicas": 1}}
    assert DPUServiceSpec.model_validate({**base, "disruptionBudget": {"maxUnavailable": "10%"}})
    with pytest.raises(ValidationError, match=r"disruptionBudget\.maxUnavailable"):
        DPUServiceSpec.model_validate({**base, "disruptionBudget": {"maxUnavailable": -1}})


def relabel(store: Store, dpu: str, **labels: str) -> None:
    doc = store.get("DPU", dpu, P)
    doc["metadata"]["labels"] = labels
    store.update(doc)


def test_an_instance_follows_its_selector_when_a_dpus_labels_change(fleet: Store) -> None:
    add_service(fleet, "edge", {"mode": "EveryDPU", "selector": {"matchLabels": {"rack": "r1"}}})
    add_service(fleet, "dns", {"replicas": 1, "selector": {"matchLabels": {"rack": "r1"}}})
    schedule_service(fleet, P, "edge")
    schedule_service(fleet, P, "dns")
    (first,) = where(fleet, "dns")
    relabel(fleet, first, rack="r2")
    relabel(fleet, "dpu-3", rack="r2")
    for service in ("edge", "dns"):
        schedule_service(fleet, P, service)
    assert first not in where(fleet, "edge") and "dpu-3" not in where(fleet, "edge")
    (moved,) = where(fleet, "dns")
    assert moved not in (first, "dpu-3")  # placed on a DPU that still matches, the old one released
