"""`dpufleet bench provision`: provision N emulated DPUs from Available to Ready, hardware delays at zero.

The control plane (API server + controllers, SQLite) runs as its own process, polling the BMCs
every `poll` seconds (by default the controller's own interval, 3 s, as users run it: the BMCs push
their events, which end the waits; the polls are the fallback). This process serves N emulated BMCs
(one DPU each) whose updates and boots take no time (time_scale 0) and answer at once (latency 0), so what is measured is the control
plane: it discovers and inventories the fleet (not timed), an image is uploaded, and then every
DPU's spec.image is set through the API, as a user would. The clock runs from the first of those
writes until every DPU is Ready. The time spent in each phase comes from the server's own
`dpufleet_dpu_phase_seconds` histogram (mean per DPU): with instant hardware it is the control
plane's overhead (and the poll pause) per phase.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from rich.console import Console

from ..sim.runner import SimOptions, SimRunning, register
from .discovery import _peak_rss_mib
from .harness import add_cost_rows, bench_console, cpu_seconds, result_table, server_process

BASE = "/apis/dpufleet.io/v1alpha1/projects/default"
PROFILES = ["nvidia-bluefield-3", "intel-ipu-e2100", "amd-pensando-dsc", "marvell-octeon-10"]
PHASES = ["Available", "PreparingHost", "StagingImage", "Installing", "Rebooting", "Configuring"]
PAYLOAD = b"dpufleet bench provision: emulated OS image\n" * 256


@dataclass
class ProvisionBenchResult:
    dpus: int
    poll_seconds: float = 0.0  # the provisioner's poll interval
    seconds: float = 0.0
    ready: int = 0
    failed: int = 0
    discovery_seconds: float = 0.0
    dpus_per_second: float = 0.0
    phase_mean_ms: dict[str, float] = field(default_factory=dict)
    simple_updates: int = 0
    redfish_requests: int = 0  # served by the emulated BMCs from the first PATCH until all were Ready
    top_requests: list[tuple[str, int]] = field(default_factory=list)  # the most frequent, over the fleet
    server_peak_rss_mib: float = 0.0
    server_cpu_seconds: float = 0.0  # the control plane's CPU time over the timed part
    errors: list[str] = field(default_factory=list)

    def figures(self) -> dict[str, object]:
        """The result as `--json` prints it."""
        per = max(1, self.dpus)
        return {
            "bench": "provision",
            "dpus": self.dpus,
            "poll_seconds": self.poll_seconds,
            "dpus_ready": self.ready,
            "dpus_failed": self.failed,
            "seconds_total": self.seconds,
            "dpus_per_second": self.dpus_per_second,
            "discovery_seconds": self.discovery_seconds,
            "simple_update_requests": self.simple_updates,
            "phase_mean_ms": self.phase_mean_ms,
            "server_peak_rss_mib": self.server_peak_rss_mib,
            "server_cpu_seconds": self.server_cpu_seconds,
            "server_cpu_ms_per_dpu": 1000 * self.server_cpu_seconds / per,
            "redfish_requests": self.redfish_requests,
            "redfish_requests_per_dpu": self.redfish_requests / per,
            "redfish_requests_top": {path: count for path, count in self.top_requests},
            "errors": self.errors,
        }


def controller_env(poll: float | None) -> dict[str, str]:
    """The control plane's environment for a fleet bench: the provisioner's poll interval only when the
    bench was given one (else the controller's default, ProvisioningConfig.poll_seconds, as users run it),
    and a short first retry pause (0.5 s, not 10 s), which only a failed step waits."""
    env = {"DPUFLEET_PROVISIONING_RETRY_SECONDS": "0.5"}
    if poll is not None:
        env["DPUFLEET_PROVISIONING_POLL_SECONDS"] = str(poll)
    return env


def effective_poll(poll: float | None) -> float:
    """The provisioner's poll interval in the bench's server: the one given, else the controller's own
    (ProvisioningConfig.from_env: the server inherits this process's environment)."""
    from ..provisioning.machine import ProvisioningConfig

    return poll if poll is not None else ProvisioningConfig.from_env().poll_seconds


def poll_description(poll: float | None) -> str:
    """How the bench header says the provisioner polls."""
    if poll is not None:
        return f"the provisioner polls every {poll:g}s"
    return f"the provisioner polls every {effective_poll(None):g}s (the controller's default; BMC events end the waits)"


def _requests_by_path(fleet: Any) -> Counter[str]:
    """Redfish requests served so far, by method and path with the BMC's own ids folded ("GET /Systems/*")."""
    total: Counter[str] = Counter()
    for bmc in fleet.bmcs.values():
        for key, count in bmc.requests_by_path.items():
            method, _, path = key.partition(" ")
            folded = "/".join(part if i % 2 else ("*" if i > 1 else part) for i, part in enumerate(path.split("/")))
            total[f"{method} {folded}"] += count
    return total


def _transitions(metrics_text: str) -> dict[tuple[str, str], float]:
    """(from, to) -> count, from the Prometheus text of /metrics (dpufleet_dpu_phase_transitions_total)."""
    moves: dict[tuple[str, str], float] = {}
    for line in metrics_text.splitlines():
        if line.startswith("dpufleet_dpu_phase_transitions_total{"):
            labels, _, value = line.rpartition(" ")
            source = labels.split('from_phase="', 1)[1].split('"', 1)[0]
            target = labels.split('to_phase="', 1)[1].split('"', 1)[0]
            moves[(source, target)] = float(value)
    return moves


def reconciles_by_controller(metrics_text: str) -> dict[str, float]:
    """controller -> reconcile passes so far, from /metrics (dpufleet_controller_reconciles_total)."""
    passes: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if line.startswith("dpufleet_controller_reconciles_total{"):
            labels, _, value = line.rpartition(" ")
            controller = labels.split('controller="', 1)[1].split('"', 1)[0]
            passes[controller] = passes.get(controller, 0.0) + float(value)
    return passes


def _phase_means(metrics_text: str) -> dict[str, float]:
    """Mean seconds per phase (outcome=left) from the Prometheus text of /metrics."""
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if not line.startswith("dpufleet_dpu_phase_seconds_") or 'outcome="left"' not in line:
            continue
        name, _, value = line.rpartition(" ")
        phase = name.split('phase="', 1)[1].split('"', 1)[0]
        if name.startswith("dpufleet_dpu_phase_seconds_sum"):
            sums[phase] = float(value)
        elif name.startswith("dpufleet_dpu_phase_seconds_count"):
            counts[phase] = float(value)
    return {p: sums[p] / counts[p] for p in sums if counts.get(p)}


async def _dpu_phases(http: httpx.AsyncClient) -> dict[str, str]:
    resp = await http.get(f"{BASE}/dpus")
    resp.raise_for_status()
    return {
        d["metadata"]["name"]: str((d.get("status") or {}).get("phase") or "")
        for d in orjson.loads(resp.content)["items"]
    }


async def _inventoried(http: httpx.AsyncClient) -> list[str]:
    resp = await http.get(f"{BASE}/dpus")
    resp.raise_for_status()
    return [
        d["metadata"]["name"] for d in orjson.loads(resp.content)["items"] if (d.get("status") or {}).get("firmware")
    ]


async def discover_fleet(
    http: httpx.AsyncClient, running: SimRunning, dpus: int, timeout: float, console: Console
) -> tuple[list[str], float]:
    """Register the emulated fleet as an operator would and wait until every DPU is inventoried.

    Returns the DPU names and how long discovery took (benchmarks report it but do not time it)."""
    start = time.perf_counter()
    await register(http, running, SimOptions(tls=False))
    last_print = 0.0
    names: list[str] = []
    while len(names) < dpus:
        if time.perf_counter() - start > timeout:
            raise RuntimeError(f"only {len(names)} of {dpus} DPUs were inventoried in {timeout:g}s")
        await asyncio.sleep(_list_pause(dpus))
        names = await _inventoried(http)
        if time.perf_counter() - last_print > 5:
            last_print = time.perf_counter()
            console.print(f"  discovery: {len(names)}/{dpus} inventoried")
    await _settled(http, dpus, start + timeout, console)
    took = time.perf_counter() - start
    console.print(f"  discovery: {dpus} DPUs inventoried and subscribed to BMC events in {took:.1f}s (not timed)")
    return names, took


async def _settled(http: httpx.AsyncClient, dpus: int, deadline: float, console: Console) -> None:
    """Wait for the fleet's steady state before the clock starts, as in a fleet that has been running a
    while: every BMC's event subscription made and every DPU's first health look done (both are bursts
    of Redfish requests that happen once per BMC)."""
    while True:
        resp = await http.get(f"{BASE}/bmcs")
        resp.raise_for_status()
        subscribed = sum(
            1
            for b in orjson.loads(resp.content)["items"]
            if ((b.get("status") or {}).get("eventSubscription") or {}).get("state") in ("Subscribed", "NotSupported")
        )
        resp = await http.get(f"{BASE}/dpus")
        resp.raise_for_status()
        looked_at = sum(  # the health controller's first look (links found, a diagnosis) is done
            1
            for d in orjson.loads(resp.content)["items"]
            if any(c.get("type") == "Healthy" for c in (d.get("status") or {}).get("conditions") or [])
        )
        if subscribed >= dpus and looked_at >= dpus:
            return
        if time.perf_counter() > deadline:
            raise RuntimeError(
                f"the fleet did not settle: {subscribed}/{dpus} BMCs subscribed to events, "
                f"{looked_at}/{dpus} DPUs looked at by the health controller"
            )
        console.print(
            f"  settling: {subscribed}/{dpus} BMCs subscribed to events, {looked_at}/{dpus} DPUs health-checked"
        )
        await asyncio.sleep(_list_pause(dpus))


def _list_pause(dpus: int) -> float:
    """Seconds between two full listings of the fleet while waiting for it: listing 10,000 objects costs the
    server about a second, so a large fleet is listed less often (2 s for 1,000 DPUs, 20 s for 10,000)."""
    return max(1.0, dpus / 500)


async def publish_image(http: httpx.AsyncClient, name: str, version: str, payload: bytes) -> None:
    """Upload an OS payload to the repository and create the one-component Image naming it."""
    digest = hashlib.sha256(payload).hexdigest()
    (await http.put(f"/images/v1/blobs/sha256/{digest}", content=payload)).raise_for_status()
    component = {"name": "os", "type": "os", "version": version, "sha256": digest, "size": len(payload)}
    image = {"kind": "Image", "metadata": {"name": name}, "spec": {"version": version, "components": [component]}}
    (await http.post(f"{BASE}/images", json=image)).raise_for_status()


async def _run(dpus: int, poll: float | None, timeout: float, console: Console) -> ProvisionBenchResult:
    from ..sim.bmc import BmcLimits
    from ..sim.fleet import build_fleet, serve_fleet

    result = ProvisionBenchResult(dpus, effective_poll(poll))
    with server_process(None, controllers=True, env=controller_env(poll), timeout=60) as server:
        password = "bench-" + str(time.time_ns())
        fleet = await asyncio.to_thread(
            build_fleet,
            dpus,
            1,
            PROFILES,
            42,
            None,
            password_for=lambda _b: password,
            time_scale=0.0,
            limits=BmcLimits(latency_seconds=0.0, max_concurrent=8, queue_when_busy=True),
        )
        servers = await serve_fleet(fleet)
        running = SimRunning(fleet, servers, "fleetadmin", password)
        limits = httpx.Limits(max_connections=32)
        try:
            async with httpx.AsyncClient(
                base_url=server.url, headers=server.client_headers(), timeout=120, limits=limits
            ) as http:
                names, result.discovery_seconds = await discover_fleet(http, running, dpus, timeout, console)
                await publish_image(http, "bench-os", "bench-1.0", PAYLOAD)

                gate = asyncio.Semaphore(16)

                async def want_image(name: str) -> None:
                    async with gate:
                        resp = await http.patch(
                            f"{BASE}/dpus/{name}",
                            json={"spec": {"image": "bench-os"}},
                            headers={"Content-Type": "application/merge-patch+json"},
                        )
                        if resp.status_code != 200:
                            result.errors.append(f"{name}: HTTP {resp.status_code}")

                served_before = sum(b.requests_served for b in fleet.bmcs.values())
                cpu_before = cpu_seconds(server.process.pid)
                paths_before = _requests_by_path(fleet)
                start = time.perf_counter()
                await asyncio.gather(*(want_image(n) for n in names))
                console.print(f"  spec.image set on {dpus} DPUs in {time.perf_counter() - start:.1f}s")
                last_print = 0.0
                while True:
                    # progress from the server's transition counters: listing every DPU each second would be
                    # a large part of the server's work at this scale
                    progress = await http.get("/metrics")
                    progress.raise_for_status()
                    moves = _transitions(progress.text)
                    ready = sum(n for (_, target), n in moves.items() if target == "Ready")
                    failed = sum(n for (_, target), n in moves.items() if target.endswith("Failed"))
                    elapsed = time.perf_counter() - start
                    if time.perf_counter() - last_print > 5:
                        last_print = time.perf_counter()
                        console.print(f"  {elapsed:5.1f}s: {ready:.0f} Ready, {failed:.0f} failed")
                    if ready + failed >= dpus:  # confirmed from the DPUs themselves (a DPU may go Ready twice)
                        phases = await _dpu_phases(http)
                        result.ready = sum(1 for p in phases.values() if p == "Ready")
                        result.failed = sum(1 for p in phases.values() if p.endswith("Failed"))
                        if result.ready + result.failed >= dpus:
                            break
                    if elapsed > timeout:
                        phases = await _dpu_phases(http)
                        break
                    await asyncio.sleep(0.5)
                result.seconds = time.perf_counter() - start
                result.server_cpu_seconds = cpu_seconds(server.process.pid) - cpu_before
                result.ready = sum(1 for p in phases.values() if p == "Ready")
                result.failed = sum(1 for p in phases.values() if p.endswith("Failed"))
                result.errors.extend(f"{n}: {p or 'no phase'}" for n, p in sorted(phases.items()) if p != "Ready")
                result.redfish_requests = sum(b.requests_served for b in fleet.bmcs.values()) - served_before
                result.top_requests = (_requests_by_path(fleet) - paths_before).most_common(8)
                result.dpus_per_second = result.ready / result.seconds if result.seconds else 0.0
                metrics = await http.get("/metrics")
                if metrics.status_code == 200:
                    result.phase_mean_ms = {p: s * 1000 for p, s in _phase_means(metrics.text).items()}
            result.server_peak_rss_mib = _peak_rss_mib(server.process.pid)
            result.simple_updates = sum(len(b.tasks) for b in fleet.bmcs.values())
        finally:
            await servers.stop()
    return result


def run_provision_bench(
    dpus: int = 1000, poll: float | None = None, timeout: float = 600.0, as_json: bool = False
) -> ProvisionBenchResult:
    console = bench_console(as_json)
    console.print(
        f"[bold]bench provision[/]: {dpus} emulated DPUs, hardware delays zero (time_scale 0, latency 0), "
        f"{poll_description(poll)}"
    )
    result = asyncio.run(_run(dpus, poll, timeout, console))
    table = result_table("provision")
    table.add_row("DPUs Ready", f"{result.ready} / {result.dpus}", "all")
    table.add_row("DPUs failed", str(result.failed), "0")
    table.add_row("time, Available to all Ready", f"{result.seconds:.1f} s", "<= 60 s for 1,000")
    table.add_row("DPUs per second", f"{result.dpus_per_second:,.1f}", ">= 16.7")
    table.add_row("SimpleUpdate requests", f"{result.simple_updates}", f"{result.dpus}")
    for phase in PHASES:
        if phase in result.phase_mean_ms:
            table.add_row(f"mean time in {phase}", f"{result.phase_mean_ms[phase]:,.0f} ms", "")
    table.add_row("control plane peak memory (RSS)", f"{result.server_peak_rss_mib:,.0f} MiB", "")
    add_cost_rows(
        table, result.dpus, result.seconds, result.server_cpu_seconds, result.redfish_requests, result.top_requests
    )
    console.print(table)
    for error in result.errors[:5]:
        console.print(f"[red]error[/]: {error}")
    return result
