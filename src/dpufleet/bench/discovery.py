"""`dpufleet bench discovery`: discover and fully inventory N emulated BMCs with real latency.

The control plane runs as its own process (API server + controllers, SQLite).
This process serves the emulated BMCs (each answering after `latency` seconds,
with a few request slots, as real BMCs have), registers a Credential and a
Discovery through the API, and times until every DPU behind every BMC carries
its full Redfish inventory (identity, firmware versions, capabilities).
"""

from __future__ import annotations

import asyncio
import resource
import time
from dataclasses import dataclass

import httpx
import orjson
from rich.console import Console

from ..sim.runner import SimOptions, SimRunning, register
from .harness import bench_console, peak_rss_mib, result_table, server_process

PROFILES = ["nvidia-bluefield-3", "intel-ipu-e2100", "amd-pensando-dsc", "marvell-octeon-10"]


@dataclass
class DiscoveryBenchResult:
    bmcs: int
    latency: float
    seconds: float
    inventoried: int
    bmcs_per_minute: float
    server_peak_rss_mib: float
    sim_peak_rss_mib: float

    def figures(self) -> dict[str, object]:
        """The result as `--json` prints it."""
        return {
            "bench": "discovery",
            "bmcs": self.bmcs,
            "latency_seconds": self.latency,
            "bmcs_inventoried": self.inventoried,
            "seconds_total": self.seconds,
            "bmcs_per_minute": self.bmcs_per_minute,
            "server_peak_rss_mib": self.server_peak_rss_mib,
            "sim_peak_rss_mib": self.sim_peak_rss_mib,
        }


def _peak_rss_mib(pid: int) -> float:
    """The control plane's peak memory: the server's and its controller process's peaks, summed."""
    return peak_rss_mib(pid)


async def _run(bmcs: int, latency: float, timeout: float, console: Console) -> DiscoveryBenchResult:
    from ..sim.bmc import BmcLimits
    from ..sim.fleet import build_fleet, serve_fleet

    with server_process(None, controllers=True) as server:
        password = "bench-" + str(time.time_ns())
        fleet = await asyncio.to_thread(
            build_fleet,
            bmcs,
            1,
            PROFILES,
            42,
            None,
            password_for=lambda _b: password,
            limits=BmcLimits(latency_seconds=latency, max_concurrent=4, queue_when_busy=True),
        )
        servers = await serve_fleet(fleet)
        running = SimRunning(fleet, servers, "fleetadmin", password)
        try:
            async with httpx.AsyncClient(base_url=server.url, headers=server.client_headers(), timeout=60) as http:
                start = time.perf_counter()
                await register(http, running, SimOptions(tls=False))
                done = 0
                deadline = start + timeout
                last_print = 0.0
                while time.perf_counter() < deadline:
                    listing = await http.get("/apis/dpufleet.io/v1alpha1/dpus")
                    listing.raise_for_status()
                    items = orjson.loads(listing.content)["items"]  # the emulator shares this process: parse cheaply
                    done = sum(
                        1
                        for d in items
                        if d["status"].get("firmware") and d["status"].get("capabilities", {}).get("accelerators")
                    )
                    if time.perf_counter() - last_print > 5:
                        last_print = time.perf_counter()
                        console.print(f"  {done}/{bmcs} inventoried after {time.perf_counter() - start:.1f}s")
                    if done >= bmcs:
                        break
                    await asyncio.sleep(0.25)
                elapsed = time.perf_counter() - start
            server_rss = _peak_rss_mib(server.process.pid)
        finally:
            await servers.stop()
    sim_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return DiscoveryBenchResult(bmcs, latency, elapsed, done, done / elapsed * 60, server_rss, sim_rss)


def run_discovery_bench(
    bmcs: int = 500, latency: float = 0.3, timeout: float = 600.0, as_json: bool = False
) -> DiscoveryBenchResult:
    console = bench_console(as_json)
    console.print(f"[bold]bench discovery[/]: {bmcs} emulated BMCs, {latency:g}s per request, 4 request slots each")
    result = asyncio.run(_run(bmcs, latency, timeout, console))
    table = result_table("discovery")
    table.add_row("BMCs discovered and fully inventoried", f"{result.inventoried} / {result.bmcs}", "all")
    table.add_row("time", f"{result.seconds:.1f} s", "")
    table.add_row("BMCs per minute", f"{result.bmcs_per_minute:,.0f}", ">= 1,000")
    table.add_row("control plane peak memory (RSS)", f"{result.server_peak_rss_mib:,.0f} MiB", "")
    table.add_row("emulator + bench peak memory (RSS)", f"{result.sim_peak_rss_mib:,.0f} MiB", "")
    console.print(table)
    return result
