"""The BMC plugin of telemetry, run by the control plane: each DPU's environmental sensors (temperature,
power, fans, voltages) read out of band from its BMC, and the BMC's own events, joined to the DPU's
telemetry as if its agent had sent them.

Out of band on purpose: the BMC answers while the DPU's OS is hung, panicked or being reinstalled, which
is when its temperature matters most; and a DPU's OS never holds its BMC's credentials (a compromised DPU
must not be able to power-cycle itself). The control plane already holds a session per BMC
(inventory/bmcs.py, one pooled connection per BMC shared with the crawl and health), so this adds
requests, not connections.

Only DPUs that ask for class ``environmental`` are polled (sender-side filtering: the counters
``bmcPolls`` prove it), each at its telemetry interval but never more often than ``FLOOR_SECONDS``
(BMCs serve a few requests at a time), and at most ``CONCURRENCY`` at once across the fleet. A sensor
whose Status.Health changes, and each event a subscribed BMC pushes, is one sample of class ``events``.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from ..api.naming import dpu_name
from ..api.telemetry import CLASSES_ANNOTATION, INTERVAL_ANNOTATION, SampleRecord, TelemetryClass, parse_classes
from ..drivers.redfish.client import RedfishClient, RedfishError
from ..drivers.redfish.events import LogEntry
from ..drivers.redfish.metric_reports import metric_reports, read_reports
from ..drivers.redfish.sensors import SensorReading, read_chassis, system_chassis
from ..inventory.bmcs import BMCAccessError, BMCSessions, dpu_bmc, dpu_serial
from ..vendors.catalog import Catalog, builtin_catalog
from ..vendors.schema import SensorMapping

log = logging.getLogger(__name__)
FLOOR_SECONDS = 15.0
CONCURRENCY = 16
TICK_SECONDS = 1.0
RECRAWL_SECONDS = 300.0  # where MetricReports stand in for the sensors, they are crawled again this often

# what a reading of each kind is called in the common metric set (OpenTelemetry's hw.* conventions),
# its unit there, the factor from the BMC's unit, and the hw.type it is reported under
_ENERGY_FACTOR = {"J": 1.0, "kW.h": 3.6e6, "W.h": 3600.0}


def metric_of(reading: SensorReading) -> tuple[str, str, float, str]:
    """(name, unit, value, hw.type) of a reading in the common metric set."""
    kind, value, unit = reading.kind, reading.value, reading.unit
    if kind == "temperature":
        return "hw.temperature", "Cel", value, "temperature"
    if kind == "power":
        return "hw.power", "W", value, "enclosure"
    if kind == "voltage":
        return "hw.voltage", "V", value, "voltage"
    if kind == "fan":
        if unit == "%":
            return "hw.fan.speed_ratio", "1", value / 100.0, "fan"
        return "hw.fan.speed", "rpm", value, "fan"
    if kind == "energy" and unit in _ENERGY_FACTOR:
        return "hw.energy", "J", value * _ENERGY_FACTOR[unit], "enclosure"
    if kind == "current":
        return "hw.current", "A", value, "enclosure"
    return f"dpufleet.bmc.{kind}", unit, value, "enclosure"


_HW_TYPE = {
    "hw.temperature": "temperature",
    "hw.voltage": "voltage",
    "hw.fan.speed": "fan",
    "hw.fan.speed_ratio": "fan",
}


def _mapping(reading: SensorReading, mappings: Iterable[SensorMapping]) -> SensorMapping | None:
    return next((m for m in mappings if fnmatch.fnmatchcase(reading.id.lower(), m.sensor.lower())), None)


def samples_of(
    readings: Iterable[SensorReading], at: int, mappings: Iterable[SensorMapping] = ()
) -> list[SampleRecord]:
    """The readings as samples of the common set; ``mappings``: the DPU model's, from the vendor catalog (a
    vendor's sensor id told what it is, its units, scale, location), tried in order, the first that names the
    sensor applying."""
    found: list[SampleRecord] = []
    mappings = list(mappings)
    for reading in readings:
        mapped = _mapping(reading, mappings) if mappings else None
        name, unit, value, hw_type = metric_of(reading)
        if mapped is not None:
            if mapped.metric is not None and mapped.unit is not None:
                name, unit, value = mapped.metric, mapped.unit, reading.value
                hw_type = _HW_TYPE.get(name, "enclosure")
            value *= mapped.scale
        attributes = {"hw.id": f"{reading.chassis}/{reading.id}" if reading.chassis else reading.id,
                      "hw.type": hw_type, "source": "bmc"}  # fmt: skip
        label = mapped.name if mapped is not None and mapped.name else reading.name
        if label:
            attributes["hw.name"] = label
        location = mapped.location if mapped is not None and mapped.location else reading.context
        if location:
            attributes["hw.sensor_location"] = location
        found.append({"name": name, "unit": unit, "value": value, "time": at, "attributes": attributes})
    return found


_SEVERITY = {"ok": "info", "warning": "warning", "critical": "critical"}


def severity_of(health: str) -> str:
    """The sample severity of a Redfish Health or MessageSeverity (OK, Warning, Critical)."""
    return _SEVERITY.get(health.strip().lower(), "info")


@dataclass
class Target:
    project: str
    serial: str
    doc: dict[str, Any]
    interval: float
    due: float = 0.0
    chassis: list[str] | None = None  # the DPU's chassis paths, found once (again after a failure)
    health: dict[str, str] = field(default_factory=dict)  # hw.id -> the Health last seen
    failing: bool = False
    reports: list[str] | None = None  # the BMC's MetricReports, found once (again after a failure)
    sources: dict[str, SensorReading] = field(default_factory=dict)  # the last crawl's, by the property read
    crawled: float = 0.0  # monotonic


@dataclass
class BMCStats:
    polls: int = 0
    failures: int = 0
    samples: int = 0
    events: int = 0
    pushed: int = 0
    report_reads: int = 0  # polls answered by the BMC's MetricReports instead of a crawl of its sensors

    def figures(self) -> dict[str, int]:
        return {"bmcPolls": self.polls, "bmcPollFailures": self.failures, "bmcSamples": self.samples,
                "bmcHealthEvents": self.events, "bmcPushedEvents": self.pushed,
                "bmcReportReads": self.report_reads}  # fmt: skip


Emit = Callable[[str, str, TelemetryClass, list[SampleRecord]], None]  # (project, serial, class, samples)


def _wants(doc: dict[str, Any]) -> tuple[set[TelemetryClass], float]:
    annotations = (doc.get("metadata") or {}).get("annotations") or {}
    try:
        classes = set(parse_classes(annotations.get(CLASSES_ANNOTATION, "")))
        interval = float(annotations.get(INTERVAL_ANNOTATION, "10"))
    except ValueError:
        return set(), 0.0
    return classes, interval


class BMCTelemetry:
    """Polls the sensors of the DPUs that ask for them; ``emit`` takes what was read (the aggregator)."""

    def __init__(self, sessions: BMCSessions, emit: Emit, *, floor: float = FLOOR_SECONDS,
                 concurrency: int = CONCURRENCY) -> None:  # fmt: skip
        self.sessions = sessions
        self.emit = emit
        self.catalog: Catalog = builtin_catalog()  # each model's sensor mappings
        self.floor = floor
        self.targets: dict[tuple[str, str], Target] = {}  # (project, DPU name) -> what to poll
        self.by_bmc: dict[tuple[str, str], set[tuple[str, str]]] = {}  # (project, BMC) -> its DPUs asking for events
        self.events_wanted: dict[tuple[str, str], tuple[str, str]] = {}  # (project, DPU name) -> (BMC, serial)
        self.stats = BMCStats()
        self._slots = asyncio.Semaphore(concurrency)
        self._running: set[asyncio.Task[None]] = set()

    # --- which DPUs: from the DPU objects (the aggregator's DPU follower calls these) -----------------------

    async def replace(self, docs: Iterable[dict[str, Any]]) -> None:
        seen: set[tuple[str, str]] = set()
        for doc in docs:
            seen.add(self._key(doc))
            self.update(doc)
        for key in set(self.targets) - seen:
            self.forget(key)
        for key in set(self.events_wanted) - seen:
            self.forget(key)

    def update(self, doc: dict[str, Any]) -> None:
        key = self._key(doc)
        classes, interval = _wants(doc)
        bmc, serial = dpu_bmc(doc), dpu_serial(doc) or key[1].removeprefix("dpu-")
        self._unindex(key)
        if bmc and TelemetryClass.EVENTS in classes:
            self.events_wanted[key] = (bmc, serial)
            self.by_bmc.setdefault((key[0], bmc), set()).add(key)
        if not bmc or TelemetryClass.ENVIRONMENTAL not in classes:
            self.targets.pop(key, None)
            return
        target = self.targets.get(key)
        wait = max(self.floor, interval)
        if target is None or target.serial != serial:
            self.targets[key] = Target(key[0], serial, doc, wait, due=time.monotonic())
            return
        if dpu_bmc(target.doc) != bmc:
            target.chassis = None
        target.doc, target.interval = doc, wait

    async def changed(self, change: str, doc: dict[str, Any]) -> None:
        if change == "DELETED":
            self.forget(self._key(doc))
        else:
            self.update(doc)

    def forget(self, key: tuple[str, str]) -> None:
        self.targets.pop(key, None)
        self._unindex(key)

    def _unindex(self, key: tuple[str, str]) -> None:
        before = self.events_wanted.pop(key, None)
        if before is not None:
            dpus = self.by_bmc.get((key[0], before[0]))
            if dpus is not None:
                dpus.discard(key)
                if not dpus:
                    del self.by_bmc[(key[0], before[0])]

    @staticmethod
    def _key(doc: dict[str, Any]) -> tuple[str, str]:
        meta = doc.get("metadata") or {}
        return str(meta.get("project") or "default"), str(meta.get("name", ""))

    # --- pushed BMC events (the inbox's forwarder: called in the receiving thread) ---------------------------

    def pushed(self, project: str, bmc: str, entry: LogEntry) -> None:
        for key in sorted(self.by_bmc.get((project, bmc), ())):
            serial = self.events_wanted[key][1]
            self.stats.pushed += 1
            taken = int(entry.created.timestamp() * 1e9) if entry.created else time.time_ns()
            sample: SampleRecord = {
                "name": "dpufleet.event.bmc", "time": taken, "severity": severity_of(entry.severity),
                "attributes": {"bmc": bmc, "message.id": entry.message_id, "source": "redfish-event"},
                "body": entry.message[:4096],
            }  # fmt: skip
            self.emit(project, serial, TelemetryClass.EVENTS, [sample])

    # --- polling -------------------------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            while True:
                clock = time.monotonic()
                for target in list(self.targets.values()):
                    if target.due <= clock:
                        target.due = clock + target.interval
                        task = asyncio.get_running_loop().create_task(self._poll_bounded(target))
                        self._running.add(task)
                        task.add_done_callback(self._running.discard)
                await asyncio.sleep(TICK_SECONDS)
        finally:
            for task in list(self._running):
                task.cancel()

    async def _poll_bounded(self, target: Target) -> None:
        async with self._slots:
            await self.poll(target)

    async def poll(self, target: Target) -> None:
        """Read one DPU's sensors and emit them; a BMC that fails is logged once until it answers again."""
        self.stats.polls += 1
        name = dpu_name(target.serial)
        try:
            session = await self.sessions.for_dpu(target.doc, timeout=5.0, retries=0)
            if target.chassis is None:
                target.chassis = await system_chassis(session.client, await session.system())
            readings = await self._read(session.client, target)
        except (RedfishError, BMCAccessError) as exc:
            self.stats.failures += 1
            target.chassis, target.reports, target.sources = None, None, {}
            self.sessions.invalidate(target.project, dpu_bmc(target.doc) or "")
            if not target.failing:
                log.warning("telemetry: the sensors of %s could not be read from its BMC: %s", name, exc)
            target.failing = True
            return
        if target.failing:
            log.info("telemetry: the sensors of %s are read from its BMC again", name)
        target.failing = False
        at = time.time_ns()
        samples = samples_of(readings, at, self._mappings(target.doc))
        self.stats.samples += len(samples)
        if samples:
            self.emit(target.project, target.serial, TelemetryClass.ENVIRONMENTAL, samples)
        events = self._health_changes(target, readings, at)
        if events and TelemetryClass.EVENTS in _wants(target.doc)[0]:
            self.stats.events += len(events)
            self.emit(target.project, target.serial, TelemetryClass.EVENTS, events)

    async def _read(self, client: RedfishClient, target: Target) -> list[SensorReading]:
        """The DPU's readings. Where the BMC offers MetricReports that hold a value for every reading the last
        crawl found, they are read instead (a request per report, not per sensor), each value's Health
        judged by its sensor's thresholds; the crawl comes again every RECRAWL_SECONDS (new sensors, the
        Health of those without thresholds)."""
        clock = time.monotonic()
        if target.reports is None:
            try:
                target.reports = await metric_reports(client)
            except RedfishError as exc:  # a TelemetryService that fails: the sensors are crawled as ever
                log.info("telemetry: the BMC of %s offers no usable MetricReports: %s", dpu_name(target.serial), exc)
                target.reports = []
        if target.reports and target.sources and clock - target.crawled < RECRAWL_SECONDS:
            values = await read_reports(client, target.reports)
            if all(key in values for key in target.sources):
                self.stats.report_reads += 1
                return [
                    replace(r, value=values[key].value, health=r.health_at(values[key].value))
                    for key, r in target.sources.items()
                ]
        readings: list[SensorReading] = []
        assert target.chassis is not None
        for chassis in target.chassis:
            readings.extend(await read_chassis(client, chassis))
        sources = {r.source: r for r in readings if r.source}
        target.sources = sources if len(sources) == len(readings) else {}  # each reading's property, or none
        target.crawled = clock
        return readings

    def _mappings(self, doc: dict[str, Any]) -> list[SensorMapping]:
        """The DPU's catalog model's sensor mappings (none for a generic DPU or a model no entry names)."""
        recognition = (doc.get("status") or {}).get("recognition") or {}
        model = self.catalog.get(str(recognition.get("model") or "")) if isinstance(recognition, dict) else None
        return list(model.sensors) if model is not None else []

    def _health_changes(self, target: Target, readings: list[SensorReading], at: int) -> list[SampleRecord]:
        events: list[SampleRecord] = []
        for reading in readings:
            sensor = f"{reading.chassis}/{reading.id}" if reading.chassis else reading.id
            before = target.health.get(sensor)
            target.health[sensor] = reading.health
            if not reading.health or before == reading.health or (before is None and reading.health == "OK"):
                continue
            events.append({
                "name": "dpufleet.event.bmc", "time": at, "severity": severity_of(reading.health),
                "attributes": {"hw.id": sensor, "health": reading.health, "previous": before or "",
                               "source": "bmc-sensor"},
                "body": f"{reading.name or sensor}: health {before or 'unknown'} -> {reading.health} "
                        f"(reading {reading.value:g} {reading.unit})",
            })  # fmt: skip
        return events
