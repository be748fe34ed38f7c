"""The plugin interface: a plugin names the classes it produces and collects samples for the ones asked for.

Plugins are chosen by name (``PLUGINS``), as drivers are; a plugin none of whose classes is enabled is not
called at all, so what no one asked for is never read (sender-side filtering).
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ...api.telemetry import Sample, TelemetryAssignment, TelemetryClass


def now_ns() -> int:
    return time.time_ns()


class InstanceStats(Protocol):
    """What the plugin reads of one instance (the runtime's ``InstanceReport`` has these fields)."""

    @property
    def service(self) -> str: ...
    @property
    def instance(self) -> str: ...
    @property
    def phase(self) -> str: ...
    @property
    def ready(self) -> bool: ...
    @property
    def restarts(self) -> int: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def memoryBytes(self) -> int | None: ...  # the wire model's field names
    @property
    def memoryLimitBytes(self) -> int | None: ...
    @property
    def cpuSeconds(self) -> float | None: ...


@dataclass(frozen=True)
class PortCounters:
    """One port of the DPU's switch that the agent made: its OVSDB statistics (rx_bytes, tx_packets...)."""

    port: str
    interface: str  # the DPUServiceInterface it renders
    counters: Mapping[str, int]


@dataclass(frozen=True)
class ChainCounters:
    """One service chain's flows in the switch, summed: how many, and the packets and bytes they matched."""

    chain: str
    flows: int
    packets: int
    bytes: int


Dataplane = tuple[Sequence[PortCounters], Sequence[ChainCounters]]


@dataclass(frozen=True)
class Sources:
    """Where a plugin reads from: the device's OS root (``/`` on a DPU), the directory it may keep its own
    small state in (a log's read offset), and, when services run here, the service runtime's log directory
    and its instances as it last measured them; where the agent programs an Open vSwitch, its counters
    (blocking: a plugin runs in the collection thread)."""

    root: Path
    state: Path
    service_logs: Path | None = None
    services: Callable[[], Sequence[InstanceStats]] | None = None
    dataplane: Callable[[], Dataplane | None] | None = None


class TelemetryPlugin(abc.ABC):
    """Collects from one source on the device (its OS, its BMC, its services)."""

    name: str
    classes: frozenset[TelemetryClass]

    def __init__(self, sources: Sources) -> None:
        self.sources = sources
        self.root = sources.root

    @abc.abstractmethod
    def collect(self, enabled: frozenset[TelemetryClass], at: int) -> Iterable[tuple[TelemetryClass, Sample]]:
        """The samples of the enabled classes this plugin produces, taken now (``at``: Unix ns)."""

    def configure(self, assignment: TelemetryAssignment) -> None:  # noqa: B027 (most plugins have nothing to set)
        """The control plane's latest assignment (a plugin takes the settings that are its own)."""
