"""Shared pieces for benchmarks: a real server subprocess, percentiles, result printing, the machine's conditions.

A bench prints its progress and its result table for people; with `--json` both go to stderr and
stdout carries only one JSON object of named figures (units in the names), for scripts and CI.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _proc_stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def child_pids(pid: int) -> list[int]:
    """The live children of a process (of all its threads), from /proc; [] where it can't be read."""
    children: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                children += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        pass
    return children


def process_tree(pid: int) -> list[int]:
    """The process and its descendants (the API server and its controller process)."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += child_pids(current)
    return tree


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process and its descendants used so far, from /proc (the API server
    and its controller process; a child that exited and was waited for counts in its parent's
    cutime/cstime); nan where the process can't be read."""
    try:
        fields = _proc_stat(pid)
        total = sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    except (OSError, IndexError, ValueError):
        return float("nan")
    for child in process_tree(pid)[1:]:
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += sum(int(f) for f in _proc_stat(child)[11:13])
    return total / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    """The sum of the peak resident memory (VmHWM) of a process and of its live descendants: the API
    server's and its controller process's peaks (an upper bound of their peak together); nan where
    the process can't be read."""
    total = 0.0
    for index, member in enumerate(process_tree(pid)):
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            if index == 0:
                return float("nan")
    return total


@dataclass(frozen=True)
class MachineConditions:
    """What the machine was like just before a bench run: its figures depend on it."""

    cpu_model: str  # /proc/cpuinfo "model name" ("unknown" where it is not given)
    cpus: int  # os.cpu_count(): the machine's
    cpus_usable: int  # len(os.sched_getaffinity(0)): the ones this process may run on
    memory_total_mib: float | None  # /proc/meminfo MemTotal
    python: str
    load_average: tuple[float, float, float]  # os.getloadavg(): 1, 5 and 15 minutes, read at that moment

    def figures(self) -> dict[str, Any]:
        """As the JSON object's "machine" has it (without the load average: that is one per run)."""
        return {
            "cpu_model": self.cpu_model,
            "cpus": self.cpus,
            "cpus_usable": self.cpus_usable,
            "memory_total_mib": self.memory_total_mib,
            "python": self.python,
        }

    def line(self) -> str:
        memory = f"{self.memory_total_mib / 1024:,.1f} GiB" if self.memory_total_mib is not None else "memory unknown"
        load = " ".join(f"{v:.2f}" for v in self.load_average)
        return (
            f"machine: {self.cpu_model}, {self.cpus} cores ({self.cpus_usable} usable), {memory}, "
            f"Python {self.python}; load average (1/5/15 min) {load}"
        )


def machine_conditions(
    cpuinfo: Path = Path("/proc/cpuinfo"), meminfo: Path = Path("/proc/meminfo")
) -> MachineConditions:
    """The machine now: CPU model, cores, memory, Python, and the load average at this moment."""
    model = "unknown"
    try:
        for line in cpuinfo.read_text().splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() == "model name" and value.strip():
                model = value.strip()
                break
    except OSError:
        pass
    memory: float | None = None
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) / 1024  # kB
                break
    except (OSError, IndexError, ValueError):
        pass
    cpus = os.cpu_count() or 1
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        usable = cpus
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        one = five = fifteen = float("nan")
    return MachineConditions(model, cpus, usable, memory, platform.python_version(), (one, five, fifteen))


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def bench_console(as_json: bool) -> Console:
    """Where a bench's progress and table go: stdout for people, stderr when stdout is the JSON object."""
    return Console(stderr=True) if as_json else Console()


def _finite(value: Any) -> Any:
    """The figures as JSON has them: a figure that could not be measured (nan, inf) is null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def print_json(figures: dict[str, Any]) -> None:
    """The one JSON object a `--json` bench prints on stdout (on one line, then a newline)."""
    sys.stdout.write(json.dumps(_finite(figures), allow_nan=False) + "\n")
    sys.stdout.flush()


def result_table(bench: str) -> Table:
    """The table every bench prints its results in: metric, value, target."""
    table = Table(title=f"dpufleet bench {bench}", box=None)
    table.add_column("METRIC")
    table.add_column("VALUE", justify="right")
    table.add_column("TARGET", justify="right")
    return table


def add_cost_rows(
    table: Table,
    dpus: int,
    seconds: float,
    server_cpu_seconds: float,
    redfish_requests: int,
    top_requests: list[tuple[str, int]],
) -> None:
    """What a fleet bench cost the control plane, per DPU: its CPU, and the Redfish requests the
    emulated BMCs served (in all, and the most frequent)."""
    per = max(1, dpus)
    table.add_row(
        "control plane CPU per DPU",
        f"{1000 * server_cpu_seconds / per:,.0f} ms",
        f"{server_cpu_seconds / max(seconds, 1e-9):.0%} of one core",
    )
    table.add_row("Redfish requests per DPU (all controllers)", f"{redfish_requests / per:,.1f}", "")
    for path, count in top_requests:
        table.add_row(f"  Redfish {path}", f"{count / per:.1f} per DPU", "")


@dataclass
class RunningServer:
    url: str
    token: str
    data_dir: Path
    process: subprocess.Popen[bytes]

    def client_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@contextmanager
def script_server(
    script: str,
    args: list[str],
    data_dir: Path,
    port: int,
    *,
    timeout: float = 30.0,
    env: dict[str, str] | None = None,
) -> Iterator[RunningServer]:
    """Run `python -c script *args` (a script that serves the API on 127.0.0.1:port from data_dir),
    wait for /readyz, and stop it (SIGTERM, then SIGKILL) on exit."""
    log_path = os.environ.get("DPUFLEET_BENCH_SERVER_LOG")  # where the server's output goes (default: nowhere)
    output = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 -- closed with the process
    # never the bench's stdout: with --json that is the JSON object alone
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *args], env={**os.environ, **(env or {})}, stdout=output, stderr=output
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with code {proc.returncode} while starting")
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not become ready in time")
            time.sleep(0.1)
        token = (data_dir / "admin.token").read_text().strip()
        yield RunningServer(url, token, data_dir, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


SERVE = """
import logging, sys
from pathlib import Path
from dpufleet.server.runner import serve
logging.basicConfig(level=logging.WARNING)
serve(Path(sys.argv[1]), sys.argv[2] or None, sys.argv[3], controllers=sys.argv[4])
"""


@contextmanager
def server_process(
    db_url: str | None = None,
    *,
    controllers: bool | str = True,
    timeout: float = 30.0,
    env: dict[str, str] | None = None,
) -> Iterator[RunningServer]:
    """A real `dpufleet server` in its own process on a free loopback port, stopped on exit.

    `controllers`: True (or "process") runs them as `dpufleet server` does by default, in a child
    process of the server (cpu_seconds and peak_rss_mib count both); "in-process" in the server's
    process; False (or "none") not at all."""
    mode = ("process" if controllers else "none") if isinstance(controllers, bool) else controllers
    with tempfile.TemporaryDirectory(prefix="dpufleet-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        port = free_port()
        args = [str(data_dir), db_url or "", f"127.0.0.1:{port}", str(mode)]
        with script_server(SERVE, args, data_dir, port, timeout=timeout, env=env) as running:
            if mode == "process":  # what is timed starts with the controllers running, as in one process
                deadline = time.monotonic() + timeout
                while httpx.get(running.url + "/readyz", timeout=5).json().get("controllers") != "running":
                    if time.monotonic() > deadline:
                        raise RuntimeError("the server's controller process did not start in time")
                    time.sleep(0.1)
            yield running
