"""`dpufleet bench telemetry`: agents -> bus -> aggregator -> exposition, at fleet size, on this machine.

The control plane runs as its own process with its embedded nats-server (as `dpufleet server` does); its
controllers are off (nothing here needs them). The bench creates N DPU objects asking for the load class,
which authorizes each on the bus under its own subjects (the change feed), and opens one NATS connection
per DPU with that DPU's own credentials, derived from the data dir's bus secret as the server derives them.

Three measurements, one after another:

- **Ingest.** Every DPU publishes ``rounds`` batches of ``series`` samples as fast as the aggregator takes
  them, at most ``WINDOW_ROUNDS`` rounds ahead of it (so the bus and the subscription's pending queue stay
  bounded); the clock runs from the first publish until the aggregator's count of samples taken in reaches
  every sample sent. Then one scrape of the fleet exposition (``/telemetry/v1/federate``) must show every
  DPU's every series at the last round's value.
- **Latency.** Each DPU publishes once per ``interval`` (10 s, staggered), each batch stamped when it is
  sent; the aggregator's ingest-lag histogram (batch's newest sample taken -> taken in) over that window
  gives the p50 and p99 (interpolated within the histogram's buckets, as Prometheus' histogram_quantile does).
- **The agent.** Meanwhile one real agent telemetry loop (agent/telemetry: every plugin, every class, on an
  emulated BlueField-3's OS root, forwarding to the same bus with its own credentials) runs in a child
  process at the same interval; its CPU share and resident memory are read from /proc over that window.

No publish and no request is retried: a failure ends the bench with one line.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from nats.aio.client import Client as NATS

from ..api.telemetry import CLASSES_ANNOTATION, INTERVAL_ANNOTATION, TelemetryClass, encode_batch
from ..server.telemetry_bus import BusCredentials
from ..sim.osroot import materialise_dpu_root
from ..sim.profiles import get_profile
from .harness import bench_console, cpu_seconds, peak_rss_mib, result_table, server_process

BASE = "/apis/dpufleet.io/v1alpha1/projects/default"
WINDOW_ROUNDS = 2  # rounds published ahead of what the aggregator has taken in
AGENT_SERIAL = "BENCHAGENT0"
METRIC = "system.network.io"  # the bench's series: interfaces x directions of one OTel metric
PROM_METRIC = "system_network_io_bytes"


@dataclass
class TelemetryBenchResult:
    dpus: int
    series: int
    rounds: int
    samples_sent: int = 0
    samples_ingested: int = 0
    ingest_seconds: float = 0.0
    federate_seconds: float = 0.0
    federate_series: int = 0
    federate_stale: int = 0
    latency_batches: int = 0
    latency_p50_ms: float = float("nan")
    latency_p99_ms: float = float("nan")
    agent_interval_seconds: float = 0.0
    agent_series: int = 0
    agent_collections: int = 0
    agent_cpu_share_pct: float = float("nan")
    agent_rss_mib: float = float("nan")
    agent_peak_rss_mib: float = float("nan")
    agent_accounted: bool = False
    server_cpu_seconds: float = 0.0
    server_peak_rss_mib: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def samples_per_second(self) -> float:
        return self.samples_ingested / self.ingest_seconds if self.ingest_seconds > 0 else 0.0

    def figures(self) -> dict[str, Any]:
        return {
            "bench": "telemetry",
            "dpus": self.dpus,
            "series_per_dpu": self.series,
            "rounds": self.rounds,
            "samples_sent": self.samples_sent,
            "samples_ingested": self.samples_ingested,
            "ingest_seconds": self.ingest_seconds,
            "samples_per_second": self.samples_per_second,
            "federate_seconds": self.federate_seconds,
            "federate_series": self.federate_series,
            "latency_batches": self.latency_batches,
            "latency_p50_ms": self.latency_p50_ms,
            "latency_p99_ms": self.latency_p99_ms,
            "agent_interval_seconds": self.agent_interval_seconds,
            "agent_series": self.agent_series,
            "agent_collections": self.agent_collections,
            "agent_cpu_share_pct": self.agent_cpu_share_pct,
            "agent_rss_mib": self.agent_rss_mib,
            "agent_peak_rss_mib": self.agent_peak_rss_mib,
            "server_cpu_seconds": self.server_cpu_seconds,
            "server_peak_rss_mib": self.server_peak_rss_mib,
            "errors": self.errors,
        }

    def problem(self) -> str | None:
        if self.errors:
            return "; ".join(self.errors[:3])
        return None


def quantile(q: float, bounds: list[float], counts: list[int]) -> float:
    """The q-quantile of a histogram (per-bucket counts, the last one +Inf), interpolated linearly inside its
    bucket as Prometheus' histogram_quantile does; nan when it is empty."""
    total = sum(counts)
    if total == 0:
        return float("nan")
    rank = q * total
    seen = 0
    for index, count in enumerate(counts):
        if seen + count >= rank and count > 0:
            if index >= len(bounds):  # the +Inf bucket: the largest finite bound, as Prometheus answers
                return bounds[-1]
            low = bounds[index - 1] if index > 0 else 0.0
            return low + (bounds[index] - low) * (rank - seen) / count
        seen += count
    return bounds[-1]


