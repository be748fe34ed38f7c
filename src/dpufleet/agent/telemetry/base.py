"""The plugin interface: a plugin names the classes it produces and collects samples for the ones asked for.

Plugins are chosen by name (``PLUGINS``), as drivers are; a plugin none of whose classes is enabled is not
called at all, so what no one asked for is never read (sender-side filtering).
"""

from __future__ import annotations

import abc
import time
from collections.abc import Iterable
from pathlib import Path

from ...api.telemetry import Sample, TelemetryClass


def now_ns() -> int:
    return time.time_ns()


class TelemetryPlugin(abc.ABC):
    """Collects from one source on the device (its OS, its BMC, its services)."""

    name: str
    classes: frozenset[TelemetryClass]

    def __init__(self, root: Path) -> None:
        self.root = root

    @abc.abstractmethod
    def collect(self, enabled: frozenset[TelemetryClass], at: int) -> Iterable[tuple[TelemetryClass, Sample]]:
        """The samples of the enabled classes this plugin produces, taken now (``at``: Unix ns)."""
