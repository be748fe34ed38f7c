"""`dpufleet bench chaos`: random faults on an emulated fleet; detection latency and time to recovery.

The control plane (API server + every controller, SQLite) runs as its own process with the health
controller on bench timings (a poll every `POLL` seconds, heartbeats every `HEARTBEAT` seconds,
three missed before an agent is silent) and a RemediationPolicy that is the built-in default with
every wait scaled by `POLICY_SCALE`. This process serves N emulated DPUs (one per host, one BMC
each) at `TIME_SCALE` (a 40 s boot takes 2 s) with the real agents on every DPU and host, and
injects a random fault (seeded) on a random healthy DPU every `1/rate` seconds for `duration`
seconds. Faults that remediation cannot end (a crash loop, a partition, a BMC down, a full disk,
a skewed clock, host faults, a failed DIMM) are injected with a random duration; the others
(an OS hang, a NIC crash, a power loss) last until remediation ends them.

Measured from the DPU objects: detection latency (injection to `status.diagnosis.since` of the
expected class), time to recovery (injection to Healthy again), and at the end -- after a bounded
settle -- every DPU left unhealthy, unaccounted for (unhealthy without a fault) or quarantined.
"""

from __future__ import annotations

import asyncio
import logging
import random
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from ..sim.faults import FaultKind, injector_for
from ..sim.runner import SimOptions, SimRunning, run_sim
from .discovery import _peak_rss_mib
from .harness import RunningServer, bench_console, free_port, percentile, result_table, script_server

BASE = "/apis/dpufleet.io/v1alpha1/projects/default"
TIME_SCALE = 0.05  # emulated hardware: a 40 s boot takes 2 s, the 30 s OS watchdog 1.5 s
# Agents report every HEARTBEAT seconds and the health controller visits every DPU every POLL seconds:
# 5x the production pace (10 s, 10 s). At 1 s the emulator alone (200 BMCs and 400 agents in this one
# process, each agent reading its OS tree on every heartbeat) needed more than the one core a Python
# process gets: BMC answers passed the 3 s Redfish timeout and every DPU read as BMCDown.
HEARTBEAT = 2.0
POLL = 2.0
POLICY_SCALE = 0.02  # the default policy's waits: 60 s -> 1.2 s, 300 s -> 6 s, 1800 s -> 36 s
DETECTION_BOUND = 12.0  # silence 6 s + a poll (2 s) + the emulated watchdog (1.5 s) + margin

# What docs/faults.md says each kind is diagnosed as; None: the DPU stays Healthy (host faults).
EXPECTED: dict[FaultKind, str | None] = {
    FaultKind.KERNEL_CRASH: "KernelCrash",
    FaultKind.OS_HANG: "OSHang",
    FaultKind.NIC_CRASH: "NICFirmwareCrash",
    FaultKind.POWER_LOSS: "PowerLoss",
    FaultKind.HOST_SOFT_RESET: None,
    FaultKind.HOST_POWER_CYCLE: None,
    FaultKind.HOST_CRASH: None,
    FaultKind.BMC_CRASH: "BMCDown",
    FaultKind.PCIE_AER: "PCIeError",
    FaultKind.CORRUPTED_FLASH: "CorruptedFlash",
    FaultKind.DIMM_FAILURE: "MemoryFailure",
    FaultKind.AGENT_PARTITION: "AgentUnreachable",
    FaultKind.DISK_FULL: "DiskFull",
    FaultKind.CLOCK_SKEW: "ClockSkew",
}
# Ended by remediation (a reset, a power-on); the rest get a duration.
CURED_BY_POLICY = {FaultKind.OS_HANG, FaultKind.NIC_CRASH, FaultKind.POWER_LOSS, FaultKind.CORRUPTED_FLASH}
# Classes whose default policy ends in quarantine while the fault's evidence lasts.
QUARANTINING = {"PCIeError", "CorruptedFlash", "MemoryFailure", "KernelCrash", "OSHang", "NICFirmwareCrash"}

