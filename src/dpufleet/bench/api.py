"""`dpufleet bench api`: creates, lists and watches DPU objects through the real HTTP API.

Phases, all in one run so the figures compare:
1. baseline: creates straight into a store (same backend, this process) — the cost floor;
2. creates through the API server (its own process) from concurrent clients;
3. list latency of all objects;
4. watch latency: N watchers follow DPUs while paced status updates are made; latency is
   from the moment the update request is sent to the moment each watcher reads the event
   (an upper bound: it includes the update's own round trip).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson

from ..store.store import Store, default_sqlite_url
from .harness import RunningServer, bench_console, percentile, result_table, server_process
from .rawhttp import RawConnection

BASE = "/apis/dpufleet.io/v1alpha1"


def _dpu(i: int, prefix: str = "dpu") -> dict[str, object]:
    return {
        "kind": "DPU",
        "metadata": {"name": f"{prefix}-{i:06d}", "labels": {"rack": f"r{i % 40}", "bench": "api"}},
        "spec": {"hostRef": f"host-{i // 2:06d}", "serialNumber": f"MT2402X{i:05d}"},
    }


@dataclass
class APIBenchResult:
    objects: int
    watchers: int
    store_creates_per_s: float = 0.0
    api_creates_per_s: float = 0.0
    list_p50_s: float = 0.0
    list_max_s: float = 0.0
    watch_p50_ms: float = 0.0
    watch_p99_ms: float = 0.0
    watch_events: int = 0
    watch_missed: int = 0
    backend: str = "sqlite"
    errors: list[str] = field(default_factory=list)

    def figures(self) -> dict[str, object]:
        """The result as `--json` prints it."""
        return {
            "bench": "api",
            "objects": self.objects,
            "watchers": self.watchers,
            "backend": self.backend,
            "store_creates_per_second": self.store_creates_per_s,
            "api_creates_per_second": self.api_creates_per_s,
            "api_overhead_ratio": self.store_creates_per_s / max(self.api_creates_per_s, 1e-9),
            "list_seconds_p50": self.list_p50_s,
            "list_seconds_max": self.list_max_s,
            "watch_latency_ms_p50": self.watch_p50_ms,
            "watch_latency_ms_p99": self.watch_p99_ms,
            "watch_events_delivered": self.watch_events,
            "watch_events_missed": self.watch_missed,
            "errors": self.errors,
        }


def store_baseline(objects: int, db_url: str | None) -> float:
    with tempfile.TemporaryDirectory(prefix="dpufleet-bench-store-") as tmp:
        store = Store.open(db_url or default_sqlite_url(Path(tmp)))
        try:
            start = time.perf_counter()
            for i in range(objects):
                store.create(_dpu(i, "base"))
            return objects / (time.perf_counter() - start)
        finally:
            store.close()


async def api_creates(server: RunningServer, objects: int, concurrency: int) -> tuple[float, list[str]]:
    errors: list[str] = []
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    bodies = [orjson.dumps(_dpu(i)) for i in range(objects)]
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        conn = await RawConnection.open(host, int(port), server.token)
        try:
            while next_index < objects:
                i = next_index
                next_index += 1
                status, payload = await conn.request("POST", f"{BASE}/projects/default/dpus", bodies[i])
                if status != 201 and len(errors) < 10:
                    errors.append(f"create {i}: {status} {payload[:200]!r}")
        finally:
            await conn.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return objects / (time.perf_counter() - start), errors


async def list_latency(server: RunningServer, objects: int, rounds: int = 5) -> list[float]:
    timings = []
    async with httpx.AsyncClient(base_url=server.url, headers=server.client_headers(), timeout=60) as c:
        for _ in range(rounds):
            start = time.perf_counter()
            resp = await c.get(f"{BASE}/dpus")
            items = orjson.loads(resp.content)["items"]
            timings.append(time.perf_counter() - start)
            if len(items) != objects:
                raise RuntimeError(f"list returned {len(items)} objects, expected {objects}")
    return timings


async def watch_latency(server: RunningServer, watchers: int, updates: int, rate: float) -> tuple[list[float], int]:
    """Latencies (s) of every event at every watcher, and how many expected events never arrived."""
    sent: dict[str, float] = {}
    latencies: list[float] = []
    received = [0] * watchers
    ready = asyncio.Event()
    connected = 0
    limits = httpx.Limits(max_connections=watchers + 8)
    async with httpx.AsyncClient(
        base_url=server.url, headers=server.client_headers(), limits=limits, timeout=httpx.Timeout(30, read=60)
    ) as c:
        rv = orjson.loads((await c.get(f"{BASE}/dpus?labelSelector=watched%3Dyes")).content)["metadata"][
            "resourceVersion"
        ]

        async def watcher(index: int) -> None:
            nonlocal connected
            url = f"{BASE}/projects/default/dpus?watch=true&resourceVersion={rv}"
            async with c.stream("GET", url) as resp:
                connected += 1
                if connected == watchers:
                    ready.set()
                async for line in resp.aiter_lines():
                    if not line:
                        continue
                    event = orjson.loads(line)
                    if event["type"] != "MODIFIED":
                        continue
                    marker = event["object"]["status"].get("phase")
                    if marker in sent:
                        latencies.append(time.perf_counter() - sent[marker])
                        received[index] += 1
                        if received[index] >= updates:
                            return

        tasks = [asyncio.create_task(watcher(i)) for i in range(watchers)]
        await asyncio.wait_for(ready.wait(), 30)
        await asyncio.sleep(0.5)
        interval = 1.0 / rate
        for i in range(updates):
            marker = f"tick-{i}"
            sent[marker] = time.perf_counter()
            resp = await c.patch(
                f"{BASE}/projects/default/dpus/dpu-{i % 100:06d}/status",
                content=orjson.dumps({"status": {"phase": marker}}),
                headers={"content-type": "application/merge-patch+json"},
            )
            resp.raise_for_status()
            await asyncio.sleep(interval)
        _done, pending = await asyncio.wait(tasks, timeout=30)
        for task in pending:
            task.cancel()
        missed = watchers * updates - sum(received)
        return latencies, missed


def run_api_bench(
    objects: int = 10000,
    watchers: int = 100,
    db: str | None = None,
    concurrency: int = 32,
    updates: int = 300,
    rate: float = 50.0,
    as_json: bool = False,
) -> APIBenchResult:
    console = bench_console(as_json)
    result = APIBenchResult(objects=objects, watchers=watchers, backend="postgresql" if db else "sqlite")
    console.print(
        f"[bold]bench api[/]: {objects} DPUs, {watchers} watchers, backend {'PostgreSQL' if db else 'SQLite'}"
    )
    console.print("  baseline: creates straight into the store ...")
    result.store_creates_per_s = store_baseline(objects, None if db is None else db)
    with server_process(db, controllers=False) as server:
        console.print(f"  creates through the API ({concurrency} concurrent clients) ...")
        result.api_creates_per_s, result.errors = asyncio.run(api_creates(server, objects, concurrency))
        console.print("  list latency ...")
        timings = asyncio.run(list_latency(server, objects))
        result.list_p50_s, result.list_max_s = percentile(timings, 50), max(timings)
        console.print(f"  watch latency ({watchers} watchers, {updates} updates at {rate:g}/s) ...")
        lat, missed = asyncio.run(watch_latency(server, watchers, min(updates, objects), rate))
        result.watch_events, result.watch_missed = len(lat), missed
        result.watch_p50_ms, result.watch_p99_ms = percentile(lat, 50) * 1000, percentile(lat, 99) * 1000
    table = result_table("api")
    table.add_row("creates/s straight into the store", f"{result.store_creates_per_s:,.0f}", "")
    table.add_row("creates/s through the API", f"{result.api_creates_per_s:,.0f}", ">= 1,000")
    table.add_row(
        "API overhead (store rate / API rate)",
        f"{result.store_creates_per_s / max(result.api_creates_per_s, 1e-9):.2f}x",
        "",
    )
    table.add_row(f"list {objects} objects p50", f"{result.list_p50_s * 1000:,.0f} ms", "")
    table.add_row(f"list {objects} objects max", f"{result.list_max_s * 1000:,.0f} ms", "<= 1,000 ms")
    table.add_row(f"watch event latency p50 ({watchers} watchers)", f"{result.watch_p50_ms:,.1f} ms", "")
    table.add_row(f"watch event latency p99 ({watchers} watchers)", f"{result.watch_p99_ms:,.1f} ms", "<= 100 ms")
    table.add_row("watch events delivered / missed", f"{result.watch_events:,} / {result.watch_missed}", "0 missed")
    console.print(table)
    for error in result.errors:
        console.print(f"[red]error[/]: {error}")
    return result
