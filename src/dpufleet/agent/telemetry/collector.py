"""The agent's telemetry loop: collect what the control plane asked for, spool it, forward it to the bus.

Every sample produced is accounted for, by class: delivered (the bus acknowledged the batch: a flush's
PING/PONG came back after it), dropped (by reason), or still buffered. The equation
produced = delivered + dropped + buffered holds at every moment; the agent publishes its accounting on
``<prefix>.accounting`` after each forward.

With a host relay (``--host-relay``, agent/host_relay.py) a DPU cut off from the bus moves its spooled batches
to its host's disk, sealed, oldest first, as long as the host takes them; what the host refuses stays in the
spool, under its policy. Back on the bus the agent forwards both in the order they were produced. A batch the
host lost or altered is counted dropped (``lost-on-host``); one the host cannot be reached for within
``HOST_WAIT_SECONDS`` of the bus coming back is counted dropped (``host-unreachable``) so that the newer ones
are not held back for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ...api.telemetry import Accounting, BusAccess, Sample, TelemetryAssignment, TelemetryClass, encode_batch
from ..host_relay import RelayClient, RelayUnavailable, Sealer
from .base import Dataplane, InstanceStats, Sources, TelemetryPlugin, now_ns
from .natsclient import NATS, WEBSOCKET_SCHEMES, nats
from .plugins import DEFAULT_PLUGINS, PLUGINS
from .spool import Spool, Spooled

log = logging.getLogger(__name__)
DEFAULT_BUFFER_BYTES = 8 * 1024 * 1024
FORWARD_BATCHES = 256  # batches published before one flush (one round trip) confirms them
HOST_WAIT_SECONDS = 300.0  # back on the bus, how long batches kept on an unreachable host hold the rest back
ON_HOST = ".on-host.json"  # the batches kept on the host: seq, class, samples, bytes (the spool skips dot files)


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
        host_relay: RelayClient | None = None,
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
        for entry in self.spool.recovered:  # a previous run's buffer is forwarded, and counted in this run
            self.produced[entry.cls] += entry.samples
        self.relay = host_relay
        self._sealer = Sealer(spool_dir / ".relay.key") if host_relay is not None else None
        self.on_host: dict[int, Spooled] = self._load_on_host(spool_dir / ON_HOST)
        self._orphans: list[str] = []  # host copies this DPU does not list (a crash mid-move, a failed delete)
        self._reconciled = False  # this cut's first spill has compared the host's list with ours
        in_spool = {e.seq for e in self.spool.recovered}
        for seq in [seq for seq in self.on_host if seq in in_spool]:
            self._orphans.append(self._name(self.on_host.pop(seq)))
        for entry in self.on_host.values():
            self.produced[entry.cls] += entry.samples
        self._host_away_since: float | None = None  # back on the bus, since when the host has not answered
        above = max(self.on_host, default=-1) + 1
        if host_relay is None and self.on_host:  # the relay was taken away: what it kept is not coming back
            log.warning("telemetry: %d batches listed on the host, and no --host-relay: counted lost",
                        len(self.on_host))  # fmt: skip
            self._lose_all(list(self.on_host.values()), "host-unreachable")
        # seq rises by one per batch from the clock's microseconds at start, and above every batch still kept
        # (here or on the host): a restarted agent's batches stay above the ones the aggregator took before (it
        # drops a seq not above the last as a repeat), even on a DPU whose clock went back
        self._seq = max(self.spool.next_seq(), above, clock_ns() // 1000)
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
        on_host: Counter[str] = Counter()
        for entry in self.on_host.values():
            on_host[entry.cls.value] += entry.samples
        buffered = Counter({c.value: n for c, n in self.spool.buffered().items()})
        buffered.update(on_host)
        return Accounting(
            serial=self.serial,
            produced={c.value: n for c, n in self.produced.items()},
            delivered={c.value: n for c, n in self.delivered.items()},
            dropped=dropped,
            buffered=dict(buffered),
            bufferedBytes=self.spool.size,
            bufferedOnHost=dict(on_host),
            bufferedOnHostBytes=sum(e.size for e in self.on_host.values()),
        )

    # --- the host's share of the buffer ------------------------------------------------------------------

    @staticmethod
    def _load_on_host(path: Path) -> dict[int, Spooled]:
        try:
            rows = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError:
            log.warning("telemetry: %s is unreadable; the batches it listed on the host are not counted", path)
            return {}
        kept = {}
        for seq, cls, samples, size in rows:
            with contextlib.suppress(ValueError):
                kept[int(seq)] = Spooled(int(seq), TelemetryClass(cls), int(samples), int(size), path)
        return kept

    def _save_on_host(self) -> None:
        path = self.spool.directory / ON_HOST
        rows = [[e.seq, e.cls.value, e.samples, e.size] for e in sorted(self.on_host.values(), key=lambda e: e.seq)]
        tmp = path.with_suffix(".tmp")
        with tmp.open("w") as out:
            out.write(json.dumps(rows))
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(path)

    @staticmethod
    def _name(entry: Spooled) -> str:
        return f"{entry.seq}.{entry.cls.value}.{entry.samples}"

    async def spill(self) -> int:
        """Cut off from the bus: move the spool's batches to the host, oldest first, while it takes them; the
        batches moved. Each is listed as on the host before it leaves the spool (a crash between the two sends
        it twice, and the aggregator drops the repeat), never the other way round."""
        self._host_away_since = None  # off the bus again: the wait for the host starts anew when it is back
        if self.relay is None or self._sealer is None:
            return 0
        if not self._reconciled:  # once per cut: what the host keeps that this DPU does not list goes
            try:
                known = {self._name(e) for e in self.on_host.values()}
                self._orphans.extend(n for n in await self.relay.names() if n not in known)
            except RelayUnavailable:
                return 0
            self._reconciled = True
        while self._orphans:
            try:
                await self.relay.delete(self._orphans[0])
            except RelayUnavailable:
                return 0
            self._orphans.pop(0)
        moved = 0
        while entries := self.spool.oldest(FORWARD_BATCHES):
            taken: list[Spooled] = []  # kept by the host: listed as on it (one write), then out of the spool
            try:
                for entry in entries:
                    name = self._name(entry)
                    blob = self._sealer.seal(name, self.spool.read(entry))
                    if not await self.relay.put(name, blob):
                        break  # the host's cap for this DPU: the rest stays here, under the spool's policy
                    self.on_host[entry.seq] = Spooled(entry.seq, entry.cls, entry.samples, len(blob), entry.path)
                    taken.append(entry)
            except (RelayUnavailable, OSError) as exc:
                log.debug("telemetry: the host relay is away (%s); batches stay on the DPU", exc)
            if taken:
                self._save_on_host()
                self.spool.forwarded(taken)
                moved += len(taken)
            if len(taken) < len(entries):
                return moved
        return moved

    async def _from_host(self, entry: Spooled) -> bytes | None:
        """A batch back from the host; None when it is lost (counted). RelayUnavailable: try again later."""
        assert self.relay is not None and self._sealer is not None
        name = self._name(entry)
        blob = await self.relay.get(name)
        if blob is not None:
            with contextlib.suppress(ValueError):
                return self._sealer.open(name, blob)
            log.warning("telemetry: the host's copy of %s does not open under this DPU's key: counted lost", name)
            with contextlib.suppress(RelayUnavailable):
                await self.relay.delete(name)
        else:
            log.warning("telemetry: the host no longer has %s: counted lost", name)
        self._lose(entry, "lost-on-host")
        return None

    def _lose(self, entry: Spooled, reason: str) -> None:
        self._lose_all([entry], reason)

    def _lose_all(self, entries: list[Spooled], reason: str) -> None:
        for entry in entries:
            self.spool.dropped[(reason, entry.cls)] += entry.samples
            self.on_host.pop(entry.seq, None)
        self._save_on_host()

    async def _next_batches(self) -> list[tuple[Spooled, bytes]]:
        """The next batches to publish, the host's and the spool's merged in the order they were produced."""
        local = self.spool.oldest(FORWARD_BATCHES)
        hosted = sorted(self.on_host.values(), key=lambda e: e.seq)[:FORWARD_BATCHES]
        merged = sorted([*local, *hosted], key=lambda e: e.seq)[:FORWARD_BATCHES]
        out: list[tuple[Spooled, bytes]] = []
        for entry in merged:
            if entry.seq not in self.on_host or self.on_host[entry.seq] is not entry:
                out.append((entry, self.spool.read(entry)))
                continue
            try:
                data = await self._from_host(entry)
            except RelayUnavailable as exc:
                now = time.monotonic()
                self._host_away_since = self._host_away_since or now
                if now - self._host_away_since < HOST_WAIT_SECONDS:
                    log.debug("telemetry: waiting for the host relay (%s)", exc)
                    break  # what is older than the rest stays first: send nothing newer yet
                log.warning("telemetry: the host relay has been away %.0fs: %d batches on it counted lost",
                            HOST_WAIT_SECONDS, len(self.on_host))  # fmt: skip
                self._lose_all(list(self.on_host.values()), "host-unreachable")
                self._host_away_since = None
                break
            self._host_away_since = None
            if data is not None:
                out.append((entry, data))
        return out

    async def _forwarded(self, sent: list[tuple[Spooled, bytes]]) -> None:
        local = [e for e, _ in sent if self.on_host.get(e.seq) is not e]
        self.spool.forwarded(local)
        hosted = [e for e, _ in sent if self.on_host.get(e.seq) is e]
        for entry in hosted:
            self.on_host.pop(entry.seq, None)
        if hosted:
            self._save_on_host()
            assert self.relay is not None
            for entry in hosted:  # the host's copy is ours to remove; one left behind is only the host's disk
                with contextlib.suppress(RelayUnavailable):
                    await self.relay.delete(self._name(entry))

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
            await self.spill()
            return 0
        except Exception as exc:
            log.debug("telemetry bus unreachable: %s", exc)
            await self._disconnect()
            await self.spill()
            return 0
        if nc is None or self._bus is None:
            await self.spill()
            return 0
        prefix = self._bus.subjectPrefix
        sent = 0
        try:
            while True:
                batches = await self._next_batches()
                if not batches:
                    break
                for entry, data in batches:
                    await nc.publish(f"{prefix}.{entry.cls.value}", data)
                await nc.flush(timeout=2)
                await self._forwarded(batches)
                self._reconciled = False
                for entry, _ in batches:
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
        if self.relay is not None:
            await self.relay.aclose()

    def status(self) -> dict[str, Any]:
        return self.accounting().model_dump()


async def _first(*events: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
