"""The control plane's side of telemetry: what each DPU is asked to collect, the aggregator on the fleet bus,
live subscriptions and the fleet's Prometheus exposition.

    GET /telemetry/v1/projects/{project}/watch     a live NDJSON stream of the project's samples, filtered
                                                   by dpuSelector, class, metric and minSeverity
    GET /telemetry/v1/projects/{project}/accounting    per DPU: produced, delivered, dropped, buffered
    GET /telemetry/v1/federate                     the fleet's latest values in Prometheus text format

The aggregator trusts a batch's project and serial only from its subject, which the bus lets each DPU
publish only under its own (server/telemetry_bus.py); batches already seen (same serial, seq not above the
last) are repeats of a forward that was cut, and are dropped.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from itertools import repeat
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import nats
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import SlowConsumerError
from nats.js.api import AckPolicy, ConsumerConfig, DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import BadRequestError, ServiceUnavailableError
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from pydantic import ValidationError

from ..api.errors import BadRequest, Forbidden, NotFound
from ..api.kinds import lookup
from ..api.naming import dpu_name
from ..api.selectors import LabelSelector, SelectorError, parse_selector
from ..api.telemetry import (
    CLASSES_ANNOTATION,
    INTERVAL_ANNOTATION,
    LOG_SEVERITY_ANNOTATION,
    SEVERITIES,
    SUBJECT_ROOT,
    Accounting,
    BatchError,
    BatchRecord,
    SampleRecord,
    TelemetryAssignment,
    TelemetryClass,
    parse_batch,
    parse_classes,
    parse_log_severity,
    parse_table,
    prom_name,
    severity_rank,
)
from ..api.validation import field_path
from ..drivers.redfish.events import Inbox, LogEntry
from ..inventory.bmcs import BMCSessions
from ..security.policy import SubAction, Verb
from ..store.feed import ChangeFeed
from ..store.store import Store
from .access import Access
from .otlp import OTLPExporter
from .telemetry_alerts import AlertEvaluator, Latest
from .telemetry_bmc import BMCTelemetry
from .telemetry_bus import (
    AGGREGATOR_USER,
    CONSUMER,
    DURABLE_CLASSES,
    STREAM,
    STREAM_MAX_AGE_SECONDS,
    STREAM_MAX_BYTES,
    AuthorizationFile,
    BusCredentials,
    EmbeddedBus,
)
from .telemetry_rollup import parse_by, parse_match, rollup

log = logging.getLogger(__name__)
ASSIGNMENT_TTL = 5.0  # how long a DPU's annotations are trusted before they are read again
PENDING_BATCHES = 100_000  # batches the aggregator's subscription holds while it is busy (the bus's default: 65,536)
PENDING_BYTES = 256 * 1024 * 1024
WATCH_QUEUE = 10_000  # samples a slow watcher may lag before it is cut off
CONNECT_RETRY_SECONDS = 2.0  # while an operator's bus does not answer yet
DURABLE_FETCH = 256  # batches read from the durable stream at a time
DURABLE_SUBJECTS = frozenset(cls.value for cls in DURABLE_CLASSES)


@dataclass
class Watcher:
    project: str
    serials: set[str] | None  # None: every DPU of the project
    classes: set[TelemetryClass] | None
    metrics: set[str] | None
    min_severity: int
    queue: asyncio.Queue[bytes | None] = field(default_factory=lambda: asyncio.Queue(WATCH_QUEUE))


@dataclass
class DPUSeries:
    project: str
    latest: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[float, int, str]] = field(default_factory=dict)
    received: Counter[str] = field(default_factory=Counter)
    last_seq: int = -1  # the highest seq taken in, of any class
    class_seq: dict[str, int] = field(default_factory=dict)  # per class: durable classes arrive on a path of their own
    repeats: int = 0
    accounting: Accounting | None = None
    local: Counter[str] = field(default_factory=Counter)  # class -> samples the control plane read itself (BMC)
    # (class, table line) -> the last series table read there, its bytes and what they say (a batch whose
    # table is the same bytes is read as values only)
    tables: dict[tuple[str, int], ReadTable] = field(default_factory=dict)


LAG_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


@dataclass
class AggregatorStats:
    """What the aggregator took in and refused, and how late batches arrived: the time from a batch's newest
    sample being taken (the DPU's clock) to its arrival here, which is bus and queue delay for a DPU that is
    connected and the time buffered for one that was cut off (a clock ahead of ours counts as 0)."""

    batches: int = 0
    samples: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # reason (invalid, foreign, repeat) -> batches
    lag_counts: list[int] = field(default_factory=lambda: [0] * (len(LAG_BUCKETS) + 1))  # per bucket, +Inf last
    lag_sum: float = 0.0
    disconnects: int = 0  # times the aggregator lost the bus (a server-side slow consumer is cut off)
    slow_consumer_drops: int = 0  # batches dropped on arrival because the subscription's queue was full
    controller_events: int = 0  # the controllers' events (health, rollouts, services) joined to the stream
    durable: bool = False  # the events and usage classes come through the bus's JetStream stream
    durable_batches: int = 0  # batches taken in from the stream

    def took(self, samples: int, lag: float) -> None:
        self.batches += 1
        self.samples += samples
        lag = max(0.0, lag)
        self.lag_counts[bisect.bisect_left(LAG_BUCKETS, lag)] += 1
        self.lag_sum += lag

    def figures(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "samples": self.samples,
            "refused": dict(self.refused),
            "busDisconnects": self.disconnects,
            "slowConsumerDrops": self.slow_consumer_drops,
            "controllerEvents": self.controller_events,
            "durable": self.durable,
            "durableBatches": self.durable_batches,
            "lagSeconds": {
                "buckets": [*LAG_BUCKETS, "+Inf"],
                "counts": list(self.lag_counts),
                "sum": self.lag_sum,
            },
        }


class _StatsCollector(Collector):
    def __init__(self, plane: TelemetryPlane) -> None:
        self.plane = plane

    def collect(self) -> Iterable[Metric]:
        stats = self.plane.stats
        yield CounterMetricFamily(
            "dpufleet_telemetry_batches_received", "Telemetry batches the aggregator took in", value=stats.batches
        )
        yield CounterMetricFamily(
            "dpufleet_telemetry_aggregated_samples", "Telemetry samples the aggregator took in", value=stats.samples
        )
        refused = CounterMetricFamily(
            "dpufleet_telemetry_batches_refused", "Telemetry batches refused, by reason", labels=["reason"]
        )
        for reason in ("invalid", "foreign", "repeat"):
            refused.add_metric([reason], stats.refused[reason])
        yield refused
        cumulative, buckets = 0, []
        for bound, count in zip([*map(floatToGoString, LAG_BUCKETS), "+Inf"], stats.lag_counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        yield HistogramMetricFamily(
            "dpufleet_telemetry_ingest_lag_seconds",
            "From a batch's newest sample being taken on the DPU to its arrival at the aggregator",
            buckets=buckets,
            sum_value=stats.lag_sum,
        )
        yield CounterMetricFamily(
            "dpufleet_telemetry_bus_disconnects",
            "Times the aggregator lost its bus connection (batches in flight then are lost)",
            value=stats.disconnects,
        )
        yield CounterMetricFamily(
            "dpufleet_telemetry_slow_consumer_drops",
            "Batches dropped on arrival because the aggregator's subscription queue was full",
            value=stats.slow_consumer_drops,
        )
        bmc = self.plane.bmc
        if bmc is not None:
            for name, value, help_text in (
                ("polls", bmc.stats.polls, "Reads of a DPU's sensors from its BMC by the control plane"),
                ("poll_failures", bmc.stats.failures, "Reads of a DPU's sensors that its BMC failed"),
                ("samples", bmc.stats.samples, "Sensor samples read from BMCs"),
            ):
                yield CounterMetricFamily(f"dpufleet_telemetry_bmc_{name}", help_text, value=value)
        yield GaugeMetricFamily(
            "dpufleet_telemetry_bus_authorized_dpus",
            "DPUs the embedded bus lets publish (under their own subjects)",
            value=len(self.plane.users.authorized),
        )


def _telemetry_identity(doc: dict[str, Any]) -> tuple[str, str] | None:
    """(project, serial) of a DPU object that asks for some telemetry class; None for one that asks none."""
    metadata = doc.get("metadata") or {}
    try:
        if not parse_classes((metadata.get("annotations") or {}).get(CLASSES_ANNOTATION, "")):
            return None
    except ValueError:
        return None
    serial = (doc.get("spec") or {}).get("serialNumber") or str(metadata.get("name", "")).removeprefix("dpu-")
    project = metadata.get("project") or "default"
    return (str(project), str(serial)) if serial else None


Replace = Callable[[list[dict[str, Any]]], Awaitable[None]]
Changed = Callable[[str, dict[str, Any]], Awaitable[None]]


AttrKey = tuple[tuple[str, str], ...]
ATTRIBUTE_SETS = 200_000  # distinct attribute sets (in the order agents send them) remembered in sorted form
_sorted_attributes: dict[AttrKey, AttrKey] = {}


def _canonical(raw: AttrKey) -> AttrKey:
    """A series' attributes in sorted order, one shared tuple per distinct set in the fleet: most sets repeat on
    every DPU (the same interfaces, the same sensors), so they are sorted once, not once per sample, and held
    once, not once per DPU. Bounded: a fleet that sends more distinct sets starts the table afresh."""
    if len(_sorted_attributes) >= ATTRIBUTE_SETS:
        _sorted_attributes.clear()
    found = _sorted_attributes[raw] = tuple(sorted(raw))
    return found


@dataclass(frozen=True, slots=True)
class ReadTable:
    """A series table as the aggregator holds it: its bytes (to know it again) and each series' key and unit."""

    line: bytes
    keys: list[tuple[str, AttrKey]]
    units: list[str]


def read_tables(series: DPUSeries, batch: BatchRecord, lines: list[bytes]) -> list[ReadTable]:
    """The series tables of a batch, each parsed only when its bytes differ from the last table seen at that
    line for that class (BatchError or pydantic.ValidationError for one that is not valid)."""
    cls = batch["class"].value
    read: list[ReadTable] = []
    for index, line in enumerate(lines):
        table = series.tables.get((cls, index))
        if table is None or table.line != line:
            try:
                entries = parse_table(line)
            except ValidationError as exc:
                raise BatchError(f"series tables[{index}]: {_first_error(exc)}") from None
            keys = [(name, _canonical(tuple(attrs.items())) if attrs else ()) for name, _, attrs in entries]
            table = ReadTable(line, keys, [unit for _, unit, _ in entries])
            series.tables[(cls, index)] = table
        read.append(table)
    for index, frame in enumerate(batch.get("frames") or ()):
        given, wanted = len(frame["values"]), len(read[frame["table"]].keys)
        if given != wanted:
            raise BatchError(f"frames[{index}].values: {given} values for a series table of {wanted} series")
    return read


def _keep_latest(series: DPUSeries, samples: list[SampleRecord]) -> int:
    """The latest value per series of the measurements (not the events or log lines); the newest time."""
    latest = series.latest
    known = _sorted_attributes
    newest = 0
    for sample in samples:
        taken = sample["time"]
        if taken > newest:
            newest = taken
        if sample.get("body") is None:
            attributes = sample.get("attributes")
            if attributes:
                raw = tuple(attributes.items())
                attrs = known.get(raw) or _canonical(raw)
            else:
                attrs = ()
            latest[(sample["name"], attrs)] = (sample.get("value", 0.0), taken // 1_000_000, sample.get("unit", ""))
    return newest


def _keep_frames(series: DPUSeries, batch: BatchRecord, tables: list[ReadTable]) -> tuple[int, int]:
    """The latest value of each series of a batch's frames (a whole column at a time); (values, newest time)."""
    latest = series.latest
    count = newest = 0
    for frame in batch.get("frames") or ():
        taken, values, table = frame["time"], frame["values"], tables[frame["table"]]
        latest.update(zip(table.keys, zip(values, repeat(taken // 1_000_000), table.units, strict=False), strict=True))
        count += len(values)
        newest = max(newest, taken)
    return count, newest


def whole_batch(batch: BatchRecord, tables: list[ReadTable]) -> BatchRecord:
    """The batch with its frames expanded into whole samples, for the readers that take samples one by one
    (live watchers, the OTLP exporter)."""
    frames = batch.get("frames")
    if not frames:
        return batch
    samples = list(batch["samples"])
    for frame in frames:
        taken, table = frame["time"], tables[frame["table"]]
        for (name, attrs), unit, value in zip(table.keys, table.units, frame["values"], strict=True):
            record: SampleRecord = {"name": name, "unit": unit, "value": value, "time": taken}
            if attrs:
                record["attributes"] = dict(attrs)
            samples.append(record)
    return {"serial": batch["serial"], "seq": batch["seq"], "class": batch["class"], "samples": samples}


def _first_error(exc: ValidationError | BatchError) -> str:
    if isinstance(exc, BatchError):
        return str(exc)
    error = exc.errors()[0]
    where = field_path(tuple(error["loc"]))
    return f"{where}: {error['msg']}" if where else str(error["msg"])


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class TelemetryPlane:
    def __init__(
        self,
        store: Store,
        directory: Path,
        bus_url: str | None = None,
        exporter: OTLPExporter | None = None,
        feed: ChangeFeed | None = None,
        sessions: BMCSessions | None = None,
        inbox: Inbox | None = None,
    ) -> None:
        """``bus_url`` None: run the embedded nats-server; else the operator's bus, reached by that URL
        (its URL may carry the aggregator's credentials: nats://user:password@host:port). ``exporter``:
        every batch taken in is also pushed to an OTLP/HTTP collector. ``feed``: the embedded bus's
        authorization follows the DPU objects (created, moved, deleted) as they change, not only as they report.
        ``sessions``: the BMC plugin reads the sensors of DPUs asking for class environmental from their BMCs
        (server/telemetry_bmc.py); ``inbox``: the events BMCs push join the DPUs' event stream."""
        self.store = store
        self.feed = feed
        self._serials: dict[tuple[str, str], str] = {}
        self._closing = False
        self.exporter = exporter
        self.credentials = BusCredentials.load_or_create(directory)
        self.embedded = EmbeddedBus(directory / "bus", self.credentials) if bus_url is None else None
        self.external_url = bus_url
        self.aggregator_login = _login(bus_url, self.credentials)
        # who may use the bus: the embedded bus's own configuration, or a file for an operator's bus to include
        self.users: EmbeddedBus | AuthorizationFile = self.embedded or AuthorizationFile(
            directory / "bus", self.credentials, self.aggregator_login
        )
        self.series: dict[str, DPUSeries] = {}  # serial -> what arrived
        self.watchers: list[Watcher] = []
        self.stats = AggregatorStats()
        self._assignments: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._services: dict[str, tuple[float, dict[str, list[TelemetryClass]]]] = {}
        self.assignment_ttl = ASSIGNMENT_TTL
        self._nc: NATS | None = None
        self.connected = asyncio.Event()
        self.bmc = BMCTelemetry(sessions, self.take_local) if sessions is not None else None
        self.alerts = AlertEvaluator(store, self.latest_of, self.take_local)
        self._inbox = inbox
        self._loop: asyncio.AbstractEventLoop | None = None

    def register_metrics(self, registry: CollectorRegistry) -> None:
        """The aggregator's own figures (taken in, refused, ingest lag, DPUs authorized) on the server's /metrics."""
        registry.register(_StatsCollector(self))

    @property
    def agent_url(self) -> str:
        if self.embedded is not None:
            return self.embedded.url
        assert self.external_url is not None
        return self.external_url.split("@")[-1] if "@" in self.external_url else self.external_url

    # --- what each DPU collects (read at each report, cached for ASSIGNMENT_TTL) ---------------------------

    def assignment(self, role: str, serial: str, project: str | None) -> dict[str, Any] | None:
        if role != "dpu" or project is None:
            return None
        cached = self._assignments.get(serial)
        if cached is not None and time.monotonic() - cached[0] < self.assignment_ttl:
            return cached[1]
        try:
            doc = self.store.get("DPU", dpu_name(serial), project)
        except NotFound:
            doc = None
        annotations = ((doc or {}).get("metadata") or {}).get("annotations") or {}
        answer: dict[str, Any] | None
        try:
            classes = parse_classes(annotations.get(CLASSES_ANNOTATION, ""))
            interval = float(annotations.get(INTERVAL_ANNOTATION, "10"))
            levels = parse_log_severity(annotations.get(LOG_SEVERITY_ANNOTATION, ""))
            assignment = TelemetryAssignment(classes=classes, intervalSeconds=interval, logSeverity=levels,
                                             serviceClasses=self._service_classes(project))  # fmt: skip
        except (ValueError, ValidationError) as exc:
            log.warning("DPU %s: telemetry annotations ignored: %s", dpu_name(serial), exc)
            assignment = TelemetryAssignment()
        if assignment.classes:
            self.users.allow(project, serial)
            assignment.bus = self.credentials.access(self.agent_url, project, serial)
        answer = assignment.model_dump(mode="json")
        self._assignments[serial] = (time.monotonic(), answer)
        return answer

    def _service_classes(self, project: str) -> dict[str, list[TelemetryClass]]:
        """The project's DPUServices that narrow what is reported of them (their classes annotation), read at
        most every ASSIGNMENT_TTL per project."""
        cached = self._services.get(project)
        if cached is not None and time.monotonic() - cached[0] < self.assignment_ttl:
            return cached[1]
        found: dict[str, list[TelemetryClass]] = {}
        for doc in self.store.list("DPUService", project).items:
            annotations = (doc.get("metadata") or {}).get("annotations") or {}
            if CLASSES_ANNOTATION in annotations:
                try:
                    found[str(doc["metadata"]["name"])] = parse_classes(annotations[CLASSES_ANNOTATION])
                except ValueError:
                    continue  # refused when written; an older server's document is reported in full
        self._services[project] = (time.monotonic(), found)
        return found

    # --- the aggregator -----------------------------------------------------------------------------------

    async def run(self) -> None:
        if self.embedded is not None:
            self.embedded.start()  # on the loop's thread: the child dies with it (PR_SET_PDEATHSIG)
        elif isinstance(self.users, AuthorizationFile):
            await asyncio.to_thread(self.users.write)  # the users an operator's bus should know, so far
        self._loop = asyncio.get_running_loop()
        try:
            async with asyncio.TaskGroup() as tasks:
                # the DPUs first: an operator's bus learns its users from them before the aggregator connects
                tasks.create_task(self._follow("DPU", self._dpu_observers(), repeat=self.bmc is not None))
                tasks.create_task(self._follow("AlertRule", [(self.alerts.replace_rules, self.alerts.rule_changed)]))
                tasks.create_task(
                    self._follow("AlertSilence", [(self.alerts.replace_silences, self.alerts.silence_changed)])
                )
                url = self.embedded.url if self.embedded is not None else _without_login(self.external_url or "")
                if self.embedded is not None:
                    await self.embedded.ready()
                self._nc = await self._connect(url)
                durable = await self._durable_stream()
                await self._nc.subscribe(
                    f"{SUBJECT_ROOT}.>",
                    cb=self._receive,
                    pending_msgs_limit=PENDING_BATCHES,
                    pending_bytes_limit=PENDING_BYTES,
                )
                if self.bmc is not None and self._inbox is not None:
                    self._inbox.forward(self._pushed)
                tasks.create_task(self.alerts.run())
                if durable is not None:
                    tasks.create_task(self._read_durable(durable))
                if self.bmc is not None:
                    tasks.create_task(self.bmc.run())
                if self.feed is not None:
                    tasks.create_task(self._follow_events(self.feed))
                self.connected.set()
                if self.exporter is not None:
                    tasks.create_task(self.exporter.run())
                await asyncio.Event().wait()
        finally:
            self._closing = True
            if self._nc is not None:
                with contextlib.suppress(Exception):
                    await self._nc.close()
            if self.embedded is not None:
                await asyncio.to_thread(self.embedded.stop)

    async def _connect(self, url: str) -> NATS:
        """The aggregator's connection, once the bus answers: an operator's bus may start after the server
        (its configuration includes the authorization.conf the server has just written)."""
        user, password = self.aggregator_login
        waited = False
        while True:
            try:
                return await nats.connect(url, user=user, password=password, name="dpufleet-aggregator",
                                          max_reconnect_attempts=-1, reconnect_time_wait=0.5, connect_timeout=2,
                                          allow_reconnect=True, error_cb=self._bus_error,
                                          disconnected_cb=self._bus_lost)  # fmt: skip
            except (NatsError, OSError, TimeoutError) as exc:
                if self.embedded is not None:
                    raise
                if not waited:
                    log.warning("telemetry bus %s: %s; trying again every %.0f s", url, exc or type(exc).__name__,
                                CONNECT_RETRY_SECONDS)  # fmt: skip
                    waited = True
                await asyncio.sleep(CONNECT_RETRY_SECONDS)

    # --- the embedded bus's authorization, from the DPU objects -------------------------------------------

    def _dpu_observers(self) -> list[tuple[Replace, Changed]]:
        """Who follows the DPU objects: the embedded bus's authorization, the BMC plugin's list of DPUs to poll,
        the alert rules' DPUs (labels, hosts)."""
        observers: list[tuple[Replace, Changed]] = []
        bus = self.users
        if bus is not None:

            async def authorize(docs: list[dict[str, Any]]) -> None:
                wanted = {}
                for doc in docs:
                    found = _telemetry_identity(doc)
                    if found is not None:
                        wanted[found[1]] = found[0]
                await asyncio.to_thread(bus.authorize, wanted)

            async def changed(change: str, doc: dict[str, Any]) -> None:
                found = _telemetry_identity(doc)
                if found is None:
                    return
                project, serial = found
                if change == "DELETED":
                    await asyncio.to_thread(bus.revoke, serial)
                else:
                    await asyncio.to_thread(bus.allow, project, serial)

            observers.append((authorize, changed))
        if self.bmc is not None:
            observers.append((self.bmc.replace, self.bmc.changed))
        observers.append((self.alerts.replace_dpus, self.alerts.dpu_changed))
        return observers

    async def _follow(self, kind: str, observers: list[tuple[Replace, Changed]], *, repeat: bool = True) -> None:
        """Hand every object of ``kind`` to each observer, then each change as it happens (the change feed).
        Every DPU that asks for telemetry may so publish under its own subjects from the moment it exists
        (after a restart too, before it reports again); a DPU moved to another project publishes only under
        the new one, and a deleted one no more. Without a change feed the objects are read again every 30 s
        (``repeat``), or once."""
        while True:
            listed = await asyncio.to_thread(self.store.list, kind)
            for replace, _ in observers:
                await replace(listed.items)
            if self.feed is None:
                if not repeat:
                    return
                await asyncio.sleep(30)
                continue
            try:
                async for change in self.feed.changes(frozenset({kind}), listed.resource_version):
                    doc = change.object()
                    for _, changed in observers:
                        await changed(change.type, doc)
            except Exception as exc:  # fell behind the feed, or the log was compacted: list again
                log.warning("telemetry: following %s: %s; reading them all again", kind, exc)
                await asyncio.sleep(1)

    # --- the controllers' events, joined to the event stream ----------------------------------------------

    async def _follow_events(self, feed: ChangeFeed) -> None:
        """Each Event the controllers record or repeat (the health controller's faults, diagnoses and
        remediations, rollouts, services) is one sample of class events, to watchers and the exporter, beside
        what the DPUs themselves report. Events from before the server started are not replayed."""
        since = await asyncio.to_thread(self.store.current_rv)
        while True:
            try:
                async for change in feed.changes(frozenset({"Event"}), since):
                    since = change.rv
                    if change.type != "DELETED":
                        await self._controller_event(change.object())
            except Exception as exc:  # fell behind the feed, or the log was compacted: go on from now
                log.warning("telemetry: controller events: %s; going on from the latest", exc)
                await asyncio.sleep(1)
                since = await asyncio.to_thread(self.store.current_rv)

    async def _controller_event(self, event: dict[str, Any]) -> None:
        involved = event.get("involvedObject") or {}
        project = str(involved.get("project") or (event.get("metadata") or {}).get("project") or "default")
        kind, name = str(involved.get("kind", "")), str(involved.get("name", ""))
        serial = await self._serial_of(project, name) if kind == "DPU" else None
        stamp = event.get("lastTimestamp") or event.get("firstTimestamp")
        try:
            taken = int(datetime.fromisoformat(str(stamp)).timestamp() * 1e9) if stamp else time.time_ns()
        except ValueError:
            taken = time.time_ns()
        sample: SampleRecord = {
            "name": "dpufleet.event.controller",
            "time": taken,
            "attributes": {
                "reason": str(event.get("reason", "")),
                "source": str(event.get("source", "")),
                "object.kind": kind,
                "object.name": name,
                "count": str(event.get("count", 1)),
            },
            "severity": "warning" if event.get("type") == "Warning" else "info",
            "body": str(event.get("message", ""))[:4096],
        }
        batch: BatchRecord = {"serial": serial or "", "seq": 0, "class": TelemetryClass.EVENTS, "samples": [sample]}
        self.stats.controller_events += 1
        if self.watchers:
            self._fan_out(project, serial or "", batch, dpu=dpu_name(serial) if serial else None)
        if self.exporter is not None and serial is not None:
            self.exporter.offer(project, serial, batch)

    async def _serial_of(self, project: str, name: str) -> str | None:
        """The serial of a DPU named in an event (cached: a DPU's serial does not change)."""
        key = (project, name)
        if key not in self._serials:
            try:
                doc = await asyncio.to_thread(self.store.get, "DPU", name, project)
            except NotFound:
                return None
            self._serials[key] = str((doc.get("spec") or {}).get("serialNumber") or name.removeprefix("dpu-"))
        return self._serials[key]

    async def _bus_error(self, exc: Exception) -> None:
        if isinstance(exc, SlowConsumerError):
            self.stats.slow_consumer_drops += 1
            if self.stats.slow_consumer_drops in (1, 10, 100, 1000) or self.stats.slow_consumer_drops % 10_000 == 0:
                log.warning("telemetry: the aggregator's queue is full, %d batches dropped so far",
                            self.stats.slow_consumer_drops)  # fmt: skip
            return
        if not self.connected.is_set():  # not connected yet: _connect says so once
            return
        log.warning("telemetry bus: %s", exc)

    async def _bus_lost(self) -> None:
        if self._closing:  # the server stopping closes it
            return
        self.stats.disconnects += 1
        log.warning("telemetry bus: the aggregator's connection was lost (reconnecting); batches in flight are lost")

    async def _receive(self, msg: Msg, durable: bool = False) -> None:
        """One message off the bus. ``durable``: it came through the JetStream stream; the durable classes
        arriving on the plain subscription too are left for the stream's copy."""
        arrived = time.time_ns()
        parts = msg.subject.split(".")
        if len(parts) != 5:
            return
        project, serial, what = parts[2], parts[3], parts[4]
        if not durable and self.stats.durable and what in DURABLE_SUBJECTS:
            return
        try:
            if what == "accounting":
                accounting = Accounting.model_validate_json(msg.data)
                if accounting.serial == serial:
                    self._series(project, serial).accounting = accounting
                return
            batch, lines = parse_batch(msg.data)
            cls = batch["class"]
            if batch["serial"] != serial or cls.value != what:
                self.stats.refused["foreign"] += 1
                return
            series = self._series(project, serial)
            if batch["seq"] <= series.class_seq.get(cls.value, -1):
                series.repeats += 1
                self.stats.refused["repeat"] += 1
                return
            tables = read_tables(series, batch, lines)
        except (ValidationError, BatchError) as exc:
            self.stats.refused["invalid"] += 1
            log.warning("telemetry from %s/%s refused: not a valid batch (%s)", project, serial, _first_error(exc))
            return
        series.class_seq[cls.value] = batch["seq"]
        series.last_seq = max(series.last_seq, batch["seq"])
        samples = batch["samples"]
        values, newest_value = _keep_frames(series, batch, tables)
        newest = max(_keep_latest(series, samples), newest_value)
        series.received[cls.value] += len(samples) + values
        self.stats.took(len(samples) + values, (arrived - newest) / 1e9)
        if self.watchers or self.exporter is not None:
            whole = whole_batch(batch, tables)
            if self.watchers:
                self._fan_out(project, serial, whole)
            if self.exporter is not None:
                self.exporter.offer(project, serial, whole)

    async def _durable_stream(self) -> JetStreamContext.PullSubscription | None:
        """The JetStream stream that keeps the durable classes until the aggregator has them, and the
        aggregator's durable consumer of it; None on a bus without JetStream (said once: those classes then
        come as the others do, and are lost if published while the aggregator is away)."""
        assert self._nc is not None
        js = self._nc.jetstream(timeout=5)
        config = StreamConfig(
            name=STREAM,
            subjects=[f"{SUBJECT_ROOT}.*.*.{cls.value}" for cls in DURABLE_CLASSES],
            storage=StorageType.FILE,
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD,
            max_bytes=STREAM_MAX_BYTES,
            max_age=STREAM_MAX_AGE_SECONDS,
        )
        try:
            try:
                await js.add_stream(config)
            except BadRequestError:  # there already, made otherwise (an earlier version, an operator's change)
                await js.update_stream(config)
            with contextlib.suppress(BadRequestError):  # there already, as an earlier run made it
                await js.add_consumer(
                    STREAM,
                    ConsumerConfig(
                        durable_name=CONSUMER, ack_policy=AckPolicy.EXPLICIT, max_ack_pending=10_000, ack_wait=60
                    ),
                )
            subscription = await js.pull_subscribe_bind(CONSUMER, STREAM)
        except (NatsError, TimeoutError) as exc:
            why = "it is not enabled on this bus" if isinstance(exc, ServiceUnavailableError) else str(exc) or "timeout"
            log.warning(
                "telemetry bus: no JetStream (%s): the %s classes are not kept while the aggregator is away",
                why, "/".join(c.value for c in DURABLE_CLASSES),
            )  # fmt: skip
            return None
        self.stats.durable = True
        return subscription

    async def _read_durable(self, subscription: JetStreamContext.PullSubscription) -> None:
        """Take in what the stream holds, oldest first, each acknowledged once taken in (so what the aggregator
        had not taken in when it stopped is delivered again when it is back)."""
        while True:
            try:
                messages = await subscription.fetch(DURABLE_FETCH, timeout=1)
            except TimeoutError:
                continue
            except NatsError as exc:
                log.debug("telemetry bus: reading the durable stream: %s", exc)
                await asyncio.sleep(1)
                continue
            for message in messages:
                await self._receive(message, durable=True)
                self.stats.durable_batches += 1
                with contextlib.suppress(NatsError, TimeoutError):
                    await message.ack()

    def latest_of(self, serial: str) -> tuple[str, Latest] | None:
        series = self.series.get(serial)
        return (series.project, series.latest) if series is not None else None

    def take_local(self, project: str, serial: str, cls: TelemetryClass, samples: list[SampleRecord]) -> None:
        """Samples the control plane read about a DPU itself (its BMC's sensors and events): kept, watched and
        exported as the DPU's own, counted apart from what its agent sent."""
        series = self._series(project, serial)
        series.local[cls.value] += len(samples)
        _keep_latest(series, samples)
        batch: BatchRecord = {"serial": serial, "seq": 0, "class": cls, "samples": samples}
        if self.watchers:
            self._fan_out(project, serial, batch)
        if self.exporter is not None:
            self.exporter.offer(project, serial, batch)

    def _pushed(self, project: str, bmc: str, entry: LogEntry) -> None:
        """A BMC pushed an event (the inbox calls this in the receiving thread): handled on the loop's."""
        if self._loop is not None and self.bmc is not None:
            self._loop.call_soon_threadsafe(self.bmc.pushed, project, bmc, entry)

    def _series(self, project: str, serial: str) -> DPUSeries:
        series = self.series.get(serial)
        if series is None or series.project != project:
            series = self.series[serial] = DPUSeries(project)
        return series

    def _fan_out(self, project: str, serial: str, batch: BatchRecord, dpu: str | None = "") -> None:
        """To each watcher the batch's samples it asked for. ``dpu``: the name its lines carry (by default the
        serial's DPU; None for a controller's event about no DPU, which reaches only watchers of every DPU)."""
        cls = batch["class"]
        name = dpu_name(serial) if dpu == "" else dpu
        for watcher in list(self.watchers):
            if watcher.project != project or (watcher.serials is not None and serial not in watcher.serials):
                continue
            if watcher.classes is not None and cls not in watcher.classes:
                continue
            for sample in batch["samples"]:
                if watcher.metrics is not None and sample["name"] not in watcher.metrics:
                    continue
                if severity_rank(sample.get("severity")) < watcher.min_severity:
                    continue
                line = {
                    **({"dpu": name} if name is not None else {}),
                    "class": cls.value,
                    **{k: v for k, v in sample.items() if v is not None},
                }
                try:
                    watcher.queue.put_nowait(orjson.dumps(line) + b"\n")
                except asyncio.QueueFull:
                    self.watchers.remove(watcher)
                    watcher.queue.put_nowait(None)  # never blocks: get() below drains first
                    break

    # --- the Prometheus exposition ------------------------------------------------------------------------

    def exposition(self, project: str | None = None) -> str:
        lines: list[str] = []
        for serial, series in sorted(self.series.items()):
            if project is not None and series.project != project:
                continue
            base = f'project="{_label(series.project)}",dpu="{_label(dpu_name(serial))}"'
            for (name, attrs), (value, millis, unit) in sorted(series.latest.items()):
                labels = base + "".join(f',{k.replace(".", "_")}="{_label(v)}"' for k, v in attrs)
                lines.append(f"{prom_name(name, unit)}{{{labels}}} {value!r} {millis}")
            for cls, count in sorted(series.received.items()):
                lines.append(f'dpufleet_telemetry_samples_received_total{{{base},class="{cls}"}} {count}')
            for cls, count in sorted(series.local.items()):
                lines.append(f'dpufleet_telemetry_samples_read_by_control_plane_total{{{base},class="{cls}"}} {count}')
            acc = series.accounting
            if acc is not None:
                for what, counts in (
                    ("produced", acc.produced),
                    ("delivered", acc.delivered),
                    ("buffered", acc.buffered),
                ):
                    for cls, count in sorted(counts.items()):
                        lines.append(f'dpufleet_telemetry_samples_{what}_total{{{base},class="{cls}"}} {count}')
                for reason, counts in sorted(acc.dropped.items()):
                    for cls, count in sorted(counts.items()):
                        lines.append(
                            f'dpufleet_telemetry_samples_dropped_total{{{base},class="{cls}",reason="{reason}"}} {count}'
                        )
        if self.exporter is not None and project is None:
            lines.extend(self.exporter.exposition())
        return "\n".join(lines) + "\n"


def _login(bus_url: str | None, credentials: BusCredentials) -> tuple[str, str]:
    """The aggregator's user and password: the ones in an operator's bus URL (nats://user:password@host), else
    its own, derived from the data dir's secret (what the embedded bus and ``authorization.conf`` give it)."""
    if bus_url:
        parsed = urlsplit(bus_url)
        if parsed.username:
            return unquote(parsed.username), unquote(parsed.password or "")
    return AGGREGATOR_USER, credentials.aggregator_password()


def _without_login(bus_url: str) -> str:
    parsed = urlsplit(bus_url)
    return urlunsplit(parsed._replace(netloc=parsed.netloc.rpartition("@")[2]))


def _set(values: list[str]) -> set[str] | None:
    found = {v.strip() for value in values for v in value.split(",") if v.strip()}
    return found or None


def telemetry_router(plane: TelemetryPlane, dependencies: list[Any]) -> APIRouter:
    router = APIRouter(prefix="/telemetry/v1", dependencies=dependencies, tags=["telemetry"])
    dpu_kind = lookup("DPU")

    def serials_of(access: Access, project: str, selector: LabelSelector | None) -> set[str] | None:
        visible = access.list_filter(dpu_kind, Verb.LIST, project)  # 403 for a project the caller has no part in
        if selector is None and visible is None:
            return None
        docs = plane.store.list(dpu_kind, project, selector).items
        found = {
            str((d.get("spec") or {}).get("serialNumber") or d["metadata"]["name"].removeprefix("dpu-"))
            for d in docs
            if visible is None or visible(d)
        }
        if visible is not None and not found and not access.identity.roles_on(project):
            # no role in the project and none of its DPUs leased: the same answer as for a project not theirs
            raise Forbidden(
                f"forbidden: {access.identity.name} has no role in project {project!r} and leases none of its DPUs"
            )
        return found

    @router.get("/projects/{project}/watch", summary="Live telemetry of a project's DPUs (NDJSON)")
    async def watch(project: str, request: Request) -> StreamingResponse:
        access: Access = request.state.access
        params = request.query_params
        try:
            selector = parse_selector(params.get("dpuSelector")) if params.get("dpuSelector") else None
        except SelectorError as exc:
            raise BadRequest(f"dpuSelector: {exc}") from None
        try:
            classes = {TelemetryClass(c) for c in _set(params.getlist("class")) or ()} or None
        except ValueError:
            known = ", ".join(c.value for c in TelemetryClass)
            raise BadRequest(f"class: unknown telemetry class in {params.getlist('class')} (known: {known})") from None
        severity = params.get("minSeverity")
        if severity is not None and severity not in SEVERITIES:
            raise BadRequest(f"minSeverity: {severity!r} is not one of {', '.join(SEVERITIES)}")
        watcher = Watcher(
            project, serials_of(access, project, selector), classes, _set(params.getlist("metric")),
            severity_rank(severity) if severity else 0,
        )  # fmt: skip
        plane.watchers.append(watcher)

        async def lines() -> AsyncIterator[bytes]:
            try:
                yield orjson.dumps({"type": "WATCHING", "dpus": sorted(watcher.serials or [])}) + b"\n"
                while True:
                    try:
                        line = await asyncio.wait_for(watcher.queue.get(), 10)
                    except TimeoutError:
                        yield b'{"type":"KEEPALIVE"}\n'
                        continue
                    if line is None:
                        yield b'{"type":"ERROR","message":"this watcher fell too far behind and was cut off"}\n'
                        return
                    yield line
            finally:
                with contextlib.suppress(ValueError):
                    plane.watchers.remove(watcher)

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    @router.get("/projects/{project}/accounting", summary="Every sample each DPU produced, and what became of it")
    async def accounting(project: str, request: Request) -> Response:
        access: Access = request.state.access
        serials = serials_of(access, project, None)
        items = []
        for serial, series in sorted(plane.series.items()):
            if series.project != project or (serials is not None and serial not in serials):
                continue
            items.append(
                {
                    "dpu": dpu_name(serial),
                    "agent": series.accounting.model_dump() if series.accounting else None,
                    "received": dict(series.received),
                    "readByControlPlane": dict(series.local),  # the BMC plugin's, not the agent's
                    "repeatsDropped": series.repeats,
                }
            )
        return Response(orjson.dumps({"items": items}), media_type="application/json")

    @router.get("/projects/{project}/rollup", summary="One metric summed up per host, vendor, model, DPUSet or label")
    async def rollup_route(project: str, request: Request) -> Response:
        access: Access = request.state.access
        params = request.query_params
        metric = (params.get("metric") or "").strip()
        if not metric:
            raise BadRequest("metric: name the metric to roll up (for example hw.power)")
        try:
            by = parse_by(params.get("by") or "host")
        except ValueError as exc:
            raise BadRequest(f"by: {exc}") from None
        try:
            match = parse_match(params.getlist("match"))
        except ValueError as exc:
            raise BadRequest(f"match: {exc}") from None
        serials = serials_of(access, project, None)
        dpus = [f for f in plane.alerts.dpus.values()
                if f.project == project and (serials is None or f.serial in serials)]  # fmt: skip
        dpusets: dict[str, LabelSelector] = {}
        if by == "dpuset":
            for doc in (await asyncio.to_thread(plane.store.list, "DPUSet", project)).items:
                selector = LabelSelector.model_validate((doc.get("spec") or {}).get("selector") or {})
                dpusets[str(doc["metadata"]["name"])] = selector
        groups = rollup(dpus, plane.latest_of, metric, match, by, dpusets, time.time())
        body = {"metric": metric, "by": by, "match": match, "groups": groups}
        return Response(orjson.dumps(body), media_type="application/json")

    @router.get("/federate", summary="The fleet's latest telemetry in Prometheus text format")
    async def federate(request: Request) -> Response:
        access: Access = request.state.access
        access.require(SubAction.METRICS_READ)
        return Response(plane.exposition(request.query_params.get("project")), media_type="text/plain; version=0.0.4")

    @router.get("/aggregator", summary="What the aggregator took in and refused, its ingest lag, the DPUs authorized")
    async def aggregator(request: Request) -> Response:
        access: Access = request.state.access
        access.require(SubAction.METRICS_READ)
        body = {
            "bus": plane.agent_url,
            "embeddedBus": plane.embedded is not None,
            "connected": plane.connected.is_set(),
            "authorizedDPUs": len(plane.users.authorized),
            # a change of the bus's authorization not yet applied: false means every DPU authorized may connect
            "busReloadPending": plane.embedded.reloads_pending if plane.embedded is not None else None,
            "dpusSeen": len(plane.series),
            "watchers": len(plane.watchers),
            **plane.stats.figures(),
            **(plane.bmc.stats.figures() if plane.bmc is not None else {}),
            **plane.alerts.stats.figures(),
        }
        return Response(orjson.dumps(body), media_type="application/json")

    _ = (watch, accounting, rollup_route, federate, aggregator)
    return router
