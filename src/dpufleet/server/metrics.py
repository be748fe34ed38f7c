"""Prometheus metrics for the API: request counts and latencies per route template."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
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
