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
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
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
    Batch,
    TelemetryAssignment,
    TelemetryClass,
    parse_classes,
    parse_log_severity,
    severity_rank,
)
from ..security.policy import SubAction, Verb
from ..store.store import Store
from .access import Access
from .otlp import OTLPExporter
from .telemetry_bus import BusCredentials, EmbeddedBus

log = logging.getLogger(__name__)
ASSIGNMENT_TTL = 5.0  # how long a DPU's annotations are trusted before they are read again
WATCH_QUEUE = 10_000  # samples a slow watcher may lag before it is cut off
UNIT_SUFFIX = {"By": "_bytes", "s": "_seconds", "Cel": "_celsius", "1": "_ratio", "W": "_watts", "V": "_volts"}


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
    last_seq: int = -1
    repeats: int = 0
    accounting: Accounting | None = None


def prom_name(name: str, unit: str) -> str:
    base = name.replace(".", "_").replace("-", "_")
    suffix = UNIT_SUFFIX.get(unit, "")
    return base if not suffix or base.endswith(suffix) else base + suffix


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class TelemetryPlane:
    def __init__(
        self, store: Store, directory: Path, bus_url: str | None = None, exporter: OTLPExporter | None = None
    ) -> None:
        """``bus_url`` None: run the embedded nats-server; else the operator's bus, reached by that URL
        (its URL may carry the aggregator's credentials: nats://user:password@host:port). ``exporter``:
        every batch taken in is also pushed to an OTLP/HTTP collector."""
        self.store = store
        self.exporter = exporter
        self.credentials = BusCredentials.load_or_create(directory)
        self.embedded = EmbeddedBus(directory / "bus", self.credentials) if bus_url is None else None
        self.external_url = bus_url
        self.series: dict[str, DPUSeries] = {}  # serial -> what arrived
        self.watchers: list[Watcher] = []
        self.dropped_foreign = 0  # batches whose body named another serial than their subject
        self._assignments: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self.assignment_ttl = ASSIGNMENT_TTL
        self._nc: NATS | None = None
        self.connected = asyncio.Event()

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
            assignment = TelemetryAssignment(classes=classes, intervalSeconds=interval, logSeverity=levels)
        except (ValueError, ValidationError) as exc:
            log.warning("DPU %s: telemetry annotations ignored: %s", dpu_name(serial), exc)
            assignment = TelemetryAssignment()
        if assignment.classes:
            if self.embedded is not None:
                self.embedded.allow(project, serial)
            assignment.bus = self.credentials.access(self.agent_url, project, serial)
        answer = assignment.model_dump(mode="json")
        self._assignments[serial] = (time.monotonic(), answer)
        return answer

    # --- the aggregator -----------------------------------------------------------------------------------

    async def run(self) -> None:
        if self.embedded is not None:
            self.embedded.start()  # on the loop's thread: the child dies with it (PR_SET_PDEATHSIG)
        try:
            url = self.embedded.aggregator_url if self.embedded is not None else self.external_url
            assert url is not None
            if self.embedded is not None:
                await self.embedded.ready()
            self._nc = await nats.connect(url, name="dpufleet-aggregator", max_reconnect_attempts=-1,
                                          reconnect_time_wait=0.5)  # fmt: skip
            await self._nc.subscribe(f"{SUBJECT_ROOT}.>", cb=self._receive)
            self.connected.set()
            if self.exporter is not None:
                await self.exporter.run()
            await asyncio.Event().wait()
        finally:
            if self._nc is not None:
                with contextlib.suppress(Exception):
                    await self._nc.close()
            if self.embedded is not None:
                await asyncio.to_thread(self.embedded.stop)

    async def _receive(self, msg: Msg) -> None:
        parts = msg.subject.split(".")
        if len(parts) != 5:
            return
        project, serial, what = parts[2], parts[3], parts[4]
        try:
            if what == "accounting":
                accounting = Accounting.model_validate_json(msg.data)
                if accounting.serial == serial:
                    self._series(project, serial).accounting = accounting
                return
            batch = Batch.model_validate_json(msg.data)
        except ValidationError:
            log.warning("telemetry from %s/%s refused: not a valid batch", project, serial)
            return
        if batch.serial != serial or batch.cls.value != what:
            self.dropped_foreign += 1
            return
        series = self._series(project, serial)
        if batch.seq <= series.last_seq:
            series.repeats += 1
            return
        series.last_seq = batch.seq
        series.received[batch.cls.value] += len(batch.samples)
        for sample in batch.samples:
            if sample.body is None:
                key = (sample.name, tuple(sorted(sample.attributes.items())))
                series.latest[key] = (sample.value, sample.time // 1_000_000, sample.unit)
        self._fan_out(project, serial, batch)
        if self.exporter is not None:
            self.exporter.offer(project, serial, batch)

    def _series(self, project: str, serial: str) -> DPUSeries:
        series = self.series.get(serial)
        if series is None or series.project != project:
            series = self.series[serial] = DPUSeries(project)
        return series

    def _fan_out(self, project: str, serial: str, batch: Batch) -> None:
        for watcher in list(self.watchers):
            if watcher.project != project or (watcher.serials is not None and serial not in watcher.serials):
                continue
            if watcher.classes is not None and batch.cls not in watcher.classes:
                continue
            for sample in batch.samples:
                if watcher.metrics is not None and sample.name not in watcher.metrics:
                    continue
                if severity_rank(sample.severity) < watcher.min_severity:
                    continue
                line = {"dpu": dpu_name(serial), "class": batch.cls.value, **sample.model_dump(exclude_none=True)}
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
                    "repeatsDropped": series.repeats,
                }
            )
        return Response(orjson.dumps({"items": items}), media_type="application/json")

    @router.get("/federate", summary="The fleet's latest telemetry in Prometheus text format")
    async def federate(request: Request) -> Response:
        access: Access = request.state.access
        access.require(SubAction.METRICS_READ)
        return Response(plane.exposition(request.query_params.get("project")), media_type="text/plain; version=0.0.4")

    _ = (watch, accounting, federate)
    return router
