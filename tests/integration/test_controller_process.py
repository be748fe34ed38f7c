"""Given `dpufleet server` run as a user runs it (the controllers in a child process it supervises), when
an emulated fleet is discovered and a DPU is given an image, then the child provisions it to Ready:
the server's writes reach it through the change log, the BMCs subscribe to the server's receiver and
fetch the image from the server's URL, and the events they push are relayed to the child (the
provisioner polls only every 60 s, so Ready within seconds means the pushed events woke it). When the
child is SIGKILLed, the server starts it again and the next DPU is provisioned the same way; when the
server stops, so does the child.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from dpufleet.bench.harness import child_pids
from dpufleet.sim.runner import SimOptions, sim_in_thread
from provisioning.conftest import discover
from support.operator import Operator
from support.server import ServerProcess, start_cli_server

pytestmark = pytest.mark.timeout(120)

PAYLOAD = b"emulated OS 9.0, provisioned by the controller process\n" * 100
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


def _is_controller(pid: int) -> bool:
    """A child that runs dpufleet (the controller process), not the telemetry bus's nats-server."""
    try:
        return b"dpufleet" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def controller_pid(server: ServerProcess, other_than: int | None = None, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = [pid for pid in child_pids(server.proc.pid) if pid != other_than and _is_controller(pid)]
        if children:
            assert len(children) == 1, children
            return children[0]
        time.sleep(0.05)
    raise AssertionError(f"no controller process under the server: {server.log_path.read_text()[-3000:]}")


def provision(op: Operator, name: str) -> float:
    started = time.monotonic()
    resp = op.http.patch(
        op.path("dpus", name),
        json={"spec": {"image": "os-9"}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert resp.status_code == 200, resp.text
    dpu = op.wait_object("dpus", name, lambda d: d["status"].get("phase") == "Ready", timeout=40)
    assert dpu["status"]["installedImage"] == "os-9"
    return time.monotonic() - started


def test_the_controller_child_provisions_and_is_restarted_after_sigkill(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DPUFLEET_PROVISIONING_POLL_SECONDS", "60")  # only pushed events make it fast
    monkeypatch.setenv("DPUFLEET_PROVISIONING_RETRY_SECONDS", "0.2")
    options = SimOptions(
        hosts=2,
        dpus_per_host=1,
        seed=91,
        directory=tmp_path / "fleet",
        time_scale=0.005,  # a 60 s update takes 0.3 s, a 40 s boot 0.2 s
        register=False,
        agents=False,
    )
    server = start_cli_server(tmp_path / "data")  # the default: --controllers process
    second: int | None = None
    try:
        first = controller_pid(server)
        with (
            sim_in_thread(options) as fleet,
            httpx.Client(
                base_url=server.url, headers={"Authorization": f"Bearer {server.token}"}, timeout=10.0
            ) as http,
        ):
            op = Operator(http)
            names = discover(op, fleet)  # both DPUs inventoried by the child

            def subscribed(bmcs: list[dict[str, Any]]) -> bool:
                return len(bmcs) == 2 and all(
                    ((b.get("status") or {}).get("eventSubscription") or {}).get("state") == "Subscribed" for b in bmcs
                )

            bmcs = op.wait_for("the BMCs subscribed to events", lambda: op.items("bmcs"), subscribed, timeout=30)
            for bmc in bmcs:  # to this server's receiver: the child was told the server's URL
                assert bmc["status"]["eventSubscription"]["destination"].startswith(server.url + "/health/v1/")

            assert http.put(f"/images/v1/blobs/sha256/{DIGEST}", content=PAYLOAD).status_code == 201
            component = {"name": "os", "type": "os", "version": "9.0", "sha256": DIGEST, "size": len(PAYLOAD)}
            op.create(
                "images",
                {"kind": "Image", "metadata": {"name": "os-9"}, "spec": {"version": "9.0", "components": [component]}},
            )

            took = provision(op, names[0])
            assert took < 30, f"Ready after {took:.1f}s: the pushed events did not reach the controller process"
            # the child's controller metrics are part of the server's /metrics
            metrics = http.get("/metrics").text
            assert re.search(r'dpufleet_dpu_phase_transitions_total\{from_phase="\w+",to_phase="Ready"\} 1\.0', metrics)
            assert 'dpufleet_controller_reconciles_total{controller="DPUProvisioner"' in metrics
            assert metrics.count("# TYPE dpufleet_controller_reconciles_total counter") == 1
            # the server's metrics of its child: the events it relayed, none dropped, no restart yet
            relayed = re.search(r"^dpufleet_event_relay_sent_total (\S+)$", metrics, re.M)
            assert relayed is not None and float(relayed.group(1)) > 0, metrics
            assert re.search(r"^dpufleet_event_relay_dropped_total 0\.0$", metrics, re.M)
            assert re.search(r"^dpufleet_controller_process_restarts_total 0\.0$", metrics, re.M)

            os.kill(first, signal.SIGKILL)
            second = controller_pid(server, other_than=first)
            assert second != first
            op.wait_for(
                "the restarted controller process running (/readyz)",
                lambda: http.get("/readyz").json(),
                lambda body: body == {"status": "ready", "controllers": "running"},
                timeout=20,
            )

            took = provision(op, names[1])
            assert took < 30, f"Ready after {took:.1f}s with the restarted controller process"
            assert re.search(r"^dpufleet_controller_process_restarts_total 1\.0$", http.get("/metrics").text, re.M)
        log = server.log_path.read_text()
        assert f"the controller process {first} exited (signal 9); starting it again in 1 s" in log
        assert f"controllers running in process {second}" in log
    finally:
        server.stop()
    assert server.proc.returncode is not None and second is not None
    time.sleep(0.2)
    assert not Path(f"/proc/{second}").exists() or "zombie" in Path(f"/proc/{second}/status").read_text(), (
        "the controller process outlived its server"
    )


@pytest.mark.parametrize("args", [["--controllers", "in-process"], ["--no-controllers"]])  # the alias of "none"
def test_the_single_process_modes_start_no_child(tmp_path: Path, args: list[str]) -> None:
    server = start_cli_server(tmp_path / "data", *args)
    try:
        assert httpx.get(server.url + "/readyz").json() == {"status": "ready"}
        time.sleep(0.5)
        assert [pid for pid in child_pids(server.proc.pid) if _is_controller(pid)] == []  # nats-server aside
        mode = "in this process" if "in-process" in args else "none"
        assert f"controllers: {mode}" in server.log_path.read_text()
    finally:
        server.stop()


def test_an_unknown_controllers_mode_is_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dpufleet.main", "server", "--data-dir", str(tmp_path), "--controllers", "threads"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "expected one of process, in-process, none" in result.stderr
