"""Time spent in each provisioning phase, and transitions, for Prometheus.

The metrics live outside any registry so each API server can add them to its own
(`register_metrics`), as it does with its request metrics.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Histogram

PHASE_SECONDS = Histogram(
    "dpufleet_dpu_phase_seconds",
    "Time DPUs spent in a provisioning phase before leaving it",
    ["phase", "outcome"],
    buckets=(0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600),
    registry=None,
)
TRANSITIONS = Counter(
    "dpufleet_dpu_phase_transitions_total", "Provisioning phase transitions", ["from_phase", "to_phase"], registry=None
)


def register_metrics(registry: CollectorRegistry) -> None:
    for collector in (PHASE_SECONDS, TRANSITIONS):
        with contextlib.suppress(ValueError):  # already registered there
            registry.register(collector)
