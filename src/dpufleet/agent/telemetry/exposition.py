"""The agent's own Prometheus endpoint (``dpufleet agent --metrics-listen HOST:PORT``): the latest value of
each series this DPU collects and its sample accounting, for a Prometheus that scrapes DPUs directly (on the
DPU's management network) instead of, or beside, the control plane's fleet endpoint.

The names are the fleet endpoint's (``api/telemetry.prom_name``) without its ``project``/``dpu`` labels: the
scrape target is the DPU. Only what the control plane asked this DPU to collect is there (sender-side
filtering holds here too). Served by prometheus-client's own HTTP server, in a thread of its own.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, UnknownMetricFamily
from prometheus_client.registry import Collector

from ...api.telemetry import prom_name

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from .collector import Telemetry


class TelemetryCollector(Collector):
    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry

    def collect(self) -> Iterable[Metric]:
        tm = self.telemetry
        families: dict[str, tuple[list[str], list[tuple[list[str], float, float]]]] = {}
        for (name, attrs), (value, millis, unit) in sorted(list(tm.latest.items())):
            metric = prom_name(name, unit)
            keys = [k.replace(".", "_") for k, _ in attrs]
            labels, points = families.setdefault(metric, (keys, []))
            if keys != labels:  # the same metric with other attributes: a family holds one label set
                metric = f"{metric}__{'_'.join(keys)}"
                labels, points = families.setdefault(metric, (keys, []))
            points.append(([v for _, v in attrs], value, millis / 1000))
        for metric, (labels, points) in families.items():
            family = UnknownMetricFamily(metric, "", labels=labels)
            for values, value, at in points:
                family.add_metric(values, value, timestamp=at)
            yield family
        acc = tm.accounting()
        for what, counts in (("produced", acc.produced), ("delivered", acc.delivered)):
            counter = CounterMetricFamily(
                f"dpufleet_telemetry_samples_{what}", f"Telemetry samples {what} on this DPU", labels=["class"]
            )
            for cls, count in sorted(counts.items()):
                counter.add_metric([cls], count)
            yield counter
        dropped = CounterMetricFamily(
            "dpufleet_telemetry_samples_dropped", "Telemetry samples this DPU dropped", labels=["class", "reason"]
        )
        for reason, counts in sorted(acc.dropped.items()):
            for cls, count in sorted(counts.items()):
                dropped.add_metric([cls, reason], count)
        yield dropped
        buffered = GaugeMetricFamily(
            "dpufleet_telemetry_samples_buffered", "Telemetry samples waiting in this DPU's spool", labels=["class"]
        )
        for cls, count in sorted(acc.buffered.items()):
            buffered.add_metric([cls], count)
        yield buffered
        yield GaugeMetricFamily(
            "dpufleet_telemetry_spool_bytes", "Bytes in this DPU's telemetry spool", value=acc.bufferedBytes
        )


def serve(telemetry: Telemetry, host: str, port: int) -> tuple[WSGIServer, threading.Thread]:
    """Serve /metrics on host:port until ``server.shutdown()``; the bound port is ``server.server_port``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TelemetryCollector(telemetry))
    return start_http_server(port, addr=host, registry=registry)
