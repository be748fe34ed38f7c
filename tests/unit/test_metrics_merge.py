"""The API server's /metrics with the controller process's metrics merged in: one family per name,
the samples of both processes (added where both have the same labels)."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dpufleet.drivers.redfish.events import Inbox
from dpufleet.server.controllers import ControllerProcess
from dpufleet.server.metrics import merge_expositions


def exposition(reconciles: dict[str, int], observed: list[float]) -> str:
    registry = CollectorRegistry()
    counter = Counter("x_reconciles_total", "passes", ["controller"], registry=registry)
    for controller, count in reconciles.items():
        counter.labels(controller).inc(count)
    latency = Histogram("x_seconds", "latency", registry=registry, buckets=(0.1, 1.0))
    for value in observed:
        latency.observe(value)
    return generate_latest(registry).decode()


def test_samples_of_both_processes_are_added_per_label_set() -> None:
    api = exposition({}, [0.05])
    child = exposition({"DPUProvisioner": 3, "HealthReconciler": 2}, [0.5, 2.0])
    merged = merge_expositions(api, child).decode()
    assert merged.count("# TYPE x_reconciles_total counter") == 1
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(merged)
        for s in family.samples
    }
    assert samples[("x_reconciles_total", (("controller", "DPUProvisioner"),))] == 3
    assert samples[("x_reconciles_total", (("controller", "HealthReconciler"),))] == 2
    assert samples[("x_seconds_count", ())] == 3
    assert samples[("x_seconds_bucket", (("le", "0.1"),))] == 1
    assert samples[("x_seconds_bucket", (("le", "1.0"),))] == 2
    assert samples[("x_seconds_sum", ())] == 2.55


def test_one_exposition_comes_back_as_it_was() -> None:
    text = exposition({"A": 1}, [0.2])
    assert merge_expositions(text).decode() == text


def test_a_busy_controller_process_gets_its_last_metrics_served_again(tmp_path: Path) -> None:
    """A child that answers a scrape and then is too busy to answer the next one: the server serves
    its last answer (with its age) instead of a scrape without the controllers' families."""
    child = ControllerProcess(tmp_path, None, Inbox())
    child.metrics_socket = tmp_path / "m.sock"
    child.process = subprocess.Popen(["sleep", "30"])  # a running child; the socket is served below
    answer = b"# TYPE dpufleet_controller_reconciles_total counter\ndpufleet_controller_reconciles_total 7.0\n"
    busy = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if busy.is_set():
            await asyncio.sleep(5)  # longer than the scrape's timeout
        writer.write(answer)
        await writer.drain()
        writer.close()

    async def scrape() -> tuple[str, str, float | None]:
        server = await asyncio.start_unix_server(serve, path=str(child.metrics_socket))
        async with server:
            first = await child.metrics_text(timeout=1.0)
            busy.set()
            second = await child.metrics_text(timeout=0.2)
            return first, second, child.metrics_age()

    try:
        first, second, age = asyncio.run(scrape())
        registry = CollectorRegistry()
        child.register_metrics(registry)
        own = generate_latest(registry).decode()
    finally:
        child.process.kill()
        child.process.wait()
    assert first == answer.decode() and second == first
    assert age is not None and age >= 0.2
    assert "dpufleet_controller_metrics_age_seconds" in own
    assert "dpufleet_event_relay_dropped_total 0.0" in own
    assert asyncio.run(child.metrics_text()) == ""  # the child exited: nothing stale is served