def _samples(series: int, taken_ns: int, value: float) -> bytes:
    """One DPU's batch of ``series`` load samples, encoded as agents encode theirs, with an empty serial and
    seq 0 for ``_batch`` to fill in (so a round is encoded once, not once per DPU)."""
    interfaces = (series + 1) // 2
    items = [
        {
            "name": METRIC,
            "unit": "By",
            "value": value,
            "time": taken_ns,
            "attributes": {
                "network.interface.name": f"p{i % interfaces}",
                "network.io.direction": "receive" if i < interfaces else "transmit",
            },
        }
        for i in range(series)
    ]
    return encode_batch("", 0, TelemetryClass.LOAD, items)


_TEMPLATE = b'{"serial":"","seq":0,'


def _batch(serial: str, seq: int, samples: bytes) -> bytes:
    """``samples`` (from ``_samples``) as DPU ``serial``'s batch ``seq``: the bytes encode_batch makes for it."""
    assert samples.startswith(_TEMPLATE)
    return b'{"serial":"%s","seq":%d,%s' % (serial.encode(), seq, samples[len(_TEMPLATE) :])


def serial_of(index: int) -> str:
    return f"BENCHTM{index:06d}"


AGENT_SCRIPT = """
import asyncio, json, sys, time
from pathlib import Path
from dpufleet.agent.telemetry.collector import Telemetry
from dpufleet.api.telemetry import BusAccess, TelemetryAssignment, TelemetryClass

work, serial, bus, interval = Path(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])
tm = Telemetry(work / "root", serial, work / "spool")
tm.assign(TelemetryAssignment(classes=list(TelemetryClass), intervalSeconds=interval, bus=BusAccess.model_validate_json(bus)))

async def main():
    stop = asyncio.Event()
    task = asyncio.create_task(tm.run(stop))
    while tm.collections < 1:
        await asyncio.sleep(0.05)
    series = sum(tm.produced.values())
    print(json.dumps({"ready": True, "series": series}), flush=True)
    await asyncio.to_thread(sys.stdin.readline)  # the bench says when (or its end closes the pipe)
    stop.set()
    await task
    acc = tm.accounting()
    print(json.dumps({"collections": tm.collections, "produced": sum(acc.produced.values()),
                      "delivered": sum(acc.delivered.values()), "buffered": sum(acc.buffered.values()),
                      "series": series}), flush=True)

asyncio.run(main())
"""


def _rss(pid: int) -> tuple[float, float]:
    rss = hwm = float("nan")
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) / 1024
    return rss, hwm


