"""Prometheus metrics for the API: request counts and latencies per route template; and the merge of
the controller process's metrics into the API's /metrics (`merge_expositions`)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class APIMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "dpufleet_api_requests_total", "API requests", ["method", "route", "code"], registry=registry
        )
        self.latency = Histogram(
            "dpufleet_api_request_seconds",
            "API request latency (streams: time to first byte)",
            ["method", "route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.watchers = Gauge("dpufleet_api_watchers", "Open watch streams", registry=registry)


class MetricsMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware), so it neither buffers nor breaks watch streams."""

    def __init__(self, app: ASGIApp, metrics: APIMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}
        observed = False

        def observe() -> None:
            nonlocal observed
            if observed:
                return
            observed = True
            route: Any = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.requests.labels(method, template, str(status["code"])).inc()
            self.metrics.latency.labels(method, template).observe(time.perf_counter() - start)

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                await send(message)
                observe()
                return
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            observe()


class _Families:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def merge_expositions(*texts: str) -> bytes:
    """Prometheus texts of several processes as one: a family in several has its samples of the same
    labels added (counters, histograms, gauges counted on one side), `_created` the earliest."""
    families: dict[str, Metric] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            have = families.get(family.name)
            if have is None:
                families[family.name] = family
                continue
            index = {(sample.name, tuple(sorted(sample.labels.items()))): i for i, sample in enumerate(have.samples)}
            for sample in family.samples:
                at = index.get((sample.name, tuple(sorted(sample.labels.items()))))
                if at is None:
                    have.samples.append(sample)
                    continue
                old = have.samples[at]
                value = min(old.value, sample.value) if sample.name.endswith("_created") else old.value + sample.value
                have.samples[at] = old._replace(value=value)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(families.values())))
    return generate_latest(registry)
