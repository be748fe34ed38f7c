"""A DPU may limit how many services upgrade their instance on it at once (services.dpufleet.io/max-upgrading):
the others wait, say so, and go once it is free."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from dpufleet.api.agent_services import InstanceReport, ServiceReport
from dpufleet.api.meta import ObjectMeta
from dpufleet.runtime.events import EventRecorder
from dpufleet.services.controller import schedule_service
from dpufleet.services.desired import desired_services
from dpufleet.services.reports import record_service_report
from dpufleet.store.store import Store
from services.test_scheduler_store import add_service, store_fleet

P = "default"
FAST = {"maxUnavailable": 1, "minReadySeconds": 0}


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Store]:
    with store_fleet(tmp_path, 2) as store:
        yield store


def serve(store: Store, dpu: str) -> None:
    """The DPU's runtime runs, Running and ready, every instance it is told to run."""
    entries = [
        InstanceReport(
            service=i.service,
            instance=i.instance,
            revision=i.revision,
            configRevision=i.configRevision,
            phase="Running",
            ready=True,
        )
        for i in desired_services(store, P, dpu).instances
    ]
    record_service_report(store, EventRecorder(store, "test"), P, dpu, ServiceReport(instances=entries))


def upgrade(store: Store, service: str) -> dict[str, object]:
    return dict(store.get("DPUService", service, P)["status"]["upgrade"])


def test_a_dpu_that_allows_one_upgrade_at_a_time_takes_the_second_service_after_the_first(fleet: Store) -> None:
    doc = fleet.get("DPU", "dpu-0", P)
    doc["metadata"]["annotations"] = {"services.dpufleet.io/max-upgrading": "1"}
    fleet.update(doc)
    for name in ("dns", "flow"):
        add_service(fleet, name, {"mode": "EveryDPU"}, upgrade=FAST, config={"env": {"V": "1"}})
    for _ in range(2):
        for name in ("dns", "flow"):
            schedule_service(fleet, P, name)
        for dpu in ("dpu-0", "dpu-1"):
            serve(fleet, dpu)
    for name in ("dns", "flow"):
        fleet.patch("DPUService", name, {"spec": {"config": {"env": {"V": "2"}}}}, P)
        schedule_service(fleet, P, name)

    dns, flow = upgrade(fleet, "dns"), upgrade(fleet, "flow")
    assert sorted(dns["inFlight"]) == ["dpu-0"]  # type: ignore[arg-type]
    # dpu-0 is busy with dns: flow takes dpu-1 (no limit there) and waits for dpu-0
    assert sorted(flow["inFlight"]) == ["dpu-1"] and flow["held"] == ["dpu-0"]  # type: ignore[arg-type]
    assert "1 wait for their DPU (dpu-0: 1 other service(s) upgrading there (dns; at most 1))" in str(flow["message"])

    for _ in range(3):  # dns finishes dpu-0 and moves to dpu-1; then dpu-0 is free for flow
        for dpu in ("dpu-0", "dpu-1"):
            serve(fleet, dpu)
        for name in ("dns", "flow"):
            schedule_service(fleet, P, name)
    assert "dpu-0" not in (upgrade(fleet, "dns").get("inFlight") or {})
    flow = upgrade(fleet, "flow")
    assert (
        "dpu-0" in (flow.get("inFlight") or {}) or "dpu-0" in (flow.get("updated") or []) or flow["phase"] == "Complete"
    )


@pytest.mark.parametrize(("value", "said"), [("0", "0 is outside 1 to 1000"), ("two", "'two' is not a whole number")])
def test_a_bad_limit_is_refused_naming_the_annotation(value: str, said: str) -> None:
    with pytest.raises(ValidationError, match=f"services.dpufleet.io/max-upgrading: {said}"):
        ObjectMeta.model_validate({"name": "dpu-0", "annotations": {"services.dpufleet.io/max-upgrading": value}})