class _Bench:
    def __init__(self, url: str, headers: dict[str, str], data_dir: Path, result: TelemetryBenchResult) -> None:
        self.url = url
        self.headers = headers
        self.data_dir = data_dir
        self.result = result
        self.clients: list[NATS] = []
        self.seq = 0

    async def aggregator(self, http: httpx.AsyncClient) -> dict[str, Any]:
        resp = await http.get("/telemetry/v1/aggregator")
        resp.raise_for_status()
        figures: dict[str, Any] = resp.json()
        return figures

    async def create_dpus(self, http: httpx.AsyncClient, interval: float) -> None:
        gate = asyncio.Semaphore(16)

        async def create(serial: str, classes: str) -> None:
            doc = {
                "kind": "DPU",
                "metadata": {
                    "name": f"dpu-{serial.lower()}",
                    "annotations": {CLASSES_ANNOTATION: classes, INTERVAL_ANNOTATION: f"{interval:g}"},
                },
                "spec": {"serialNumber": serial},
            }
            async with gate:
                resp = await http.post(f"{BASE}/dpus", json=doc)
            if resp.status_code != 201:
                raise RuntimeError(f"creating DPU {serial}: HTTP {resp.status_code}: {resp.text[:200]}")

        every = ",".join(c.value for c in TelemetryClass)
        await asyncio.gather(
            *(create(serial_of(i), "load") for i in range(self.result.dpus)), create(AGENT_SERIAL, every)
        )
        deadline = time.monotonic() + 60
        while True:
            figures = await self.aggregator(http)
            if (figures.get("authorizedDPUs") or 0) >= self.result.dpus + 1 and figures.get(
                "busReloadPending"
            ) is False:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the bus authorized {figures.get('authorizedDPUs')} of {self.result.dpus + 1} DPUs within 60 s"
                )
            await asyncio.sleep(0.1)

    async def connect(self, bus_url: str) -> None:
        credentials = BusCredentials.load_or_create(self.data_dir / "telemetry")
        gate = asyncio.Semaphore(50)

        async def quiet(_exc: Exception) -> None:
            return None

        async def one(index: int) -> NATS:
            serial = serial_of(index)
            nc = NATS()
            async with gate:
                await nc.connect(
                    bus_url, user=credentials.dpu_user(serial), password=credentials.dpu_password("default", serial),
                    allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=10, error_cb=quiet,
                    name=f"bench {serial}", pending_size=64 * 1024 * 1024, flush_timeout=30,
                )  # fmt: skip
            return nc

        self.clients = list(await asyncio.gather(*(one(i) for i in range(self.result.dpus))))

    async def ingest(self, http: httpx.AsyncClient) -> None:
        r = self.result
        per_round = r.dpus * r.series
        start_samples = int((await self.aggregator(http))["samples"])
        taken_ns = time.time_ns()
        began = time.perf_counter()
        for round_index in range(r.rounds):
            samples = _samples(r.series, taken_ns, float(round_index + 1))
            self.seq += 1
            for index, nc in enumerate(self.clients):
                serial = serial_of(index)
                await nc.publish(f"dpufleet.tm.default.{serial}.load", _batch(serial, self.seq, samples))
            r.samples_sent += per_round
            await asyncio.gather(*(nc.flush(timeout=30) for nc in self.clients))
            behind = r.samples_sent - WINDOW_ROUNDS * per_round
            await self._until(http, start_samples + behind, began, final=False)
        r.samples_ingested = await self._until(http, start_samples + r.samples_sent, began, final=True) - start_samples
        r.ingest_seconds = time.perf_counter() - began

    async def _until(self, http: httpx.AsyncClient, target: int, began: float, final: bool) -> int:
        """Wait until the aggregator has taken in `target` samples (in all); what it has taken."""
        last, last_change = -1, time.perf_counter()
        while True:
            taken = int((await self.aggregator(http))["samples"])
            if taken >= target:
                return taken
            now = time.perf_counter()
            if taken != last:
                last, last_change = taken, now
            elif now - last_change > 30:
                missing = target - taken
                raise RuntimeError(
                    f"the aggregator took in nothing for 30 s, {missing:,} samples short "
                    f"({now - began:.0f} s into the ingest{', at the end' if final else ''}){self._bus_says()}"
                )
            await asyncio.sleep(0.005)

    def _bus_says(self) -> str:
        """What nats-server logged of trouble (a slow consumer cut off, a refused client), for the error."""
        try:
            lines = (self.data_dir / "telemetry" / "bus" / "nats.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        trouble = [line for line in lines if "[ERR]" in line or "[WRN]" in line]
        return f"; nats-server: {trouble[-1]} ({len(trouble)} such lines)" if trouble else ""

    async def federate(self, http: httpx.AsyncClient) -> None:
        r = self.result
        began = time.perf_counter()
        resp = await http.get("/telemetry/v1/federate", timeout=120)
        resp.raise_for_status()
        r.federate_seconds = time.perf_counter() - began
        last = float(r.rounds)
        for line in resp.text.splitlines():
            if line.startswith(PROM_METRIC + "{") and 'dpu="dpu-benchtm' in line:
                r.federate_series += 1
                if float(line.rsplit(" ", 2)[1]) != last:
                    r.federate_stale += 1
        if r.federate_series != r.dpus * r.series or r.federate_stale:
            r.errors.append(
                f"the exposition holds {r.federate_series:,} of {r.dpus * r.series:,} series, "
                f"{r.federate_stale:,} of them not at the last value"
            )

    async def paced(self, interval: float, seconds: float) -> None:
        """Each DPU publishes once per interval, staggered evenly, each batch stamped as it is sent."""
        began = time.monotonic()
        n = len(self.clients)
        slot = interval / max(1, n)
        sent = 0
        while True:
            due = int((time.monotonic() - began) / slot)
            if due * slot >= seconds:
                break
            while sent <= due and sent * slot < seconds:
                index = sent % n
                if index == 0:
                    self.seq += 1
                serial = serial_of(index)
                samples = _samples(self.result.series, time.time_ns(), float(self.seq))
                await self.clients[index].publish(
                    f"dpufleet.tm.default.{serial}.load", _batch(serial, self.seq, samples)
                )
                sent += 1
            await asyncio.sleep(min(slot, 0.01))
        await asyncio.gather(*(nc.flush(timeout=30) for nc in self.clients))
        self.result.latency_batches = sent

    async def close(self) -> None:
        for nc in self.clients:
            await nc.close()


def _agent(work: Path, bus: str, data_dir: Path, interval: float) -> subprocess.Popen[str]:
    credentials = BusCredentials.load_or_create(data_dir / "telemetry")
    access = credentials.access(bus, "default", AGENT_SERIAL)
    # the emulated DPU's files are laid out here, so the child holds only the telemetry loop
    materialise_dpu_root(get_profile("nvidia-bluefield-3"), AGENT_SERIAL, 7, work / "root")
    return subprocess.Popen(
        [sys.executable, "-c", AGENT_SCRIPT, str(work), AGENT_SERIAL, access.model_dump_json(), str(interval)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip


def run_telemetry_bench(
    dpus: int, series: int, rounds: int, interval: float, latency_seconds: float, *, as_json: bool = False
) -> TelemetryBenchResult:
    console = bench_console(as_json)
    result = TelemetryBenchResult(dpus, series, rounds, agent_interval_seconds=interval)
    with server_process(controllers=False, timeout=60) as server, tempfile.TemporaryDirectory() as tmp:
        pid = server.process.pid

        async def scenario() -> None:
            async with httpx.AsyncClient(base_url=server.url, headers=server.client_headers(), timeout=30) as http:
                bench = _Bench(server.url, server.client_headers(), server.data_dir, result)
                console.print(f"creating {dpus:,} DPUs asking for telemetry (not timed)")
                await bench.create_dpus(http, interval)
                bus = str((await bench.aggregator(http))["bus"])
                await bench.connect(bus)
                try:
                    console.print(f"ingest: {rounds} rounds of {dpus:,} batches of {series} samples")
                    await bench.ingest(http)
                    await bench.federate(http)
                    console.print(
                        f"latency and the agent: {latency_seconds:g} s at one batch per DPU per {interval:g} s"
                    )
                    agent = _agent(Path(tmp), bus, server.data_dir, interval)
                    try:
                        assert agent.stdout is not None
                        ready = json.loads(await asyncio.to_thread(agent.stdout.readline) or "{}")
                        if not ready.get("ready"):
                            raise RuntimeError("the agent's telemetry loop did not start")
                        result.agent_series = int(ready["series"])
                        cpu0, t0 = cpu_seconds(agent.pid), time.monotonic()
                        before = (await bench.aggregator(http))["lagSeconds"]
                        await bench.paced(interval, latency_seconds)
                        await asyncio.sleep(1.0)  # the last paced batches land
                        after = (await bench.aggregator(http))["lagSeconds"]
                        cpu1, t1 = cpu_seconds(agent.pid), time.monotonic()
                        result.agent_rss_mib, result.agent_peak_rss_mib = _rss(agent.pid)
                        result.agent_cpu_share_pct = 100 * (cpu1 - cpu0) / (t1 - t0)
                        assert agent.stdin is not None
                        agent.stdin.write("stop\n")
                        agent.stdin.close()
                        end = json.loads(await asyncio.to_thread(agent.stdout.readline) or "{}")
                        result.agent_collections = int(end.get("collections", 0))
                        result.agent_accounted = end.get("produced") == end.get("delivered", 0) + end.get("buffered", 0)
                        if not result.agent_accounted:
                            result.errors.append(f"the agent's accounting does not add up: {end}")
                    finally:
                        if agent.poll() is None:
                            agent.kill()
                        agent.wait()
                    counts = [a - b for a, b in zip(after["counts"], before["counts"], strict=True)]
                    bounds = [float(b) for b in after["buckets"][:-1]]
                    result.latency_p50_ms = 1000 * quantile(0.5, bounds, counts)
                    result.latency_p99_ms = 1000 * quantile(0.99, bounds, counts)
                finally:
                    await bench.close()

        asyncio.run(scenario())
        result.server_cpu_seconds = cpu_seconds(pid)
        result.server_peak_rss_mib = peak_rss_mib(pid)
    _print(console, result)
    return result


def _print(console: Any, r: TelemetryBenchResult) -> None:
    table = result_table("telemetry")
    table.add_row("DPUs x series", f"{r.dpus:,} x {r.series}", "")
    table.add_row(
        "samples ingested per second (agents -> bus -> aggregator)",
        f"{r.samples_per_second:,.0f}",
        ">= 500,000",
    )
    table.add_row("  samples", f"{r.samples_ingested:,} in {r.ingest_seconds:.1f} s", "")
    table.add_row("fleet exposition scrape", f"{r.federate_series:,} series in {r.federate_seconds:.2f} s", "")
    table.add_row("ingest latency p50 / p99", f"{r.latency_p50_ms:.1f} / {r.latency_p99_ms:.1f} ms", "")
    table.add_row("  over batches", f"{r.latency_batches:,}", "")
    table.add_row(
        f"agent CPU at a {r.agent_interval_seconds:g} s interval ({r.agent_series} series)",
        f"{r.agent_cpu_share_pct:.2f}% of a core",
        "< 1%",
    )
    table.add_row(
        "agent memory (resident, peak)", f"{r.agent_rss_mib:.1f} MiB, {r.agent_peak_rss_mib:.1f} MiB", "< 40 MiB"
    )
    table.add_row(
        "control plane CPU, peak memory", f"{r.server_cpu_seconds:.1f} s, {r.server_peak_rss_mib:.0f} MiB", ""
    )
    console.print(table)


def targets_met(median: Mapping[str, float]) -> bool:
    return (
        median.get("samples_per_second", 0) >= 500_000
        and median.get("agent_cpu_share_pct", 100) < 1.0
        and median.get("agent_peak_rss_mib", 1e9) < 40
    )
