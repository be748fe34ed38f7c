"""Given an OpenTelemetry collector's OTLP/HTTP receiver (a real HTTP server here that decodes the protobuf
requests the way a collector does): the control plane pushes each DPU's measurements as metrics and its log
lines as log records, one resource per DPU; a collector that is busy is retried as it asks, one that refuses
is not, and every sample offered is exported, dropped by reason, or still queued."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import SeverityNumber
from tests.support.net import wait_until
from tests.support.otlp import Collector, kv
from tests.support.telemetry import Plane, assign, report, telemetry_plane

from dpufleet.api.telemetry import BatchRecord, Sample, TelemetryClass, encode_batch, parse_batch
from dpufleet.server import otlp
from dpufleet.server.otlp import OTLPExporter, Queued, requests_for
from dpufleet.server.telemetry import DPUSeries, read_tables, whole_batch
from dpufleet.sim import osroot
from dpufleet.sim.fleet import build_fleet

NS = 1_700_000_000_000_000_000


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.close()


def _batch(cls: TelemetryClass, samples: list[Sample], serial: str = "MT2301X00042") -> BatchRecord:
    """The batch as an agent sends it, taken in as the aggregator takes it."""
    sent = encode_batch(serial, 0, cls, [s.model_dump(exclude_none=True) for s in samples])
    batch, lines = parse_batch(sent)
    return whole_batch(batch, read_tables(DPUSeries("default"), batch, lines))


def test_measurements_map_to_sums_and_gauges_and_log_lines_to_records_one_resource_per_dpu() -> None:
    load = _batch(TelemetryClass.LOAD, [
        Sample(name="system.cpu.time", unit="s", value=12.5, time=NS, attributes={"cpu.mode": "user"}),
        Sample(name="system.cpu.time", unit="s", value=3.0, time=NS, attributes={"cpu.mode": "system"}),
        Sample(name="system.memory.utilization", unit="1", value=0.42, time=NS),
    ])  # fmt: skip
    logs = _batch(TelemetryClass.LOGS, [
        Sample(name="dpufleet.log.syslog", time=NS + 1, severity="error", body="No space left on device",
               attributes={"syslog.app_name": "systemd-journald"}),
        Sample(name="dpufleet.log.service", time=NS + 2, severity="warning", body="queue deep",
               attributes={"service.name": "flow-logger"}),
    ])  # fmt: skip
    other = _batch(TelemetryClass.LOAD, [Sample(name="system.memory.utilization", value=0.1, time=NS)], "OTHER1")
    metrics, log_req, n_metrics, n_logs = requests_for(
        [
            Queued("default", "MT2301X00042", load),
            Queued("default", "MT2301X00042", logs),
            Queued("t1", "OTHER1", other),
        ]
    )
    assert (n_metrics, n_logs) == (4, 2)
    decoded = ExportMetricsServiceRequest.FromString(metrics.SerializeToString())  # as a collector reads it
    by_dpu = {kv(r.resource.attributes)["dpufleet.dpu"]: r for r in decoded.resource_metrics}
    assert set(by_dpu) == {"dpu-mt2301x00042", "dpu-other1"}
    resource = kv(by_dpu["dpu-mt2301x00042"].resource.attributes)
    assert resource == {"service.name": "dpufleet", "dpufleet.project": "default",
                        "dpufleet.dpu": "dpu-mt2301x00042", "device.id": "MT2301X00042"}  # fmt: skip
    assert kv(by_dpu["dpu-other1"].resource.attributes)["dpufleet.project"] == "t1"
    metric = {m.name: m for m in by_dpu["dpu-mt2301x00042"].scope_metrics[0].metrics}
    cpu = metric["system.cpu.time"]
    assert cpu.WhichOneof("data") == "sum" and cpu.sum.is_monotonic and cpu.unit == "s"
    assert cpu.sum.aggregation_temporality == 2  # CUMULATIVE: counters since boot
    assert sorted(p.as_double for p in cpu.sum.data_points) == [3.0, 12.5]
    point = cpu.sum.data_points[0]
    assert point.time_unix_nano == NS and kv(point.attributes)["dpufleet.telemetry.class"] == "load"
    assert metric["system.memory.utilization"].WhichOneof("data") == "gauge"
    records = ExportLogsServiceRequest.FromString(log_req.SerializeToString()).resource_logs
    assert len(records) == 1
    kernel, service = records[0].scope_logs[0].log_records
    assert kernel.severity_number == SeverityNumber.SEVERITY_NUMBER_ERROR and kernel.severity_text == "ERROR"
    assert kernel.body.string_value == "No space left on device" and kernel.event_name == "dpufleet.log.syslog"
    assert kernel.time_unix_nano == NS + 1 and kv(kernel.attributes)["syslog.app_name"] == "systemd-journald"
    assert service.severity_number == SeverityNumber.SEVERITY_NUMBER_WARN
    assert kv(service.attributes) == {"service.name": "flow-logger", "dpufleet.telemetry.class": "logs"}


def test_a_busy_collector_is_retried_as_it_asks_a_refusing_one_is_not_and_every_sample_is_accounted_for(
    collector: Collector,
) -> None:
    samples = [Sample(name="system.memory.utilization", value=0.5, time=NS)]
    exporter = OTLPExporter(collector.url, {"Authorization": "Bearer k3y"}, interval=0.05, queue_samples=3)

    async def scenario() -> None:
        loop = asyncio.create_task(exporter.run())
        try:
            collector.answers = [(503, {"Retry-After": "0.2"}), (429, {})]
            exporter.offer("default", "A1", _batch(TelemetryClass.LOAD, samples * 2))
            for _ in range(100):
                if exporter.exported["metrics"]:
                    break
                await asyncio.sleep(0.05)
            collector.answers = [(400, {})]  # a malformed request: retrying cannot help
            exporter.offer("default", "A1", _batch(TelemetryClass.LOAD, samples))
            exporter.offer("default", "A1", _batch(TelemetryClass.LOAD, samples * 3))  # 1 queued + 3 > 3: dropped
            for _ in range(100):
                if exporter.dropped["refused-400"]:
                    break
                await asyncio.sleep(0.05)
        finally:
            loop.cancel()
            with pytest.raises(asyncio.CancelledError):
                await loop

    asyncio.run(scenario())
    statuses = [(path, status) for path, status, _ in collector.seen]
    assert statuses == [("/v1/metrics", 503), ("/v1/metrics", 429), ("/v1/metrics", 200), ("/v1/metrics", 400)]
    assert all(h.get("Authorization") == "Bearer k3y" for _, _, h in collector.seen)
    assert all(h.get("Content-Type") == "application/x-protobuf" for _, _, h in collector.seen)
    assert exporter.exported == {"metrics": 2} and collector.data_points() == 2
    assert exporter.dropped == {"refused-400": 1, "queue-full": 3}
    assert exporter.offered == 6 == sum(exporter.exported.values()) + sum(exporter.dropped.values()) + exporter.queued
    lines = exporter.exposition()
    assert 'dpufleet_otlp_samples_exported_total{signal="metrics"} 2' in lines
    assert 'dpufleet_otlp_samples_dropped_total{reason="queue-full"} 3' in lines


def test_an_unreachable_collector_is_given_up_after_retries_and_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(otlp, "MAX_BACKOFF", 0.01)
    exporter = OTLPExporter("http://127.0.0.1:9", timeout=0.5)  # port 9 (discard): nothing listens on loopback

    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=0.5) as http:
            await exporter.send(http, [Queued("default", "A1", _batch(TelemetryClass.LOAD, [
                Sample(name="system.memory.utilization", value=0.5, time=NS)]))])  # fmt: skip

    asyncio.run(scenario())
    assert exporter.dropped == {"unreachable": 1} and not exporter.exported
    assert exporter.last_error is not None and "127.0.0.1:9/v1/metrics" in exporter.last_error


@pytest.fixture(scope="module")
def otlp_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Plane, Collector]]:
    collector = Collector()
    try:
        with telemetry_plane(tmp_path_factory.mktemp("otlp"), otlp_endpoint=collector.url) as plane:
            yield plane, collector
    finally:
        collector.close()


def test_the_control_plane_pushes_a_dpus_measurements_and_log_lines_to_the_collector(
    otlp_plane: tuple[Plane, Collector], tmp_path: Path
) -> None:
    plane, collector = otlp_plane
    sim = build_fleet(1, 1, ["nvidia-bluefield-3"], 13, tmp_path / "sim")
    dpu = sim.dpus[0]
    assert dpu.osroot is not None
    plane.dpu(dpu.serial, "load,logs")

    async def scenario() -> int:
        agent = plane.agent(dpu.serial, dpu.osroot)  # type: ignore[arg-type]
        try:
            assign(agent, await report(agent, dpu.serial), dpu.serial)
            telemetry = agent.telemetry
            assert telemetry is not None
            telemetry.collect_once()  # the syslog is read from its end on first start
            osroot.syslog(dpu, "kernel", "mlx5_core 0000:03:00.0: link down")
            sent = telemetry.collect_once()
            return sent + await telemetry.forward()
        finally:
            await agent.aclose()

    assert asyncio.run(scenario()) > 0
    exporter = plane.telemetry.exporter
    assert exporter is not None
    wait_until(lambda: collector.log_records() and collector.data_points() >= 16, 15, what="the OTLP push")
    resource, attrs, _body, severity, event = next(r for r in collector.log_records() if "link down" in r[2])
    assert resource["dpufleet.dpu"] == f"dpu-{dpu.serial.lower()}" and resource["device.id"] == dpu.serial
    assert attrs["syslog.app_name"] == "kernel" and event == "dpufleet.log.syslog"
    assert severity >= SeverityNumber.SEVERITY_NUMBER_INFO
    with collector.lock:
        names = {m.name for r in collector.metrics for s in r.resource_metrics for sm in s.scope_metrics
                 for m in sm.metrics}  # fmt: skip
    assert "system.cpu.time" in names
    wait_until(lambda: exporter.queued == 0 and exporter.in_flight == 0, 10, what="the queue to drain")
    assert exporter.offered == sum(exporter.exported.values()) and not exporter.dropped
    with plane.api.client() as http:
        text = http.get("/telemetry/v1/federate").text
    assert f'dpufleet_otlp_samples_exported_total{{signal="logs"}} {exporter.exported["logs"]}' in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--otlp-endpoint", "collector:4318"], "expected an http:// or https:// URL"),
        (["--otlp-endpoint", "http://127.0.0.1:4318", "--otlp-header", "api-key"], "expected NAME=VALUE"),
        (["--otlp-endpoint", "http://127.0.0.1:4318", "--telemetry-bus", "none"], "needs a telemetry bus"),
    ],
)
def test_server_refuses_a_bad_otlp_option_naming_it(tmp_path: Path, args: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dpufleet.main", "server", "--data-dir", str(tmp_path / "data"), *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "data").exists()  # nothing started, nothing written
