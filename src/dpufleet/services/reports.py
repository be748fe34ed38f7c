"""A DPU runtime's report: each instance's phase goes into the DPU's DPUAllocation `status.instances`.

The DPUAllocation's spec is the scheduler's (what the DPU holds); its status is the runtime's (what the
DPU runs). The DPUService controller reads both and shows running / ready per service. A report that
says what the stored status says writes nothing (an agent reports every few seconds); a change of
phase is also an Event on the service (Started, Failed, Restarted), so `dpufleet describe` tells the
story without a log search.
"""

from __future__ import annotations

import contextlib
from typing import Any, Literal

from ..api.agent_services import InstanceReport, ServiceReport
from ..api.errors import NotFound
from ..api.meta import isotime, now
from ..runtime.events import EventRecorder
from ..runtime.status import mutate_status_sync
from ..store.store import Store
from .desired import RUNTIME_FIELD

_VOLATILE = ("at", "memoryBytes", "cpuSeconds")  # change every report: written only with something else


def _entry(report: InstanceReport, at: str) -> dict[str, Any]:
    return {**report.model_dump(exclude_none=True), "at": at}


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return {k: v for k, v in a.items() if k not in _VOLATILE} == {k: v for k, v in b.items() if k not in _VOLATILE}


def record_service_report(
    store: Store, events: EventRecorder, project: str, dpu: str, report: ServiceReport, where: str = "DPU"
) -> None:
    """`where`: whose report it is, the DPU's runtime (status.instances) or its host agent's (hostInstances)."""
    at = isotime(now())
    list_field = RUNTIME_FIELD[where]
    entries = sorted((_entry(r, at) for r in report.instances), key=lambda e: str(e["service"]))
    before: list[dict[str, Any]] = []

    def mutate(status: dict[str, Any]) -> None:
        before[:] = list(status.get(list_field) or [])
        if len(before) == len(entries) and all(_same(a, b) for a, b in zip(before, entries, strict=True)):
            raise _Unchanged
        status[list_field] = entries

    try:
        mutate_status_sync(store, "DPUAllocation", dpu, mutate, project)
    except (NotFound, _Unchanged):
        return
    old = {e["service"]: e for e in before}
    place = dpu if where == "DPU" else f"{dpu}'s host"
    for entry in entries:
        _event(store, events, project, place, old.get(entry["service"]), entry)


def _event(
    store: Store, events: EventRecorder, project: str, dpu: str, old: dict[str, Any] | None, new: dict[str, Any]
) -> None:
    phase, restarts = new["phase"], int(new.get("restarts") or 0)
    message: tuple[str, str, Literal["Normal", "Warning"]] | None = None
    if phase == "Failed" and (old is None or old.get("phase") != "Failed"):
        message = ("InstanceFailed", f"{dpu}: {new.get('reason') or 'failed'}", "Warning")
    elif old is not None and restarts > int(old.get("restarts") or 0):
        message = ("InstanceRestarted", f"{dpu}: restart {restarts}: {new.get('reason') or 'exited'}", "Warning")
    elif phase == "Degraded" and (old is None or old.get("phase") != "Degraded"):
        message = ("InstanceDegraded", f"{dpu}: {new.get('reason') or 'not ready'}", "Warning")
    elif phase == "Running" and old is not None and old.get("phase") == "Degraded":
        message = ("InstanceRecovered", f"{dpu}: ready again", "Normal")
    elif phase == "Running" and (old is None or old.get("phase") != "Running"):
        message = ("InstanceStarted", f"{dpu}: running revision {new.get('revision')}", "Normal")
    if message is None:
        return
    with contextlib.suppress(NotFound):
        events.record(store.get("DPUService", new["service"], project), *message)


class _Unchanged(Exception):
    """The DPU's runtime says what it said: no write."""
