"""Controller work for Prometheus: reconciles per controller and outcome (as controller-runtime's
controller_runtime_reconcile_total). Outside any registry, so each API server adds them to its own."""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter

RECONCILES = Counter(
    "dpufleet_controller_reconciles_total",
    "Reconcile passes, by controller and outcome (ok, requeue, error)",
    ["controller", "result"],
    registry=None,
)


def register_metrics(registry: CollectorRegistry) -> None:
    with contextlib.suppress(ValueError):  # already registered there
        registry.register(RECONCILES)