SERVE = """
import logging, sys
from pathlib import Path
from dpufleet import plane as manager
from dpufleet.health.controller import HealthConfig, HealthReconciler
from dpufleet.inventory import reports
from dpufleet.server.runner import serve
logging.basicConfig(level=logging.WARNING)
hb, poll = float(sys.argv[3]), float(sys.argv[4])
# a heartbeat is stored every other report (not every one): a live agent's stored heartbeat is then at
# most 1.5 hb + hb old, under the 3 hb of silence, and the report handler writes half as often
reports.HEARTBEAT_WRITE_EVERY = hb * 1.5
reports.ReportHandler.__init__.__defaults__ = (hb, 300.0)
config = HealthConfig(
    poll_seconds=poll, heartbeat_seconds=hb, allowed_misses=3, heartbeat_write_seconds=hb * 1.5,
    redfish_timeout=3.0, boot_stuck_seconds=120 * float(sys.argv[5]), agent_start_seconds=60 * float(sys.argv[5]),
)
manager.DEFAULT_RECONCILERS[:] = [
    (lambda s: manager.wire(HealthReconciler, s, config)) if f is HealthReconciler else f
    for f in manager.DEFAULT_RECONCILERS
]
serve(Path(sys.argv[1]), None, sys.argv[2], controllers=True)
"""


@contextmanager
def chaos_server(timeout: float = 60.0) -> Iterator[RunningServer]:
    """The control plane in its own process, its health controller on the bench's timings."""
    with tempfile.TemporaryDirectory(prefix="dpufleet-chaos-") as tmp:
        data_dir = Path(tmp) / "data"
        port = free_port()
        args = [str(data_dir), f"127.0.0.1:{port}", str(HEARTBEAT), str(POLL), str(TIME_SCALE)]
        with script_server(SERVE, args, data_dir, port, timeout=timeout) as running:
            yield running


def chaos_policy() -> dict[str, Any]:
    from ..api.kinds import DEFAULT_RULES

    rules = []
    for cls, steps in DEFAULT_RULES.items():
        actions: list[dict[str, Any]] = []
        for s in steps:
            step: dict[str, Any] = {"action": str(s.action), "after": s.after * POLICY_SCALE}
            if s.maxPerHour is not None:
                step["maxPerHour"] = s.maxPerHour
            actions.append(step)
        rules.append({"failureClass": str(cls), "actions": actions})
    return {"kind": "RemediationPolicy", "metadata": {"name": "chaos"}, "spec": {"rules": rules}}


@dataclass
class Injected:
    dpu: str  # the DPU object's name
    sim_id: str
    kind: FaultKind
    at_wall: float
    at: float
    duration: float | None
    detected: float | None = None  # seconds after injection
    recovered: float | None = None
    diagnosed_as: str | None = None


@dataclass
class ChaosBenchResult:
    dpus: int
    duration: float
    rate: float
    seed: int
    injected: list[Injected] = field(default_factory=list)
    detection_p50: float = float("nan")
    detection_p99: float = float("nan")
    mttr: float = float("nan")
    misdiagnosed: list[str] = field(default_factory=list)
    undetected: list[str] = field(default_factory=list)
    over_before_bound: list[str] = field(default_factory=list)  # undetected, but over before DETECTION_BOUND
    unrecovered: list[str] = field(default_factory=list)
    unaccounted: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    settle_seconds: float = 0.0
    setup_seconds: float = 0.0
    server_peak_rss_mib: float = 0.0
    by_kind: dict[str, int] = field(default_factory=dict)
    subscribed_bmcs: int = 0  # BMCs pushing their events to the API server (EventService subscriptions)

    def figures(self) -> dict[str, object]:
        """The result as `--json` prints it."""
        return {
            "bench": "chaos",
            "dpus": self.dpus,
            "duration_seconds": self.duration,
            "faults_per_second": self.rate,
            "seed": self.seed,
            "faults_injected": len(self.injected),
            "faults_on_dpus": sum(1 for f in self.injected if EXPECTED[f.kind] is not None),
            "faults_by_kind": dict(sorted(self.by_kind.items())),
            "detection_seconds_p50": self.detection_p50,
            "detection_seconds_p99": self.detection_p99,
            "detection_bound_seconds": DETECTION_BOUND,
            "recovery_seconds_mean": self.mttr,
            "undetected": self.undetected,
            "over_before_bound": self.over_before_bound,
            "misdiagnosed": self.misdiagnosed,
            "unrecovered": self.unrecovered,
            "unaccounted": self.unaccounted,
            "quarantined": self.quarantined,
            "settle_seconds": self.settle_seconds,
            "setup_seconds": self.setup_seconds,
            "subscribed_bmcs": self.subscribed_bmcs,
            "server_peak_rss_mib": self.server_peak_rss_mib,
        }


