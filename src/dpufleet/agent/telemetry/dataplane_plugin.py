"""The data-plane plugin: the DPU's Open vSwitch as the agent programs it (agent/network.py): each port's
counters from OVSDB (Interface.statistics) and each service chain's flows and the traffic they matched,
summed per chain cookie (what a chain, and the tenant whose services it links, is billed for).

Where the agent programs no switch (no networking on this DPU), the plugin says nothing. A switch that
does not answer is logged once, not at every collection, and again when it answers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

from ...api.telemetry import Sample, TelemetryClass
from .base import ChainCounters, PortCounters, Sources, TelemetryPlugin

log = logging.getLogger(__name__)
LOAD, USAGE, ERRORS = TelemetryClass.LOAD, TelemetryClass.USAGE, TelemetryClass.ERRORS
# OVSDB's statistics keys -> (metric, direction); what a port receives enters the switch
_COUNTERS = {
    "rx_bytes": ("dpufleet.dataplane.port.io", "receive", "By", USAGE),
    "tx_bytes": ("dpufleet.dataplane.port.io", "transmit", "By", USAGE),
    "rx_packets": ("dpufleet.dataplane.port.packets", "receive", "{packet}", USAGE),
    "tx_packets": ("dpufleet.dataplane.port.packets", "transmit", "{packet}", USAGE),
    "rx_errors": ("dpufleet.dataplane.port.errors", "receive", "{error}", ERRORS),
    "tx_errors": ("dpufleet.dataplane.port.errors", "transmit", "{error}", ERRORS),
    "rx_dropped": ("dpufleet.dataplane.port.dropped", "receive", "{packet}", ERRORS),
    "tx_dropped": ("dpufleet.dataplane.port.dropped", "transmit", "{packet}", ERRORS),
}


class DataplanePlugin(TelemetryPlugin):
    name = "dataplane"
    classes = frozenset({LOAD, USAGE, ERRORS})

    def __init__(self, sources: Sources) -> None:
        super().__init__(sources)
        self._failing = False

    def collect(self, enabled: frozenset[TelemetryClass], at: int) -> Iterable[tuple[TelemetryClass, Sample]]:
        if self.sources.dataplane is None:
            return
        try:
            found = self.sources.dataplane()
        except Exception as exc:  # the switch is down or restarting: the other plugins go on
            if not self._failing:
                log.warning("telemetry: the data plane's counters cannot be read: %s", exc)
            self._failing = True
            return
        if self._failing:
            log.info("telemetry: the data plane's counters are read again")
        self._failing = False
        if found is None:
            return
        ports, chains = found
        for port in ports:
            yield from self._port(port, enabled, at)
        for chain in chains:
            yield from self._chain(chain, enabled, at)

    @staticmethod
    def _port(
        port: PortCounters, enabled: frozenset[TelemetryClass], at: int
    ) -> Iterator[tuple[TelemetryClass, Sample]]:
        for key, (name, direction, unit, cls) in _COUNTERS.items():
            value = port.counters.get(key)
            if cls not in enabled or value is None:
                continue  # OVS leaves out a counter the port's driver does not keep: not a zero
            attrs = {"network.interface.name": port.port, "dpufleet.interface": port.interface,
                     "network.io.direction": direction}  # fmt: skip
            yield cls, Sample(name=name, unit=unit, value=value, time=at, attributes=attrs)

    @staticmethod
    def _chain(
        chain: ChainCounters, enabled: frozenset[TelemetryClass], at: int
    ) -> Iterator[tuple[TelemetryClass, Sample]]:
        attrs = {"dpufleet.chain": chain.chain}
        if USAGE in enabled:
            yield USAGE, Sample(name="dpufleet.dataplane.chain.io", unit="By", value=chain.bytes, time=at,
                                attributes=attrs)  # fmt: skip
            yield USAGE, Sample(name="dpufleet.dataplane.chain.packets", unit="{packet}", value=chain.packets,
                                time=at, attributes=attrs)  # fmt: skip
        if LOAD in enabled:
            yield LOAD, Sample(name="dpufleet.dataplane.chain.flows", unit="{flow}", value=chain.flows, time=at,
                               attributes=attrs)  # fmt: skip
