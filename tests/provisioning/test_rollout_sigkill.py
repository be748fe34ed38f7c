"""Given a rolling update of 10 emulated DPUs with maxUnavailable 20% run by a control plane in its own
process, when that process is SIGKILLed twice mid-rollout and restarted on the same data dir, then at no
moment are more than 2 DPUs out of service on the hardware (sampled continuously from the emulated
BMCs), and the rollout completes with exactly one flash per DPU: its limits come from the store."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from dpufleet.sim.bmc import SimBMC, TaskState
from dpufleet.sim.runner import SimOptions, sim_in_thread
from support.server import ServerProcess, start_server_process

from .conftest import Operator, discover, image_doc, upload

pytestmark = pytest.mark.timeout(240)

PAYLOAD = b"emulated OS 5.0 for the rollout SIGKILL test\n" * 300


def out_of_service(bmc: SimBMC) -> bool:
    """What a user of the DPU sees: it is being flashed, or it is not up running its OS."""
    flashing = any(t.state in (TaskState.NEW, TaskState.RUNNING) for t in bmc.tasks.values())
    return flashing or bmc.dpu.boot_progress != "OSRunning"


@contextmanager
def control_plane(data_dir: Path) -> Iterator[tuple[ServerProcess, Operator]]:
    server = start_server_process(data_dir)
    try:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.token}"}, timeout=10) as http:
            yield server, Operator(http)
    finally:
        server.kill()


def test_max_unavailable_holds_across_sigkill_and_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DPUFLEET_PROVISIONING_POLL_SECONDS", "0.05")
    monkeypatch.setenv("DPUFLEET_PROVISIONING_RETRY_SECONDS", "0.2")
    data_dir = tmp_path / "data"
    options = SimOptions(
        hosts=5, dpus_per_host=2, seed=91, directory=tmp_path / "fleet", time_scale=0.02, register=False, agents=False
    )
    with sim_in_thread(options) as fleet:
        bmcs = list(fleet.fleet.bmcs.values())
        worst = 0
        stop = threading.Event()

        def sample() -> None:
            nonlocal worst
            while not stop.is_set():
                worst = max(worst, sum(1 for b in bmcs if out_of_service(b)))
                time.sleep(0.005)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            for round_ in range(3):
                with control_plane(data_dir) as (server, op):
                    if round_ == 0:
                        discover(op, fleet)
                        for dpu in fleet.fleet.dpus:
                            resp = op.http.patch(
                                op.path("dpus", f"dpu-{dpu.serial.lower()}"),
                                json={"metadata": {"labels": {"tier": "edge"}}, "spec": {"hostRef": dpu.host_id}},
                                headers={"Content-Type": "application/merge-patch+json"},
                            )
                            assert resp.status_code == 200, resp.text
                        assert upload(op.http, PAYLOAD).status_code == 201
                        op.create("images", image_doc("os-5", "5.0", PAYLOAD))
                        op.create(
                            "dpusets",
                            {
                                "kind": "DPUSet",
                                "metadata": {"name": "edge"},
                                "spec": {
                                    "selector": {"matchLabels": {"tier": "edge"}},
                                    "template": {"image": "os-5"},
                                    "strategy": {"maxUnavailable": "20%"},
                                },
                            },
                        )
                    if round_ < 2:
                        # let the rollout get going, then kill the control plane mid-flight
                        target = 2 + 3 * round_

                        def started(s: dict[str, Any], target: int = target) -> bool:
                            return int(s["status"].get("updated", 0)) >= target

                        op.wait_object("dpusets", "edge", started, timeout=60)
                        server.kill()
                    else:
                        done = op.wait_object(
                            "dpusets", "edge", lambda s: s["status"].get("phase") == "Complete", timeout=120
                        )
                        assert done["status"]["ready"] == 10
        finally:
            stop.set()
            sampler.join(5)
        assert 1 <= worst <= 2, f"{worst} DPUs were out of service at once; maxUnavailable 20% of 10 is 2"
        for bmc in bmcs:
            assert bmc.dpu.firmware["DPU_OS"] == "5.0"
            assert len(bmc.tasks) == 1, f"{bmc.id}: {len(bmc.tasks)} flashes"
