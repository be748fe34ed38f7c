"""A DPU's flavor on its running OS: what its agent is asked to apply, and what it reports back.

Provisioning validates a DPUFlavor against the DPU and records it (status.appliedFlavor); the DPU's
agent applies its kernel parameters, sysctls, config files, hugepages and core reservation on the DPU's
OS (agent/flavor.py), re-checks them every pass, undoes drift and reports. The report becomes
status.flavorState and the condition FlavorApplied; each drift it undid is a Warning Event on the DPU.
"""

from __future__ import annotations

import contextlib
from typing import Any

from ..api.agent_flavor import DesiredFlavor, FlavorReport
from ..api.errors import NotFound
from ..api.kinds import DPUFlavorSpec
from ..api.meta import isotime, now
from ..runtime.conditions import set_condition
from ..runtime.events import EventRecorder
from ..runtime.status import mutate_status_sync
from ..store.store import Store


def desired_flavor(store: Store, project: str, dpu: str) -> DesiredFlavor:
    """The flavor provisioning applied to `dpu` (status.appliedFlavor), as it is now; none when it has none
    or the flavor was deleted (the agent then keeps what it applied: removing a flavor changes no OS)."""
    status = store.get("DPU", dpu, project).get("status") or {}
    name = status.get("appliedFlavor")
    if not name:
        return DesiredFlavor(dpu=dpu)
    try:
        flavor = store.get("DPUFlavor", str(name), project)
    except NotFound:
        return DesiredFlavor(dpu=dpu, name=str(name))
    return DesiredFlavor(
        dpu=dpu,
        name=str(name),
        resourceVersion=str(flavor["metadata"].get("resourceVersion")),
        spec=DPUFlavorSpec.model_validate(flavor.get("spec") or {}),
    )


class _Unchanged(Exception):
    """The report says what the status says: no write (an agent reports every pass)."""


def record_flavor_report(store: Store, events: EventRecorder, project: str, dpu: str, report: FlavorReport) -> None:
    state = {
        "name": report.name,
        "resourceVersion": report.resourceVersion,
        "applied": report.applied,
        "problems": report.problems,
        "pendingReboot": report.pendingReboot,
    }

    def mutate(status: dict[str, Any]) -> None:
        before = {k: v for k, v in (status.get("flavorState") or {}).items() if k != "at"}
        if report.applied and report.pendingReboot:
            reason, message = "PendingReboot", "applied; for the next boot: " + ", ".join(report.pendingReboot)
        elif report.applied:
            reason, message = "Applied", f"flavor {report.name} holds on the DPU's OS"
        else:
            reason, message = "NotApplied", "; ".join(report.problems) or "not applied"
        changed = set_condition(status, "FlavorApplied", report.applied, reason, message)
        if before == state and not changed:
            raise _Unchanged
        status["flavorState"] = {**state, "at": isotime(now())}

    with contextlib.suppress(NotFound, _Unchanged):
        mutate_status_sync(store, "DPU", dpu, mutate, project)
    if report.repairs:
        with contextlib.suppress(NotFound):
            obj = store.get("DPU", dpu, project)
            for repair in report.repairs:
                events.record(obj, "FlavorDrift", f"{repair.item}: found {repair.found}; applied the flavor's value again",
                              "Warning")  # fmt: skip
