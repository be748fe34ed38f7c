"""The agent's telemetry loop: collect what the control plane asked for, spool it, forward it to the bus.

Every sample produced is accounted for, by class: delivered (the bus acknowledged the batch: a flush's
PING/PONG came back after it), dropped (by reason), or still buffered. The equation
produced = delivered + dropped + buffered holds at every moment; the agent publishes its accounting on
``<prefix>.accounting`` after each forward.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ...api.telemetry import Accounting, BusAccess, Sample, TelemetryAssignment, TelemetryClass, encode_batch
from .base import Dataplane, InstanceStats, Sources, TelemetryPlugin, now_ns
from .natsclient import NATS, WEBSOCKET_SCHEMES, nats
from .plugins import DEFAULT_PLUGINS, PLUGINS
from .spool import Spool

log = logging.getLogger(__name__)
DEFAULT_BUFFER_BYTES = 8 * 1024 * 1024
FORWARD_BATCHES = 256  # batches published before one flush (one round trip) confirms them


class Telemetry:
    def __init__(
        self,
        root: Path,
        serial: str,
        spool_dir: Path,
        buffer_bytes: int = DEFAULT_BUFFER_BYTES,
        plugins: tuple[str, ...] = DEFAULT_PLUGINS,
        uplink: Callable[[], bool] = lambda: True,
        clock_ns: Callable[[], int] = now_ns,
        service_logs: Path | None = None,
        services: Callable[[], Sequence[InstanceStats]] | None = None,
        dataplane: Callable[[], Dataplane | None] | None = None,
    ) -> None:
        unknown = [p for p in plugins if p not in PLUGINS]
        if unknown:
            raise ValueError(f"telemetry plugins: unknown {', '.join(unknown)} (known: {', '.join(PLUGINS)})")
        self.serial = serial
        self.spool = Spool(spool_dir, buffer_bytes)
        sources = Sources(root=root, state=spool_dir, service_logs=service_logs, services=services,
                          dataplane=dataplane)  # fmt: skip
        self.plugins: list[TelemetryPlugin] = [PLUGINS[p](sources) for p in plugins]
        self.uplink = uplink
        self.clock_ns = clock_ns
        self.assignment = TelemetryAssignment()
        self.produced: Counter[TelemetryClass] = Counter()
        self.delivered: Counter[TelemetryClass] = Counter()
        self.collections = 0
        self._refused = ""  # the last bus URL refused (not one this agent can dial)
        # the latest value of each series (a measurement, not an event or a log line), for the agent's own
        # Prometheus endpoint: (name, attributes) -> (value, taken in ms, unit)
        self.latest: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[float, int, str]] = {}
        # seq rises by one per batch from the clock's microseconds at start: a restarted agent's batches stay above
        # the ones the aggregator took before (it drops a seq not above the last as a repeat)
        self._seq = max(self.spool.next_seq(), clock_ns() // 1000)
        for entry in self.spool.recovered:  # a previous run's buffer is forwarded, and counted in this run
            self.produced[entry.cls] += entry.samples
        self._nc: NATS | None = None
        self._bus: BusAccess | None = None
        self.wake = asyncio.Event()

    @property
    def enabled(self) -> frozenset[TelemetryClass]:
        return frozenset(self.assignment.classes)

    def assign(self, assignment: TelemetryAssignment) -> None:
        """The control plane's latest word (from the report reply)."""
        if assignment != self.assignment:
            log.info("telemetry: collecting %s", ", ".join(assignment.classes) or "nothing")
            self.assignment = assignment
            for plugin in self.plugins:
                plugin.configure(assignment)
            self.wake.set()

    def collect_once(self) -> int:
        """One collection of the enabled classes into the spool; the number of samples produced."""
        enabled = self.enabled
        if not enabled:
            return 0
        at = self.clock_ns()
        by_class: dict[TelemetryClass, list[Sample]] = {}
        for plugin in self.plugins:
            if not plugin.classes & enabled:
                continue  # nothing asked of this plugin: it reads nothing
            try:
                for cls, sample in plugin.collect(enabled, at):
                    by_class.setdefault(cls, []).append(sample)
            except Exception:  # a broken source must not stop the others
                log.exception("telemetry plugin %s failed", plugin.name)
        total = 0
        for cls in TelemetryClass:
            samples = by_class.get(cls)
            if not samples or cls not in enabled:
                continue
            for sample in samples:
                if sample.body is None:
                    key = (sample.name, tuple(sorted(sample.attributes.items())))
                    self.latest[key] = (sample.value, sample.time // 1_000_000, sample.unit)
            data = encode_batch(self.serial, self._seq, cls, [s.model_dump(exclude_none=True) for s in samples])
            self.produced[cls] += len(samples)
            self.spool.add(self._seq, cls, len(samples), data)
            self._seq += 1
            total += len(samples)
        self.collections += 1
        return total

    def accounting(self) -> Accounting:
        dropped: dict[str, dict[str, int]] = {}
        for (reason, cls), count in self.spool.dropped.items():
            dropped.setdefault(reason, {})[cls.value] = count
        return Accounting(
            serial=self.serial,
            produced={c.value: n for c, n in self.produced.items()},
            delivered={c.value: n for c, n in self.delivered.items()},
            dropped=dropped,
            buffered={c.value: n for c, n in self.spool.buffered().items()},
            bufferedBytes=self.spool.size,
        )

    async def _connection(self) -> NATS | None:
        bus = self.assignment.bus
        if bus is None or not self.uplink():
            await self._disconnect()
            return None
        if self._nc is not None and self._nc.is_connected and bus == self._bus:
            return self._nc
        await self._disconnect()

        async def _quiet(_exc: Exception) -> None:
            return None

        if bus.url.startswith(WEBSOCKET_SCHEMES):
            raise ValueError(f"the bus URL {bus.url}: the agent speaks nats:// or tls:// to the bus, not websockets")
        self._nc = await nats.connect(
            bus.url, user=bus.user, password=bus.password, allow_reconnect=False, connect_timeout=2,
            max_reconnect_attempts=0, error_cb=_quiet, name=f"dpufleet-agent {self.serial}",
        )  # fmt: skip
        self._bus = bus
        return self._nc

    async def _disconnect(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()

    async def forward(self) -> int:
        """Forward the spool to the bus, oldest first; the samples delivered (0 while the bus is away)."""
        try:
            nc = await self._connection()
        except ValueError as exc:  # a bus this agent cannot speak to: said once per assignment, kept buffering
            if self._refused != str(exc):
                log.warning("telemetry: %s; samples stay buffered", exc)
            self._refused = str(exc)
            return 0
        except Exception as exc:
            log.debug("telemetry bus unreachable: %s", exc)
            await self._disconnect()
            return 0
        if nc is None or self._bus is None:
            return 0
        prefix = self._bus.subjectPrefix
        sent = 0
        try:
            while True:
                entries = self.spool.oldest(FORWARD_BATCHES)
                if not entries:
                    break
                for entry in entries:
                    await nc.publish(f"{prefix}.{entry.cls.value}", self.spool.read(entry))
                await nc.flush(timeout=2)
                self.spool.forwarded(entries)
                for entry in entries:
                    self.delivered[entry.cls] += entry.samples
                    sent += entry.samples
            await nc.publish(f"{prefix}.accounting", self.accounting().model_dump_json().encode())
            await nc.flush(timeout=2)
        except Exception as exc:
            log.debug("telemetry forward interrupted: %s", exc)
            await self._disconnect()
        return sent

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        next_collect = loop.time()
        while not stop.is_set():
            if loop.time() >= next_collect:
                await asyncio.to_thread(self.collect_once)
                next_collect = loop.time() + self.assignment.intervalSeconds
            await self.forward()
            self.wake.clear()
            wait = max(0.0, min(next_collect - loop.time(), 1.0))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_first(stop, self.wake), wait)
        await self._disconnect()

    def status(self) -> dict[str, Any]:
        return self.accounting().model_dump()


async def _first(*events: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
