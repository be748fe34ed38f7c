"""The OS plugin: CPU, memory, load, filesystems, per-interface counters and temperatures from the DPU's own
/proc and /sys (under the agent's root: ``/`` on a DPU, the emulated OS root in the emulator).

Names and units are OpenTelemetry's semantic conventions for system and hardware metrics; a file the OS does
not have is skipped, never guessed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from ...api.telemetry import Sample, TelemetryClass
from .base import Sources, TelemetryPlugin

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
CPU_MODES = ("user", "nice", "system", "idle", "iowait", "interrupt", "softirq", "steal")
LOAD, USAGE, ERRORS, ENV, EVENTS = (
    TelemetryClass.LOAD,
    TelemetryClass.USAGE,
    TelemetryClass.ERRORS,
    TelemetryClass.ENVIRONMENTAL,
    TelemetryClass.EVENTS,
)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _number(path: Path) -> int | None:
    text = _read(path)
    try:
        return int(text.strip()) if text is not None else None
    except ValueError:
        return None


class OSPlugin(TelemetryPlugin):
    name = "os"
    classes = frozenset({LOAD, USAGE, ERRORS, ENV, EVENTS})

    def __init__(self, sources: Sources) -> None:
        super().__init__(sources)
        self._operstate: dict[str, str] = {}

    def collect(self, enabled: frozenset[TelemetryClass], at: int) -> Iterable[tuple[TelemetryClass, Sample]]:
        if LOAD in enabled:
            yield from ((LOAD, s) for s in self._cpu(at))
            yield from ((LOAD, s) for s in self._memory(at))
            yield from ((LOAD, s) for s in self._loadavg(at))
        if enabled & {USAGE, ERRORS, EVENTS}:
            yield from self._network(enabled, at)
        if ENV in enabled:
            yield from ((ENV, s) for s in self._thermal(at))

    def _cpu(self, at: int) -> Iterator[Sample]:
        text = _read(self.root / "proc/stat")
        for line in (text or "").splitlines():
            fields = line.split()
            if not fields or not fields[0].startswith("cpu") or fields[0] == "cpu":
                continue
            cpu = fields[0][3:]
            for mode, ticks in zip(CPU_MODES, fields[1:], strict=False):
                yield Sample(
                    name="system.cpu.time", unit="s", value=int(ticks) / CLOCK_TICKS, time=at,
                    attributes={"cpu.logical_number": cpu, "cpu.mode": mode},
                )  # fmt: skip

    def _memory(self, at: int) -> Iterator[Sample]:
        text = _read(self.root / "proc/meminfo")
        if text is None:
            return
        kib: dict[str, int] = {}
        for line in text.splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                kib[key] = int(parts[0])
        total = kib.get("MemTotal")
        if not total:
            return
        free, buffers, cached = kib.get("MemFree", 0), kib.get("Buffers", 0), kib.get("Cached", 0)
        used = max(total - free - buffers - cached, 0)
        for state, value in (("used", used), ("free", free), ("buffers", buffers), ("cached", cached)):
            yield Sample(
                name="system.memory.usage", unit="By", value=value * 1024, time=at,
                attributes={"system.memory.state": state},
            )  # fmt: skip
        yield Sample(name="system.memory.utilization", unit="1", value=used / total, time=at,
                     attributes={"system.memory.state": "used"})  # fmt: skip

    def _loadavg(self, at: int) -> Iterator[Sample]:
        text = _read(self.root / "proc/loadavg")
        parts = (text or "").split()
        for window, value in zip(("1m", "5m", "15m"), parts[:3], strict=False):
            yield Sample(name=f"system.cpu.load_average.{window}", unit="{thread}", value=float(value), time=at)

    def _network(self, enabled: frozenset[TelemetryClass], at: int) -> Iterator[tuple[TelemetryClass, Sample]]:
        net = self.root / "sys/class/net"
        try:
            names = sorted(p.name for p in net.iterdir())
        except OSError:
            return
        for name in names:
            if name == "lo":
                continue
            stats = net / name / "statistics"
            attrs = {"network.interface.name": name}
            if USAGE in enabled:
                for metric, unit, rx, tx in (
                    ("system.network.io", "By", "rx_bytes", "tx_bytes"),
                    ("system.network.packets", "{packet}", "rx_packets", "tx_packets"),
                ):
                    for direction, counter in (("receive", rx), ("transmit", tx)):
                        value = _number(stats / counter)
                        if value is not None:
                            yield USAGE, Sample(
                                name=metric, unit=unit, value=value, time=at,
                                attributes={**attrs, "network.io.direction": direction},
                            )  # fmt: skip
            if ERRORS in enabled:
                for metric, unit, rx, tx in (
                    ("system.network.errors", "{error}", "rx_errors", "tx_errors"),
                    ("system.network.dropped", "{packet}", "rx_dropped", "tx_dropped"),
                ):
                    for direction, counter in (("receive", rx), ("transmit", tx)):
                        value = _number(stats / counter)
                        if value is not None:
                            yield ERRORS, Sample(
                                name=metric, unit=unit, value=value, time=at,
                                attributes={**attrs, "network.io.direction": direction},
                            )  # fmt: skip
            if EVENTS in enabled:
                state = (_read(net / name / "operstate") or "unknown").strip()
                before = self._operstate.get(name)
                self._operstate[name] = state
                if before is not None and before != state:
                    yield EVENTS, Sample(
                        name="dpufleet.event.link", time=at, attributes={**attrs, "state": state},
                        severity="warning" if state == "down" else "info",
                        body=f"interface {name} went {state} (was {before})",
                    )  # fmt: skip

    def _thermal(self, at: int) -> Iterator[Sample]:
        base = self.root / "sys/class/thermal"
        try:
            zones = sorted(p for p in base.iterdir() if p.name.startswith("thermal_zone"))
        except OSError:
            return
        for zone in zones:
            millideg = _number(zone / "temp")
            if millideg is None:
                continue
            kind = (_read(zone / "type") or zone.name).strip()
            yield Sample(
                name="hw.temperature", unit="Cel", value=millideg / 1000, time=at,
                attributes={"hw.id": zone.name, "hw.name": kind, "hw.type": "temperature"},
            )  # fmt: skip
