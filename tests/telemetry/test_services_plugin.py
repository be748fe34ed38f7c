"""The services plugin: what it says of each instance on the DPU, only for the classes asked for, and the
events it makes of an instance's comings and goings. The instances here are the runtime's own report model;
tests/services/test_runtime.py runs the plugin over real containers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dpufleet.agent.telemetry.base import Sources
from dpufleet.agent.telemetry.plugins import DEFAULT_PLUGINS
from dpufleet.agent.telemetry.services_plugin import ServicesPlugin
from dpufleet.api.kinds.services import InstanceReport
from dpufleet.api.telemetry import Sample, TelemetryAssignment, TelemetryClass

ALL = frozenset(TelemetryClass)


def inst(service: str, phase: str = "Running", ready: bool = True, **more: Any) -> InstanceReport:
    return InstanceReport.model_validate(
        {"service": service, "instance": f"{service}/dpu-a", "revision": "r1", "phase": phase, "ready": ready,
         "memoryBytes": 10 << 20, "memoryLimitBytes": 64 << 20, "cpuSeconds": 1.5, **more}
    )  # fmt: skip


def plugin(tmp_path: Path, now: list[InstanceReport]) -> ServicesPlugin:
    return ServicesPlugin(Sources(root=tmp_path, state=tmp_path, services=lambda: list(now)))


def by_class(samples: list[tuple[TelemetryClass, Sample]], cls: TelemetryClass) -> list[Sample]:
    return [s for c, s in samples if c == cls]


def test_each_instance_has_its_memory_cpu_readiness_and_restarts_under_its_own_class(tmp_path: Path) -> None:
    now = [inst("dns", restarts=2), inst("fw", phase="Starting", ready=False, memoryBytes=None, cpuSeconds=None,
                                          memoryLimitBytes=None)]  # fmt: skip
    out = list(plugin(tmp_path, now).collect(ALL, 123))
    load = {(s.name, s.attributes["service.name"]): s.value for s in by_class(out, TelemetryClass.LOAD)}
    assert load == {
        ("dpufleet.service.ready", "dns"): 1.0,
        ("container.memory.usage", "dns"): 10 << 20,
        ("dpufleet.service.memory.limit", "dns"): 64 << 20,
        ("dpufleet.service.ready", "fw"): 0.0,  # not running yet: no cgroup figures, none invented
    }
    usage = by_class(out, TelemetryClass.USAGE)
    assert [(s.name, s.unit, s.value, s.attributes["service.instance.id"]) for s in usage] == [
        ("container.cpu.time", "s", 1.5, "dns/dpu-a")
    ]
    errors = {s.attributes["service.name"]: s.value for s in by_class(out, TelemetryClass.ERRORS)}
    assert errors == {"dns": 2, "fw": 0}
    assert all(s.time == 123 for _, s in out)
    assert by_class(out, TelemetryClass.EVENTS) == [], "the first collection learns what runs: no news yet"


def test_a_class_not_asked_for_is_not_produced(tmp_path: Path) -> None:
    out = list(plugin(tmp_path, [inst("dns")]).collect(frozenset({TelemetryClass.USAGE}), 1))
    assert {c for c, _ in out} == {TelemetryClass.USAGE}
    assert list(plugin(tmp_path, [inst("dns")]).collect(frozenset({TelemetryClass.LOGS}), 1)) == []


def test_no_limit_is_no_limit_sample(tmp_path: Path) -> None:
    out = list(plugin(tmp_path, [inst("dns", memoryLimitBytes=9223372036854771712)]).collect(ALL, 1))
    assert "dpufleet.service.memory.limit" not in {s.name for _, s in out}  # cgroup v1's "unlimited"


def test_events_for_new_ready_restarted_down_and_removed_instances(tmp_path: Path) -> None:
    now = [inst("dns")]
    p = plugin(tmp_path, now)

    def events() -> list[tuple[str, str, str | None, str]]:
        found = by_class(list(p.collect(frozenset({TelemetryClass.EVENTS}), 1)), TelemetryClass.EVENTS)
        return [(s.attributes["service.name"], s.attributes["state"], s.severity, s.body or "") for s in found]

    assert events() == []
    now.append(inst("fw", phase="Pulling", ready=False))
    assert [e[:3] for e in events()] == [("fw", "new", "info")]
    now[1] = inst("fw")
    assert [e[:3] for e in events()] == [("fw", "up", "info")]
    assert events() == [], "nothing changed: nothing said"
    now[1] = inst("fw", phase="Running", ready=False, restarts=1, reason="exited with status 3")
    said = events()
    assert [e[:3] for e in said] == [("fw", "restarted", "warning"), ("fw", "not-ready", "warning")]
    assert "exited with status 3" in said[0][3] and "1 restarts" in said[0][3]
    now[1] = inst("fw", phase="Failed", ready=False, restarts=1, reason="exited with status 3")
    assert [e[:3] for e in events()] == [("fw", "down", "error")]
    del now[1]
    assert [e[:3] for e in events()] == [("fw", "removed", "info")]


def test_without_services_on_the_dpu_the_plugin_says_nothing(tmp_path: Path) -> None:
    assert "services" in DEFAULT_PLUGINS
    assert list(ServicesPlugin(Sources(root=tmp_path, state=tmp_path)).collect(ALL, 1)) == []


def test_a_service_reports_only_the_classes_its_dpuservice_asks_for(tmp_path: Path) -> None:
    now = [inst("dns", restarts=1), inst("fw")]
    quiet = plugin(tmp_path, now)
    quiet.configure(TelemetryAssignment(classes=list(ALL), serviceClasses={"fw": [TelemetryClass.USAGE]}))
    list(quiet.collect(ALL, 1))  # the first collection learns what runs
    now.append(inst("new"))
    now[1] = inst("fw", restarts=3)
    out = list(quiet.collect(ALL, 2))
    fw = {(c, s.name) for c, s in out if s.attributes.get("service.name") == "fw"}
    assert fw == {(TelemetryClass.USAGE, "container.cpu.time")}  # billing only: no load, errors or events
    dns = {c for c, s in out if s.attributes.get("service.name") == "dns"}
    assert dns == {TelemetryClass.LOAD, TelemetryClass.USAGE, TelemetryClass.ERRORS}  # all the DPU asks
    assert [s.attributes["state"] for c, s in out if c == TelemetryClass.EVENTS] == ["new"]  # fw's restart unsaid
