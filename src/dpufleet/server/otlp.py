"""Push: the aggregator's samples exported to an OpenTelemetry collector over OTLP/HTTP (protobuf).

Every batch the aggregator takes in is queued here; a loop sends what is queued every ``interval`` seconds
(sooner once ``BATCH_SAMPLES`` are waiting) as one ``ExportMetricsServiceRequest`` to ``<endpoint>/v1/metrics``
and one ``ExportLogsServiceRequest`` to ``<endpoint>/v1/logs``. Measurements become metric data points
(cumulative sums for counters, gauges for the rest), samples with a body (logs, events) become log records
with their severity. Each DPU is one resource (``dpufleet.project``, ``dpufleet.dpu``, ``device.id``).

As the OTLP specification asks, a 429, 502, 503 or 504 (or a connection error) is retried with backoff,
honouring ``Retry-After``; other refusals are not retried. The queue is bounded: what does not fit, or what
a collector refuses, is counted as dropped, by reason, so exported + dropped + queued = offered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, deque
from dataclasses import dataclass

import httpx
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs, SeverityNumber
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AggregationTemporality,
    Gauge,
    Metric,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from .. import __version__
from ..api.naming import dpu_name
from ..api.telemetry import CUMULATIVE_METRICS, BatchRecord, SampleRecord

log = logging.getLogger(__name__)
BATCH_SAMPLES = 20_000  # send as soon as this many wait
QUEUE_SAMPLES = 200_000  # beyond this, new batches are dropped (counted)
RETRYABLE = {429, 502, 503, 504}
MAX_BACKOFF = 30.0
# OpenTelemetry's SeverityNumber: the first of each range (DEBUG 5, INFO 9, WARN 13, ERROR 17, FATAL 21)
SEVERITY_NUMBER: dict[str, SeverityNumber.ValueType] = {
    "debug": SeverityNumber.SEVERITY_NUMBER_DEBUG,
    "info": SeverityNumber.SEVERITY_NUMBER_INFO,
    "warning": SeverityNumber.SEVERITY_NUMBER_WARN,
    "error": SeverityNumber.SEVERITY_NUMBER_ERROR,
    "critical": SeverityNumber.SEVERITY_NUMBER_FATAL,
}


@dataclass(frozen=True)
class Queued:
    project: str
    serial: str
    batch: BatchRecord


def _attrs(values: dict[str, str]) -> list[KeyValue]:
    return [KeyValue(key=k, value=AnyValue(string_value=v)) for k, v in sorted(values.items())]


def parse_headers(values: list[str]) -> dict[str, str]:
    """``--otlp-header NAME=VALUE`` (repeatable); ValueError naming the bad one."""
    headers: dict[str, str] = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"{value!r}: expected NAME=VALUE")
        headers[name.strip()] = rest.strip()
    return headers


def check_endpoint(url: str) -> str:
    """The collector's base URL (``http(s)://host:port``, optionally a path prefix); ValueError if not one."""
    parsed = httpx.URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"{url!r}: expected an http:// or https:// URL of an OTLP/HTTP collector")
    return url.rstrip("/")


def requests_for(items: list[Queued]) -> tuple[ExportMetricsServiceRequest, ExportLogsServiceRequest, int, int]:
    """The two export requests for these batches, and how many samples each carries."""
    metrics_by_dpu: dict[tuple[str, str], dict[tuple[str, str, str], list[SampleRecord]]] = {}
    logs_by_dpu: dict[tuple[str, str], list[tuple[SampleRecord, str]]] = {}
    for item in items:
        key = (item.project, item.serial)
        cls_name = item.batch["class"].value
        for sample in item.batch["samples"]:
            if sample.get("body") is not None:
                logs_by_dpu.setdefault(key, []).append((sample, cls_name))
            else:
                group = metrics_by_dpu.setdefault(key, {})
                group.setdefault((sample["name"], sample.get("unit", ""), cls_name), []).append(sample)
    scope = InstrumentationScope(name="dpufleet", version=__version__)
    metrics_request = ExportMetricsServiceRequest()
    n_metrics = n_logs = 0
    for (project, serial), by_metric in metrics_by_dpu.items():
        scoped = ScopeMetrics(scope=scope)
        for (name, unit, cls), samples in by_metric.items():
            points = [
                NumberDataPoint(
                    time_unix_nano=s["time"],
                    as_double=s.get("value", 0.0),
                    attributes=_attrs({**s.get("attributes", {}), "dpufleet.telemetry.class": cls}),
                )
                for s in samples
            ]
            n_metrics += len(points)
            if name in CUMULATIVE_METRICS:
                metric = Metric(name=name, unit=unit, sum=Sum(
                    data_points=points, is_monotonic=True,
                    aggregation_temporality=AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE,
                ))  # fmt: skip
            else:
                metric = Metric(name=name, unit=unit, gauge=Gauge(data_points=points))
            scoped.metrics.append(metric)
        metrics_request.resource_metrics.append(
            ResourceMetrics(resource=_resource(project, serial), scope_metrics=[scoped])
        )
    logs_request = ExportLogsServiceRequest()
    for (project, serial), records in logs_by_dpu.items():
        scoped_logs = ScopeLogs(scope=scope)
        for sample, cls in records:
            severity = sample.get("severity") or "info"
            scoped_logs.log_records.append(
                LogRecord(
                    time_unix_nano=sample["time"],
                    severity_number=SEVERITY_NUMBER.get(severity, SeverityNumber.SEVERITY_NUMBER_INFO),
                    severity_text=severity.upper(),
                    body=AnyValue(string_value=sample.get("body") or ""),
                    event_name=sample["name"],
                    attributes=_attrs({**sample.get("attributes", {}), "dpufleet.telemetry.class": cls}),
                )
            )
        n_logs += len(records)
        logs_request.resource_logs.append(ResourceLogs(resource=_resource(project, serial), scope_logs=[scoped_logs]))
    return metrics_request, logs_request, n_metrics, n_logs


