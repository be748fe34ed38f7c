"""The commands a user runs first, as real processes: the agent inventorying this very machine,
and `dpufleet sim up` serving Redfish until Ctrl-C.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
import yaml

from support.net import free_port

pytestmark = pytest.mark.timeout(60)

CLI = [sys.executable, "-m", "dpufleet.main"]


def env() -> dict[str, str]:
    """No server, no user config: these commands must not need either."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DPUFLEET_")}
    return {**clean, "XDG_CONFIG_HOME": "/nonexistent-dpufleet-config", "COLUMNS": "200"}


def test_agent_once_print_shows_this_machines_inventory_as_yaml() -> None:
    run = subprocess.run(
        [*CLI, "agent", "--once", "--print"], capture_output=True, text=True, timeout=30, env=env(), check=False
    )
    assert run.returncode == 0, run.stderr
    inventory = yaml.safe_load(run.stdout)
    assert inventory["cpu"]["count"] == os.cpu_count()
    assert inventory["cpu"]["architecture"] in ("x86_64", "aarch64")
    with open("/proc/meminfo") as fh:
        mem_kib = int(fh.readline().split()[1])
    assert inventory["memory"]["total_bytes"] == mem_kib * 1024
    assert inventory["nics"], "this machine has at least one network interface besides lo"
    assert all(nic["name"] != "lo" for nic in inventory["nics"])
    assert inventory["kernel_release"] == os.uname().release
    assert inventory["hostname"]


class Lines:
    """A process's stdout read on a thread, so every wait for a line is bounded."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                self.lines.put(line.rstrip("\n"))
            self.lines.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def until(self, text: str, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                raise AssertionError(f"output ended before {text!r}: {self.seen}")
            self.seen.append(line)
            if text in line:
                return self.seen
        raise AssertionError(f"no {text!r} within {timeout}s: {self.seen}")


def test_sim_up_prints_its_endpoints_serves_redfish_and_stops_on_ctrl_c() -> None:
    proc = subprocess.Popen(
        [*CLI, "sim", "up", "--hosts", "2", "--no-register", "--no-agents", "--time-scale", "0.01"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
    )
    try:
        seen = Lines(proc).until("press Ctrl-C to stop", timeout=30)
        assert seen[0] == "emulated fleet up: 2 hosts, 2 DPUs, 2 BMCs"
        urls = [line.split()[-1] for line in seen if line.strip().startswith("host-")]
        assert [line.split()[0] for line in seen if line.strip().startswith("host-")] == [
            "host-000-dpu-0",
            "host-001-dpu-0",
        ]
        for url in urls:
            assert url.startswith("http://127.0.0.1:") and url.endswith("/redfish/v1")
            root = httpx.get(url, timeout=5).json()
            assert root["Product"] and root["RedfishVersion"]
        assert not any(line.startswith("reporting to") for line in seen)  # --no-register --no-agents
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=20)
        assert proc.returncode == 0, stderr
        assert "emulated fleet stopped" in stderr
        for url in urls:
            with pytest.raises(httpx.TransportError):
                httpx.get(url, timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_sim_up_with_an_unreachable_control_plane_fails_in_one_line() -> None:
    down = f"http://127.0.0.1:{free_port()}"
    run = subprocess.run(
        [*CLI, "sim", "up", "--hosts", "1", "--no-agents"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**env(), "DPUFLEET_SERVER": down, "DPUFLEET_TOKEN": "dpf_unused"},
        check=False,
    )
    assert run.returncode != 0
    assert "Traceback" not in run.stderr, run.stderr[-1500:]
    assert down in run.stderr
