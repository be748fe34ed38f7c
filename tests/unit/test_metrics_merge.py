"""The API server's /metrics with the controller process's metrics merged in: one family per name,
the samples of both processes (added where both have the same labels)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

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
