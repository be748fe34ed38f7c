"""`dpufleet bench chains`: apply N service chains to D emulated DPUs, each with a real Open vSwitch,
and time it until every chain's flows are in every DPU's switch.

The control plane (API server + controllers, SQLite) runs as its own process; this process runs the
emulated fleet: D hosts with one DPU each, every DPU with its own ovsdb-server and ovs-vswitchd
(userspace datapath) in namespaces of its own, and every DPU's agent, enrolled over mTLS, converging
its switch every second. Discovery is not timed.

Each chain takes one TCP port (its own match) from the wire port p0 to the host's PF representor and
back: two flows, plus the ARP flows the chains share. The clock runs from the first chain's create
until every DPU's switch holds every chain's flows (read from the switches themselves with
`ovs-ofctl dump-flows`); the status the agents report is timed too (every chain `programmed` on every
DPU). A second figure is the switch's own speed: one bundle of flows written to one DPU's OVS, timed.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from ..agent.network import COOKIE_TAG, NEIGHBOUR_COOKIE
from ..sim.runner import SimOptions, SimRunning, sim_in_thread
from .harness import bench_console, cpu_seconds, peak_rss_mib, result_table, server_process
from .provision import controller_env
from .services import BASE, SETTLE_SECONDS, _items, _register, _wait

BUNDLE_FLOWS = 5000  # the switch-speed probe's bundle
PROBE_COOKIE = 0xDC << 56  # not a chain's: the probe's flows, in a table no packet reaches


@dataclass
class ChainsBenchResult:
    dpus: int
    chains: int
    seconds_to_flows: float = 0.0  # first create -> every chain's flows in every DPU's switch
    seconds_to_status: float = 0.0  # first create -> every chain reported programmed on every DPU
    create_seconds: float = 0.0  # the API calls alone
    flows_per_dpu: int = 0
    ovs_bundle_flows_per_second: float = 0.0
    fleet_cpu_seconds: float = 0.0
    server_cpu_seconds: float = 0.0
    server_peak_rss_mib: float = 0.0
    errors: list[str] = field(default_factory=list)

    def figures(self) -> dict[str, object]:
        return {
            "bench": "chains",
            "dpus": self.dpus,
            "chains": self.chains,
            "seconds_to_flows_on_every_dpu": self.seconds_to_flows,
            "seconds_to_status_programmed": self.seconds_to_status,
            "create_seconds": self.create_seconds,
            "seconds_from_last_create_to_flows": self.seconds_to_flows - self.create_seconds,
            "flows_per_dpu": self.flows_per_dpu,
            "agent_flows_per_second_per_dpu": self.flows_per_dpu / self.seconds_to_flows
            if self.seconds_to_flows
            else 0.0,
            "ovs_bundle_flows_per_second": self.ovs_bundle_flows_per_second,
            "fleet_cpu_seconds": self.fleet_cpu_seconds,
            "server_cpu_seconds": self.server_cpu_seconds,
            "server_peak_rss_mib": self.server_peak_rss_mib,
            "errors": self.errors,
        }


def _chain_flows(openflow: str) -> int:
    """Flows of chains (any chain cookie, not the shared ARP ones) now in one switch."""
    out = subprocess.run(
        ["ovs-ofctl", "-O", "OpenFlow14", "dump-flows", openflow, "--no-stats"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    count = 0
    for line in out.splitlines():
        if "cookie=0x" not in line:
            continue
        cookie = int(line.split("cookie=")[1].split(",")[0], 16)
        if cookie >> 56 == COOKIE_TAG and cookie != NEIGHBOUR_COOKIE:
            count += 1
    return count


def _bundle_speed(openflow: str) -> float:
    """Flows per second one OVS takes in one bundle (ovs-ofctl --bundle, in table 250, then removed)."""
    lines = [
        f"add cookie={PROBE_COOKIE:#x},table=250,priority=10,tcp,tp_dst={1 + i % 65000},nw_dst=203.0.113.{i % 250},"
        f"actions=drop"
        for i in range(BUNDLE_FLOWS)
    ]
    start = time.perf_counter()
    subprocess.run(
        ["ovs-ofctl", "-O", "OpenFlow14", "--bundle", "add-flows", openflow, "-"],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    seconds = time.perf_counter() - start
    subprocess.run(
        ["ovs-ofctl", "del-flows", openflow, f"cookie={PROBE_COOKIE:#x}/-1"],
        capture_output=True,
        timeout=60,
        check=True,
    )
    return BUNDLE_FLOWS / seconds


def _post_all(url: str, headers: dict[str, str], plural: str, docs: list[dict[str, Any]]) -> None:
    async def post() -> None:
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as http:
            gate = asyncio.Semaphore(8)

            async def one(doc: dict[str, Any]) -> None:
                async with gate:
                    resp = await http.post(f"{BASE}/{plural}", json=doc)
                    if resp.status_code >= 400:
                        raise RuntimeError(
                            f"creating {doc['metadata']['name']}: HTTP {resp.status_code} {resp.text[:200]}"
                        )

            await asyncio.gather(*(one(d) for d in docs))

    asyncio.run(post())


def run_chains_bench(
    dpus: int = 8, chains: int = 500, timeout: float = 600.0, as_json: bool = False
) -> ChainsBenchResult:
    console = bench_console(as_json)
    if os.geteuid() != 0 or shutil.which("ovs-vswitchd") is None:
        why = (
            "root (network namespaces)" if os.geteuid() != 0 else "openvswitch-switch (apt install openvswitch-switch)"
        )
        raise RuntimeError(f"bench chains runs a real Open vSwitch per DPU: it needs {why}")
    if chains > 60000:
        raise RuntimeError(f"--chains {chains}: each chain takes a TCP port of its own; at most 60,000")
    result = ChainsBenchResult(dpus, chains)
    console.print(f"dpufleet bench chains: {chains} chains on {dpus} emulated DPUs, each a real Open vSwitch")
    with (
        tempfile.TemporaryDirectory(prefix="dpufleet-bench-chains-") as tmp,
        server_process(None, controllers=True, env=controller_env(None), timeout=60) as server,
        httpx.Client(base_url=server.url, headers=server.client_headers(), timeout=120) as http,
    ):
        options = SimOptions(
            hosts=dpus,
            dpus_per_host=1,
            seed=18,
            directory=Path(tmp) / "fleet",
            time_scale=0.005,
            server=server.url,
            token=server.token,
            heartbeat_seconds=10.0,
            network=True,
            network_dpus=dpus,
            network_interval=1.0,
            register=False,
        )
        with sim_in_thread(options, timeout=300) as fleet:
            time.sleep(SETTLE_SECONDS)
            asyncio.run(_register(server.url, server.client_headers(), fleet))
            _wait(
                "DPUs inventoried",
                lambda: sum(1 for d in _items(http, "dpus") if (d.get("status") or {}).get("firmware")),
                dpus,
                timeout,
                console,
            )
            _measure(result, fleet, server, http, timeout, console)
        result.server_peak_rss_mib = peak_rss_mib(server.process.pid)
    table = result_table("chains")
    for key, value in result.figures().items():
        if key not in ("bench", "errors"):
            table.add_row(key, f"{value:,.2f}" if isinstance(value, float) else str(value), "")
    console.print(table)
    return result


def _measure(
    result: ChainsBenchResult, fleet: SimRunning, server: Any, http: httpx.Client, timeout: float, console: Any
) -> None:
    headers = server.client_headers()
    for name, type_, port, extra in (
        ("wire0", "Physical", "p0", {}),
        ("host-pf0", "PFRepresentor", "pf0hpf", {"pf": 0}),
    ):
        http.post(
            f"{BASE}/dpuserviceinterfaces",
            json={
                "kind": "DPUServiceInterface",
                "metadata": {"name": name},
                "spec": {"type": type_, "port": port, **extra},
            },
        ).raise_for_status()
    switches = [plane.agent_config().openflow for plane in fleet.data_planes.values()]
    docs = [
        {
            "kind": "DPUServiceChain",
            "metadata": {"name": f"bench-{i:05d}"},
            "spec": {
                "hops": [{"interface": "wire0"}, {"interface": "host-pf0"}],
                "match": {"protocol": "tcp", "port": 1 + i},
            },
        }
        for i in range(result.chains)
    ]
    want = 2 * result.chains
    result.flows_per_dpu = want
    cpu_before, server_before = cpu_seconds(os.getpid()), cpu_seconds(server.process.pid)
    start = time.perf_counter()
    _post_all(server.url, headers, "dpuservicechains", docs)
    result.create_seconds = time.perf_counter() - start
    console.print(f"  {result.chains} chains created in {result.create_seconds:.1f}s")
    done: set[str] = set()
    last = 0.0
    while len(done) < len(switches):
        elapsed = time.perf_counter() - start
        if elapsed > timeout:
            result.errors.append(f"flows on {len(done)}/{len(switches)} switches after {timeout:g}s")
            return
        for openflow in switches:
            if openflow not in done and _chain_flows(openflow) >= want:
                done.add(openflow)
        if elapsed - last > 5:
            last = elapsed
            console.print(f"  {elapsed:5.1f}s: every chain's flows on {len(done)}/{len(switches)} DPUs")
        time.sleep(0.1)
    result.seconds_to_flows = time.perf_counter() - start
    console.print(f"  every chain's flows on every DPU in {result.seconds_to_flows:.1f}s")

    def programmed_everywhere() -> int:
        return sum(
            1
            for c in _items(http, "dpuservicechains")
            if int((c.get("status") or {}).get("programmed") or 0) >= result.dpus
        )

    try:
        _wait(
            "chains reported programmed on every DPU",
            programmed_everywhere,
            result.chains,
            timeout,
            console,
            pause=0.25,
        )
        result.seconds_to_status = time.perf_counter() - start
    except RuntimeError as exc:
        result.errors.append(str(exc))
    result.fleet_cpu_seconds = cpu_seconds(os.getpid()) - cpu_before
    result.server_cpu_seconds = cpu_seconds(server.process.pid) - server_before
    result.ovs_bundle_flows_per_second = _bundle_speed(switches[0])
    chains = orjson.loads(http.get(f"{BASE}/dpuservicechains").content)["items"]
    errors = [
        f"{c['metadata']['name']} on {e['dpu']}: {e.get('lastError')}"
        for c in chains
        for e in (c.get("status") or {}).get("dpus") or []
        if e.get("lastError")
    ]
    result.errors += errors[:10]
