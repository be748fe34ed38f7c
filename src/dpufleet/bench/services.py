"""`dpufleet bench services`: apply an every-DPU service to N emulated DPUs and time it until every
instance runs, in a real container on each DPU's runtime.

The control plane (API server + controllers, SQLite) runs as its own process. This process runs the
emulated fleet: N hosts with one DPU each, their BMCs, and every DPU's agent with its service runtime
(agent/services.py: runc, umoci), enrolled over mTLS as a real DPU's agent is. Hardware delays are
near zero (time_scale 0.005); there are no emulated pull or start delays: the image is the emulator's busybox OCI
archive (sim/oci.py), uploaded once to the control plane's image repository, and each DPU fetches,
checks and unpacks it for real. Discovery and provisioning of the fleet are not timed.

The clock runs from the DPUService's create until the service's status says every instance is
Running (the DPUs' own reports). Figures: that time, the emulated fleet's CPU per DPU over it (the
agents, their runtimes and runc/umoci children, and the BMCs: an upper bound of one agent's), the
fleet process's memory growth per DPU since before it started (agents and BMCs), each instance's
memory from its cgroup, and the control plane's CPU and peak memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from ..sim.oci import build_archive, tools_missing
from ..sim.runner import SimOptions, SimRunning, register, sim_in_thread
from .harness import bench_console, cpu_seconds, peak_rss_mib, result_table, server_process
from .provision import controller_env

BASE = "/apis/dpufleet.io/v1alpha1/projects/default"
OS_PAYLOAD = b"dpufleet bench services: emulated OS image\n" * 256
SETTLE_SECONDS = 5.0  # after the fleet starts, before discovery probes its BMCs


@dataclass
class ServicesBenchResult:
    dpus: int
    seconds: float = 0.0  # create -> every instance Running
    first_running_seconds: float = 0.0
    running: int = 0
    failed: int = 0
    provision_seconds: float = 0.0  # discovery and provisioning (not timed)
    fleet_cpu_seconds: float = 0.0
    fleet_rss_growth_mib: float = 0.0
    instance_memory_mib: float = 0.0
    server_cpu_seconds: float = 0.0
    server_peak_rss_mib: float = 0.0
    errors: list[str] = field(default_factory=list)

    def figures(self) -> dict[str, object]:
        per = max(1, self.dpus)
        return {
            "bench": "services",
            "dpus": self.dpus,
            "seconds_to_all_running": self.seconds,
            "seconds_to_first_running": self.first_running_seconds,
            "instances_running": self.running,
            "instances_failed": self.failed,
            "provision_seconds_untimed": self.provision_seconds,
            "agent_cpu_ms_per_dpu": 1000 * self.fleet_cpu_seconds / per,
            "agent_rss_mib_per_dpu": self.fleet_rss_growth_mib / per,
            "instance_memory_mib_mean": self.instance_memory_mib,
            "server_cpu_seconds": self.server_cpu_seconds,
            "server_cpu_ms_per_dpu": 1000 * self.server_cpu_seconds / per,
            "server_peak_rss_mib": self.server_peak_rss_mib,
            "errors": self.errors,
        }


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _items(http: httpx.Client, plural: str) -> list[dict[str, Any]]:
    resp = http.get(f"{BASE}/{plural}")
    resp.raise_for_status()
    items: list[dict[str, Any]] = orjson.loads(resp.content)["items"]
    return items


def _wait(what: str, count: Any, want: int, timeout: float, console: Any, pause: float = 1.0) -> None:
    start = time.monotonic()
    last = start
    while (have := count()) < want:
        now = time.monotonic()
        if now - start > timeout:
            raise RuntimeError(f"{what}: {have}/{want} after {timeout:g}s")
        if now - last > 10:
            last = now
            console.print(f"  {what}: {have}/{want} ({now - start:.0f}s)")
        time.sleep(pause)


def _provision(http: httpx.Client, dpus: int, timeout: float, console: Any) -> None:
    """Every DPU inventoried, then given an OS image and Ready (as `bench provision` does, untimed)."""
    _wait(
        "DPUs inventoried",
        lambda: sum(1 for d in _items(http, "dpus") if (d.get("status") or {}).get("firmware")),
        dpus,
        timeout,
        console,
    )
    digest = hashlib.sha256(OS_PAYLOAD).hexdigest()
    http.put(f"/images/v1/blobs/sha256/{digest}", content=OS_PAYLOAD).raise_for_status()
    component = {"name": "os", "type": "os", "version": "bench-1.0", "sha256": digest, "size": len(OS_PAYLOAD)}
    image = {
        "kind": "Image",
        "metadata": {"name": "bench-os"},
        "spec": {"version": "bench-1.0", "components": [component]},
    }
    http.post(f"{BASE}/images", json=image).raise_for_status()
    for dpu in _items(http, "dpus"):
        http.patch(
            f"{BASE}/dpus/{dpu['metadata']['name']}",
            json={"spec": {"image": "bench-os"}},
            headers={"Content-Type": "application/merge-patch+json"},
        ).raise_for_status()
    console.print(f"  {dpus} DPUs inventoried; provisioning them")
    _wait(
        "DPUs Ready",
        lambda: sum(1 for d in _items(http, "dpus") if (d.get("status") or {}).get("phase") == "Ready"),
        dpus,
        timeout,
        console,
    )


async def _register(url: str, headers: dict[str, str], fleet: SimRunning) -> None:
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as http:
        await register(http, fleet, SimOptions(tls=False))


def run_services_bench(dpus: int = 200, timeout: float = 900.0, as_json: bool = False) -> ServicesBenchResult:
    console = bench_console(as_json)
    missing = tools_missing()
    if os.geteuid() != 0 or missing:
        why = (
            "root (cgroup limits)"
            if os.geteuid() != 0
            else f"{', '.join(missing)} (apt install runc umoci busybox-static)"
        )
        raise RuntimeError(f"bench services runs real containers: it needs {why}")
    result = ServicesBenchResult(dpus)
    console.print(f"dpufleet bench services: {dpus} emulated DPUs, one real container each (runc)")
    with (
        tempfile.TemporaryDirectory(prefix="dpufleet-bench-services-") as tmp,
        server_process(None, controllers=True, env=controller_env(None), timeout=60) as server,
    ):
        archive, sha = build_archive(Path(tmp) / "image", ["/bin/sleep", "3600"])
        with httpx.Client(base_url=server.url, headers=server.client_headers(), timeout=120) as http:
            http.put(f"/images/v1/blobs/sha256/{sha}", content=archive.read_bytes()).raise_for_status()
            rss_before = _rss_mib()
            options = SimOptions(
                hosts=dpus,
                dpus_per_host=1,
                seed=7,
                directory=Path(tmp) / "fleet",
                time_scale=0.005,  # not 0: the agents' retry pauses scale with it (0 would be a busy loop)
                server=server.url,
                token=server.token,
                heartbeat_seconds=10.0,
                services=True,
                services_dpus=dpus,
                services_interval=2.0,
                register=False,  # below, once the agents' start (enrollment: a key each) is over
            )
            started = time.perf_counter()
            with sim_in_thread(options, timeout=300) as fleet:
                console.print(f"  the emulated fleet is up in {time.perf_counter() - started:.1f}s")
                time.sleep(SETTLE_SECONDS)
                asyncio.run(_register(server.url, server.client_headers(), fleet))
                _provision(http, dpus, timeout, console)
                result.provision_seconds = time.perf_counter() - started
                console.print(f"  {dpus} DPUs discovered and Ready in {result.provision_seconds:.1f}s (not timed)")
                cpu_before, server_before = cpu_seconds(os.getpid()), cpu_seconds(server.process.pid)
                start = time.perf_counter()
                service = {
                    "kind": "DPUService",
                    "metadata": {"name": "bench"},
                    "spec": {
                        "artifact": {"image": {"reference": f"bench/busybox@sha256:{sha}"}},
                        "resources": {"cpuMillicores": 10, "memoryMiB": 16},
                        "placement": {"mode": "EveryDPU"},
                    },
                }
                http.post(f"{BASE}/dpuservices", json=service).raise_for_status()
                last = 0.0
                while True:
                    resp = http.get(f"{BASE}/dpuservices/bench")
                    resp.raise_for_status()
                    status = orjson.loads(resp.content).get("status") or {}
                    instances = status.get("instances") or []
                    result.running = int(status.get("running") or 0)
                    result.failed = sum(1 for i in instances if i.get("phase") == "Failed")
                    elapsed = time.perf_counter() - start
                    if result.running and not result.first_running_seconds:
                        result.first_running_seconds = elapsed
                    if result.running + result.failed >= dpus or elapsed > timeout:
                        break
                    if elapsed - last > 5:
                        last = elapsed
                        console.print(f"  {elapsed:5.1f}s: {result.running}/{dpus} running, {result.failed} failed")
                    time.sleep(0.25)
                result.seconds = time.perf_counter() - start
                result.fleet_cpu_seconds = cpu_seconds(os.getpid()) - cpu_before
                result.server_cpu_seconds = cpu_seconds(server.process.pid) - server_before
                result.fleet_rss_growth_mib = _rss_mib() - rss_before
                memory = [
                    int(entry["memoryBytes"])
                    for alloc in _items(http, "dpuallocations")
                    for entry in (alloc.get("status") or {}).get("instances") or []
                    if entry.get("memoryBytes")
                ]
                result.instance_memory_mib = statistics.mean(memory) / (1 << 20) if memory else 0.0
                result.errors = [f"{i['name']}: {i.get('reason')}" for i in instances if i.get("phase") == "Failed"][
                    :20
                ]
                if result.running + result.failed < dpus:
                    result.errors.append(f"only {result.running}/{dpus} running after {timeout:g}s")
            result.server_peak_rss_mib = peak_rss_mib(server.process.pid)
    table = result_table("services")
    for key, value in result.figures().items():
        if key not in ("bench", "errors"):
            table.add_row(key, f"{value:,.2f}" if isinstance(value, float) else str(value), "")
    console.print(table)
    return result