def _healthy(dpu: dict[str, Any]) -> bool:
    for cond in (dpu.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Healthy":
            return bool(cond.get("status") == "True")
    return False


def _episode_after(dpu: dict[str, Any], failure_class: str, at_wall: float) -> float | None:
    """When remediation recorded an episode of `failure_class` at or after `at_wall` (its history keeps
    the episodes the observer's one-second look missed: diagnosed and recovered in between)."""
    for entry in ((dpu.get("status") or {}).get("remediation") or {}).get("history") or []:
        if entry.get("failureClass") != failure_class or not isinstance(entry.get("time"), str):
            continue
        when = datetime.fromisoformat(entry["time"].replace("Z", "+00:00")).timestamp()
        if when >= at_wall:
            return when
    return None


def _since(dpu: dict[str, Any]) -> tuple[str | None, float | None]:
    diag = (dpu.get("status") or {}).get("diagnosis") or {}
    since = diag.get("since")
    when = datetime.fromisoformat(since.replace("Z", "+00:00")).timestamp() if isinstance(since, str) else None
    return diag.get("failureClass"), when


async def _dpus(http: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    """Every DPU object. Asked once: a list that fails (the server dropped the connection, answered an
    error) fails the bench, named -- a control plane that drops its clients' connections is a result."""
    resp = await http.get(f"{BASE}/dpus")
    resp.raise_for_status()
    return {d["metadata"]["name"]: d for d in resp.json()["items"]}


async def _chaos(
    running: SimRunning, http: httpx.AsyncClient, result: ChaosBenchResult, settle: float, console: Console
) -> None:
    rng = random.Random(result.seed)
    injector = injector_for(running.fleet)
    sims = {f"dpu-{d.serial.lower()}": d for d in running.fleet.dpus}
    start = time.perf_counter()
    while True:
        dpus = await _dpus(http)
        ready = [n for n, d in dpus.items() if _healthy(d) and ((d.get("status") or {}).get("agent") or {})]
        if len(ready) == result.dpus:
            break
        if time.perf_counter() - start > 180:
            raise RuntimeError(f"only {len(ready)} of {result.dpus} DPUs became Healthy with their agents reporting")
        await asyncio.sleep(1.0)
    (await http.post(f"{BASE}/remediationpolicies", json=chaos_policy())).raise_for_status()
    result.setup_seconds += time.perf_counter() - start
    console.print(f"  every DPU Healthy, its agent reporting; chaos for {result.duration:g}s at {result.rate:g}/s")

    open_faults: dict[str, Injected] = {}  # DPU -> its fault, until it recovered (or was quarantined)
    kinds = list(FaultKind)
    chaos_start = time.monotonic()
    next_fault = chaos_start
    last_print = 0.0

    def observe(dpus: dict[str, dict[str, Any]]) -> None:
        now = time.monotonic()
        for name, fault in list(open_faults.items()):
            dpu = dpus.get(name)
            if dpu is None:
                continue
            cls, since = _since(dpu)
            expected = EXPECTED[fault.kind]
            if fault.detected is None and expected is not None and cls not in (None, "Healthy"):
                fault.diagnosed_as = cls
                fault.detected = max(0.0, (since or time.time()) - fault.at_wall)
            if expected is None:  # a host fault: the DPU stays Healthy; done once the fault is over
                if cls not in (None, "Healthy"):
                    fault.diagnosed_as = cls
                if fault.duration is not None and now - fault.at > fault.duration and _healthy(dpu):
                    fault.recovered = now - fault.at
                    del open_faults[name]
            elif fault.detected is not None and _healthy(dpu):
                fault.recovered = now - fault.at
                del open_faults[name]
            elif fault.detected is not None and (dpu.get("spec") or {}).get("unschedulable"):
                del open_faults[name]  # policy quarantined it: accounted for

    while time.monotonic() - chaos_start < result.duration:
        dpus = await _dpus(http)
        observe(dpus)
        now = time.monotonic()
        while now >= next_fault:
            next_fault += 1.0 / result.rate
            candidates = [
                n
                for n, d in dpus.items()
                if n not in open_faults
                and _healthy(d)
                and not (d.get("spec") or {}).get("unschedulable")
                and not injector.faults_of(sims[n])
            ]
            if not candidates:
                continue
            name = rng.choice(sorted(candidates))
            kind = rng.choice(kinds)
            duration = None if kind in CURED_BY_POLICY else round(rng.uniform(5.0, 15.0), 1)
            sim = sims[name]
            injector.inject(sim.id, kind, duration)
            if kind is FaultKind.CORRUPTED_FLASH:  # takes effect at the next reset: an operator reboots the DPU
                running.fleet.bmcs[sim.id].reset_system("ForceRestart")
            fault = Injected(name, sim.id, kind, time.time(), time.monotonic(), duration)
            result.injected.append(fault)
            open_faults[name] = fault
        if time.monotonic() - last_print > 10:
            last_print = time.monotonic()
            console.print(
                f"  {time.monotonic() - chaos_start:5.0f}s: {len(result.injected)} faults injected, "
                f"{len(open_faults)} open, {len(injector.active)} active in the emulator"
            )
        await asyncio.sleep(1.0)

    # Settle: no new faults; wait (bounded) until every open fault has recovered or been quarantined.
    settle_start = time.monotonic()
    while open_faults and time.monotonic() - settle_start < settle:
        observe(await _dpus(http))
        await asyncio.sleep(1.0)
    result.settle_seconds = time.monotonic() - settle_start

    dpus = await _dpus(http)
    faulted = {f.dpu for f in result.injected}
    for fault in result.injected:
        label = f"{fault.dpu} ({fault.kind}, diagnosed {fault.diagnosed_as or '-'})"
        expected = EXPECTED[fault.kind]
        if expected is not None and fault.detected is None and fault.dpu in dpus:
            seen = _episode_after(dpus[fault.dpu], str(expected), fault.at_wall)
            if seen is not None:
                fault.detected, fault.diagnosed_as = seen - fault.at_wall, str(expected)
                label = f"{fault.dpu} ({fault.kind}, diagnosed {fault.diagnosed_as})"
        if expected is not None and fault.detected is None:
            if fault.duration is not None and fault.duration < DETECTION_BOUND:
                result.over_before_bound.append(f"{label}, lasted {fault.duration:g}s")
            else:
                result.undetected.append(label)
        elif fault.diagnosed_as not in (None, expected):
            result.misdiagnosed.append(label)
    for name, dpu in sorted(dpus.items()):
        quarantined = bool((dpu.get("spec") or {}).get("unschedulable"))
        if quarantined:
            result.quarantined.append(f"{name} ({_since(dpu)[0]})")
        elif not _healthy(dpu):
            (result.unrecovered if name in faulted else result.unaccounted).append(f"{name} ({_since(dpu)[0]})")
    detections = [f.detected for f in result.injected if f.detected is not None and EXPECTED[f.kind] is not None]
    recoveries = [f.recovered for f in result.injected if f.recovered is not None and EXPECTED[f.kind] is not None]
    listing = await http.get(f"{BASE}/bmcs")
    listing.raise_for_status()
    bmcs = listing.json()["items"]
    result.subscribed_bmcs = sum(
        1 for b in bmcs if ((b.get("status") or {}).get("eventSubscription") or {}).get("state") == "Subscribed"
    )
    result.detection_p50 = percentile(detections, 50)
    result.detection_p99 = percentile(detections, 99)
    result.mttr = sum(recoveries) / len(recoveries) if recoveries else float("nan")
    for fault in result.injected:
        result.by_kind[str(fault.kind)] = result.by_kind.get(str(fault.kind), 0) + 1


async def _run(dpus: int, duration: float, rate: float, seed: int, settle: float, console: Console) -> ChaosBenchResult:
    result = ChaosBenchResult(dpus, duration, rate, seed)
    setup = time.perf_counter()
    with chaos_server() as server, tempfile.TemporaryDirectory(prefix="dpufleet-chaos-fleet-") as tmp:
        options = SimOptions(
            hosts=dpus,
            dpus_per_host=1,
            seed=seed,
            directory=Path(tmp),
            time_scale=TIME_SCALE,
            server=server.url,
            token=server.token,
            register=True,
            agents=True,
            heartbeat_seconds=HEARTBEAT,
            install_check_seconds=60.0,
        )
        stop = asyncio.Event()
        failure: list[BaseException] = []

        async def on_ready(running: SimRunning) -> None:
            result.setup_seconds = time.perf_counter() - setup
            console.print(f"  {dpus} emulated DPUs served, agents started ({result.setup_seconds:.1f}s)")

            async def drive() -> None:
                headers = server.client_headers()
                # kept-alive connections: the server keeps an idle one longer (75 s) than this client (5 s)
                limits = httpx.Limits(max_connections=8)
                try:
                    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=60, limits=limits) as c:
                        await _chaos(running, c, result, settle, console)
                except BaseException as exc:
                    failure.append(exc)
                finally:
                    injector_for(running.fleet).clear_all()
                    stop.set()

            asyncio.get_running_loop().create_task(drive())

        await run_sim(options, stop, on_ready)
        result.server_peak_rss_mib = _peak_rss_mib(server.process.pid)
        if failure:
            raise failure[0]
    return result


def run_chaos_bench(
    dpus: int = 200,
    duration: float = 120.0,
    rate: float = 0.5,
    seed: int = 1,
    settle: float = 120.0,
    as_json: bool = False,
) -> ChaosBenchResult:
    console = bench_console(as_json)
    logging.getLogger("dpufleet.agent").setLevel(logging.ERROR)  # partitioned agents' retries are expected
    console.print(
        f"[bold]bench chaos[/]: {dpus} emulated DPUs (time scale {TIME_SCALE:g}), a random fault every "
        f"{1 / rate:g}s for {duration:g}s (seed {seed}); health poll {POLL:g}s, heartbeat {HEARTBEAT:g}s x 3, "
        f"default policy with waits x{POLICY_SCALE:g}"
    )
    result = asyncio.run(_run(dpus, duration, rate, seed, settle, console))
    table = result_table("chaos")
    detectable = sum(1 for f in result.injected if EXPECTED[f.kind] is not None)
    table.add_row("faults injected", f"{len(result.injected)} ({detectable} on the DPU, the rest host faults)", "")
    table.add_row("detection latency p50", f"{result.detection_p50:.1f} s", "")
    table.add_row("detection latency p99", f"{result.detection_p99:.1f} s", f"<= {DETECTION_BOUND:g} s")
    table.add_row("mean time to recovery (fault to Healthy)", f"{result.mttr:.1f} s", "")
    table.add_row("undetected", str(len(result.undetected)), "0")
    table.add_row(f"not seen, over before the {DETECTION_BOUND:g} s bound", str(len(result.over_before_bound)), "")
    table.add_row("misdiagnosed", str(len(result.misdiagnosed)), "0")
    table.add_row("unrecovered", str(len(result.unrecovered)), "0")
    table.add_row("unaccounted for (unhealthy, no fault)", str(len(result.unaccounted)), "0")
    table.add_row("quarantined by policy", str(len(result.quarantined)), "")
    table.add_row("settle after the last fault", f"{result.settle_seconds:.1f} s", "")
    table.add_row("BMCs pushing events (EventService)", f"{result.subscribed_bmcs} / {result.dpus}", "")
    table.add_row("control plane peak memory (RSS)", f"{result.server_peak_rss_mib:,.0f} MiB", "")
    console.print(table)
    console.print("faults by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(result.by_kind.items())))
    for title, items in (
        ("undetected", result.undetected),
        ("over before its detection bound", result.over_before_bound),
        ("misdiagnosed", result.misdiagnosed),
        ("unrecovered", result.unrecovered),
        ("unaccounted for", result.unaccounted),
        ("quarantined by policy", result.quarantined),
    ):
        for item in items:
            console.print(f"{title}: {item}")
    return result