def _resource(project: str, serial: str) -> Resource:
    return Resource(
        attributes=_attrs(
            {
                "service.name": "dpufleet",
                "dpufleet.project": project,
                "dpufleet.dpu": dpu_name(serial),
                "device.id": serial,
            }
        )
    )


class OTLPExporter:
    def __init__(
        self,
        endpoint: str,
        headers: dict[str, str] | None = None,
        interval: float = 5.0,
        queue_samples: int = QUEUE_SAMPLES,
        timeout: float = 10.0,
    ) -> None:
        self.endpoint = check_endpoint(endpoint)
        self.headers = {**(headers or {}), "Content-Type": "application/x-protobuf"}
        self.interval = interval
        self.queue_samples = queue_samples
        self.timeout = timeout
        self._queue: deque[Queued] = deque()
        self._queued = 0
        self.in_flight = 0
        self.offered = 0
        self.exported: Counter[str] = Counter()  # signal (metrics, logs) -> samples the collector took
        self.dropped: Counter[str] = Counter()  # reason -> samples
        self.last_error: str | None = None
        self._wake = asyncio.Event()

    @property
    def queued(self) -> int:
        return self._queued

    def offer(self, project: str, serial: str, batch: BatchRecord) -> None:
        """Queue one batch the aggregator took in (never blocks; a full queue drops it, counted)."""
        n = len(batch["samples"])
        self.offered += n
        if self._queued + n > self.queue_samples:
            self.dropped["queue-full"] += n
            return
        self._queue.append(Queued(project, serial, batch))
        self._queued += n
        if self._queued >= BATCH_SAMPLES:
            self._wake.set()

    def _take(self) -> list[Queued]:
        items: list[Queued] = []
        taken = 0
        while self._queue and taken < BATCH_SAMPLES:
            item = self._queue.popleft()
            items.append(item)
            taken += len(item.batch["samples"])
        self._queued -= taken
        return items

    async def run(self) -> None:
        log.info("telemetry pushed over OTLP/HTTP to %s every %.0f s", self.endpoint, self.interval)
        async with httpx.AsyncClient(timeout=self.timeout, headers=self.headers) as http:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.interval)
                self._wake.clear()
                while self._queue:
                    await self.send(http, self._take())

    async def send(self, http: httpx.AsyncClient, items: list[Queued]) -> None:
        metrics, logs, n_metrics, n_logs = requests_for(items)
        self.in_flight += n_metrics + n_logs
        try:
            for signal, request, count in (("metrics", metrics, n_metrics), ("logs", logs, n_logs)):
                if count:
                    await self._post(http, signal, request.SerializeToString(), count)
                    self.in_flight -= count
        except BaseException:  # stopped mid-send: what was not sent is counted, never lost silently
            self.dropped["shutdown"] += self.in_flight
            self.in_flight = 0
            raise

    async def _post(self, http: httpx.AsyncClient, signal: str, body: bytes, count: int) -> None:
        url = f"{self.endpoint}/v1/{signal}"
        backoff = 0.5
        for _ in range(6):
            try:
                resp = await http.post(url, content=body)
            except httpx.HTTPError as exc:
                self.last_error = f"{url}: {exc or type(exc).__name__}"
                retry_after = None
            else:
                if resp.status_code < 300:
                    self.exported[signal] += count
                    self.last_error = None
                    return
                self.last_error = f"{url}: HTTP {resp.status_code} {resp.text[:200]}"
                if resp.status_code not in RETRYABLE:
                    log.warning("OTLP export refused, not retried: %s", self.last_error)
                    self.dropped[f"refused-{resp.status_code}"] += count
                    return
                retry_after = _retry_after(resp.headers.get("Retry-After"))
            await asyncio.sleep(min(retry_after if retry_after is not None else backoff, MAX_BACKOFF))
            backoff = min(backoff * 2, MAX_BACKOFF)
        log.warning("OTLP export gave up after retries: %s", self.last_error)
        self.dropped["unreachable"] += count

    def exposition(self) -> list[str]:
        lines = [f'dpufleet_otlp_samples_exported_total{{signal="{s}"}} {n}' for s, n in sorted(self.exported.items())]
        lines += [f'dpufleet_otlp_samples_dropped_total{{reason="{r}"}} {n}' for r, n in sorted(self.dropped.items())]
        lines.append(f"dpufleet_otlp_samples_queued {self._queued + self.in_flight}")
        return lines


def _retry_after(value: str | None) -> float | None:
    try:
        return max(float(value), 0.0) if value is not None else None
    except ValueError:
        return None
