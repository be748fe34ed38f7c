"""The services plugin: each service instance on the DPU, as its runtime sees it (agent/services.py): memory
and CPU time from its cgroup, whether it is ready, its restarts, and its comings and goings as events.

Names follow OpenTelemetry's container conventions (``container.memory.usage``, ``container.cpu.time``) with
the instance named by ``service.name`` and ``service.instance.id``; what they do not cover is ``dpufleet.*``.
The plugin reads what the runtime already measured for its own report: nothing is read twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from ...api.telemetry import Sample, TelemetryAssignment, TelemetryClass
from .base import InstanceStats, Sources, TelemetryPlugin

LOAD, USAGE, ERRORS, EVENTS = TelemetryClass.LOAD, TelemetryClass.USAGE, TelemetryClass.ERRORS, TelemetryClass.EVENTS
# a memory limit at or above this is "no limit" (cgroup v1 reports 2^63 rounded down to a page)
NO_LIMIT = 1 << 62
DOWN_PHASES = frozenset({"Failed"})


def _state(phase: str, ready: bool) -> str:
    """How an event names an instance's condition: up (running and ready), starting, down, done."""
    if phase == "Running":
        return "up" if ready else "not-ready"
    if phase in DOWN_PHASES:
        return "down"
    if phase == "Succeeded":
        return "done"
    return "starting"


class ServicesPlugin(TelemetryPlugin):
    name = "services"
    classes = frozenset({LOAD, USAGE, ERRORS, EVENTS})

    def __init__(self, sources: Sources) -> None:
        super().__init__(sources)
        self._states: dict[str, tuple[str, int]] | None = None  # service -> (state, restarts); None: not yet seen
        self._per_service: dict[str, frozenset[TelemetryClass]] = {}

    def configure(self, assignment: TelemetryAssignment) -> None:
        """Each service's own classes (its DPUService's annotation): what the DPU asks, narrowed per service."""
        self._per_service = {name: frozenset(classes) for name, classes in assignment.serviceClasses.items()}

    def collect(self, enabled: frozenset[TelemetryClass], at: int) -> Iterable[tuple[TelemetryClass, Sample]]:
        if self.sources.services is None:
            return
        instances = list(self.sources.services())
        asked = enabled
        for inst in instances:
            own = self._per_service.get(inst.service)
            enabled = asked & own if own is not None else asked
            attrs = {"service.name": inst.service, "service.instance.id": inst.instance}
            if LOAD in enabled:
                yield from ((LOAD, s) for s in self._load(inst, attrs, at))
            if USAGE in enabled and inst.cpuSeconds is not None:
                # CPU seconds per service: what a service (and its tenant) is billed for
                yield USAGE, Sample(name="container.cpu.time", unit="s", value=inst.cpuSeconds, time=at,
                                    attributes=attrs)  # fmt: skip
            if ERRORS in enabled:
                yield ERRORS, Sample(name="dpufleet.service.restarts", unit="{restart}", value=inst.restarts,
                                     time=at, attributes=attrs)  # fmt: skip
        if EVENTS in asked:
            quiet = {name for name, own in self._per_service.items() if EVENTS not in own}
            yield from ((EVENTS, s) for s in self._events(instances, at) if s.attributes["service.name"] not in quiet)

    @staticmethod
    def _load(inst: InstanceStats, attrs: dict[str, str], at: int) -> Iterator[Sample]:
        yield Sample(name="dpufleet.service.ready", unit="1", value=1.0 if inst.ready and inst.phase == "Running"
                     else 0.0, time=at, attributes=attrs)  # fmt: skip
        if inst.memoryBytes is not None:
            yield Sample(name="container.memory.usage", unit="By", value=inst.memoryBytes, time=at, attributes=attrs)
        if inst.memoryLimitBytes is not None and inst.memoryLimitBytes < NO_LIMIT:
            yield Sample(name="dpufleet.service.memory.limit", unit="By", value=inst.memoryLimitBytes, time=at,
                         attributes=attrs)  # fmt: skip

    def _events(self, instances: list[InstanceStats], at: int) -> Iterator[Sample]:
        """An event when an instance appears, changes state, restarts or goes away. The first collection only
        learns what runs (an agent restart is not news)."""
        now = {i.service: (_state(i.phase, i.ready), i.restarts) for i in instances}
        reasons = {i.service: i.reason for i in instances}
        before, self._states = self._states, now
        if before is None:
            return
        for service in sorted(now.keys() | before.keys()):
            attrs = {"service.name": service}
            if service not in before:
                state = now[service][0]
                yield Sample(name="dpufleet.event.service", time=at, attributes={**attrs, "state": "new"},
                             severity="info", body=f"service {service} placed on this DPU ({state})")  # fmt: skip
                continue
            if service not in now:
                yield Sample(name="dpufleet.event.service", time=at, attributes={**attrs, "state": "removed"},
                             severity="info", body=f"service {service} removed from this DPU")  # fmt: skip
                continue
            (was, restarts_before), (state, restarts) = before[service], now[service]
            why = f": {reasons[service]}" if reasons.get(service) else ""
            if restarts > restarts_before:
                yield Sample(name="dpufleet.event.service", time=at, attributes={**attrs, "state": "restarted"},
                             severity="warning",
                             body=f"service {service} restarted ({restarts} restarts in all){why}")  # fmt: skip
            if state != was:
                severity = "error" if state == "down" else "warning" if was == "up" else "info"
                yield Sample(name="dpufleet.event.service", time=at, attributes={**attrs, "state": state},
                             severity=severity, body=f"service {service} is {state} (was {was}){why}")  # fmt: skip
