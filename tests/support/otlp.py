"""An OpenTelemetry collector's OTLP/HTTP receiver for the tests: a real HTTP server on loopback that
decodes the protobuf requests the way a collector does."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest


class Collector:
    """An OTLP/HTTP receiver on loopback: keeps each decoded request; answers from a script, then 200."""

    def __init__(self) -> None:
        self.metrics: list[ExportMetricsServiceRequest] = []
        self.logs: list[ExportLogsServiceRequest] = []
        self.answers: list[tuple[int, dict[str, str]]] = []  # what the next requests get, in order
        self.seen: list[tuple[str, int, dict[str, str]]] = []  # path, status answered, headers
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with collector.lock:
                    status, headers = collector.answers.pop(0) if collector.answers else (200, {})
                    collector.seen.append((self.path, status, dict(self.headers)))
                    if status == 200:
                        if self.path == "/v1/metrics":
                            collector.metrics.append(ExportMetricsServiceRequest.FromString(body))
                        elif self.path == "/v1/logs":
                            collector.logs.append(ExportLogsServiceRequest.FromString(body))
                        else:
                            status = 404
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def data_points(self) -> int:
        with self.lock:
            return sum(
                len(m.sum.data_points) + len(m.gauge.data_points)
                for r in self.metrics for s in r.resource_metrics for sm in s.scope_metrics for m in sm.metrics
            )  # fmt: skip

    def log_records(self) -> list[tuple[dict[str, str], dict[str, str], str, int, str]]:
        """(resource attributes, record attributes, body, severity number, event name) of each record."""
        with self.lock:
            return [
                (kv(rl.resource.attributes), kv(rec.attributes), rec.body.string_value, rec.severity_number,
                 rec.event_name)
                for r in self.logs for rl in r.resource_logs for sl in rl.scope_logs for rec in sl.log_records
            ]  # fmt: skip

    def metric_points(self, name: str) -> list[dict[str, str]]:
        """The attributes of each data point of the named metric received so far."""
        with self.lock:
            return [
                kv(p.attributes)
                for r in self.metrics for s in r.resource_metrics for sm in s.scope_metrics for m in sm.metrics
                if m.name == name for p in (*m.gauge.data_points, *m.sum.data_points)
            ]  # fmt: skip


def kv(attrs: object) -> dict[str, str]:
    """OTLP attributes (string values) as a dict."""
    return {pair.key: pair.value.string_value for pair in attrs}  # type: ignore[attr-defined]
