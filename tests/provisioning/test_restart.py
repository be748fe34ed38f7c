"""Given a DPU in the middle of its install, when the control plane stops and a new one starts on the
same data dir, then the new one polls the task the old one started: the DPU reaches Ready with one flash.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dpufleet.sim.bmc import BmcTimings
from dpufleet.sim.runner import SimOptions, sim_in_thread
from dpufleet.store import reservations

from .conftest import OWNER, Operator, discover, image_doc, provisioning_server, upload

pytestmark = pytest.mark.timeout(120)


def test_a_restart_mid_install_resumes_without_a_second_flash(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    payload = b"emulated OS 3.0\n" * 200
    options = SimOptions(
        hosts=1, dpus_per_host=1, seed=7, directory=tmp_path / "fleet", time_scale=0.005, register=False, agents=False
    )
    with sim_in_thread(options) as fleet:
        bmc = next(iter(fleet.fleet.bmcs.values()))
        normal = bmc.timings
        # a slow flash (3 s), so the control plane is certainly stopped while it runs
        bmc.timings = BmcTimings(power_on_seconds=normal.power_on_seconds, update_seconds=600, time_scale=0.005)
        name = f"dpu-{bmc.dpu.serial.lower()}"

        with provisioning_server(data_dir) as first, first.client() as http:
            op = Operator(http)
            discover(op, fleet)
            assert upload(http, payload).status_code == 201
            op.create("images", image_doc("os-3", "3.0", payload))
            resp = http.patch(
                op.path("dpus", name),
                json={"spec": {"image": "os-3"}},
                headers={"Content-Type": "application/merge-patch+json"},
            )
            assert resp.status_code == 200
            op.wait_object("dpus", name, lambda d: bool((d["status"].get("provisioning") or {}).get("taskURI")), 20)
            assert first.server is not None
            held = reservations.holder(first.server.store, "DPU", "default", name)
            assert held is not None and held.owner == OWNER, "the install runs under a reservation"
        # the first control plane is gone, mid-install, its reservation left behind in the store
        assert len(bmc.tasks) == 1 and bmc.dpu.firmware["DPU_OS"] != "3.0"

        with provisioning_server(data_dir) as second, second.client() as http:
            op = Operator(http)
            dpu = op.wait_object("dpus", name, lambda d: d["status"].get("phase") == "Ready", timeout=30)
            assert dpu["status"]["installedImage"] == "os-3"
            assert bmc.dpu.firmware["DPU_OS"] == "3.0"
            assert len(bmc.tasks) == 1, "the restarted control plane resumed the task; it did not flash again"
            assert second.server is not None
            assert reservations.holder(second.server.store, "DPU", "default", name) is None
