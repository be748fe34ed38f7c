"""Given DPUs being provisioned by a control plane running as its own process, when that process is
SIGKILLed as a DPU reaches each phase (polled through the API), and a new one starts on the same data
dir, then every DPU reaches Ready running the image, with exactly one SimpleUpdate on its BMC.

The emulated fleet runs in this process (its BMCs are counted directly); the control plane is a
child process killed with SIGKILL, so no shutdown code of it runs. One DPU per phase boundary: the
server is killed once per DPU, at the moment that DPU is seen in its phase; earlier DPUs resume (and
may be killed again in whatever phase they are in) each time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from dpufleet.sim.runner import SimOptions, sim_in_thread
from support.server import ServerProcess, start_server_process

from .conftest import Operator, discover, image_doc, upload

pytestmark = pytest.mark.timeout(180)

PAYLOAD = b"emulated OS 4.0 for the SIGKILL test\n" * 300
# Where each DPU is when its server is killed: every state provisioning writes down on its way. A pass
# that goes through several phases at once writes them together (provisioning/controller.py `hold`):
# validation (Available), host preparation with nothing to wait for, and staging content already in the
# repository are written with Installing's first write, before the BMC is asked to flash; Configuring
# (a read-back of the versions) with Ready. A kill in between resumes from the state written before it,
# so these are all the states a restart can meet. "Available" is the moment right after the spec names
# the image; PreparingHost waits for a drain acknowledgement, so it is seen there.
KILL_AT = ["Available", "PreparingHost", "Installing", "Rebooting"]


@contextmanager
def control_plane(data_dir: Path) -> Iterator[tuple[ServerProcess, Operator]]:
    server = start_server_process(data_dir)
    try:
        with httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {server.token}"}, timeout=10.0
        ) as http:
            yield server, Operator(http)
    finally:
        server.kill()


def phase(op: Operator, name: str) -> str | None:
    dpu = op.get("dpus", name)
    return None if dpu is None else (dpu.get("status") or {}).get("phase")


def merge_patch(op: Operator, plural: str, name: str, doc: dict[str, Any]) -> None:
    op.patch(plural, name, doc)


def test_sigkill_at_every_phase_boundary_resumes_with_one_flash_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the child server polls the emulated BMCs often (its default is every 3 s, as DPF)
    monkeypatch.setenv("DPUFLEET_PROVISIONING_POLL_SECONDS", "0.05")
    monkeypatch.setenv("DPUFLEET_PROVISIONING_RETRY_SECONDS", "0.2")
    monkeypatch.setenv("DPUFLEET_CONTROLLER_ID", "sigkill-test/provisioner")
    data_dir = tmp_path / "data"
    options = SimOptions(
        hosts=len(KILL_AT),
        dpus_per_host=1,
        seed=77,
        directory=tmp_path / "fleet",
        time_scale=0.02,  # an update takes 1.2 s, a boot about 1 s
        latency=0.03,  # every Redfish request takes a little time, so every BMC-bound phase is seen
        register=False,
        agents=False,
    )
    with sim_in_thread(options) as fleet:
        bmcs = sorted(fleet.fleet.bmcs.values(), key=lambda b: b.dpu.serial)
        names = [f"dpu-{b.dpu.serial.lower()}" for b in bmcs]
        killed_at: dict[str, str] = {}

        for index, (target, name) in enumerate(zip(KILL_AT, names, strict=True)):
            with control_plane(data_dir) as (server, op):
                if index == 0:
                    discover(op, fleet)
                    assert upload(op.http, PAYLOAD).status_code == 201
                    op.create("images", image_doc("os-4", "4.0", PAYLOAD))
                    # the PreparingHost DPU waits for a drain acknowledgement, so it is seen there
                    op.create("hosts", {"kind": "Host", "metadata": {"name": "rack1-host"}, "spec": {}})
                spec: dict[str, Any] = {"image": "os-4"}
                if target == "PreparingHost":
                    spec |= {"hostRef": "rack1-host", "hostPolicy": "drain"}
                merge_patch(op, "dpus", name, {"spec": spec})
                if target != "Available":
                    deadline = time.monotonic() + 30
                    while (seen := phase(op, name)) != target:
                        assert seen not in ("Ready", *[p + "Failed" for p in KILL_AT]), f"{name}: passed {target}"
                        assert time.monotonic() < deadline, f"{name} never reached {target} (last {seen})"
                        time.sleep(0.01)
                server.kill()
                killed_at[name] = target

        with control_plane(data_dir) as (_server, op):
            drained = names[KILL_AT.index("PreparingHost")]
            op.wait_object("dpus", drained, lambda d: d["status"].get("phase") == "PreparingHost", timeout=20)
            host = op.get("hosts", "rack1-host")
            assert host is not None and f"dpufleet.io/drain-request.{drained}" in host["metadata"]["annotations"]
            merge_patch(
                op, "hosts", "rack1-host", {"metadata": {"annotations": {f"dpufleet.io/drain-ack.{drained}": "done"}}}
            )
            for name in names:
                dpu = op.wait_object("dpus", name, lambda d: d["status"].get("phase") == "Ready", timeout=60)
                assert dpu["status"]["installedImage"] == "os-4", name
            host = op.get("hosts", "rack1-host")
            assert host is not None
            assert not [a for a in host["metadata"].get("annotations") or {} if a.startswith("dpufleet.io/")], (
                "the drain request and taint are undone at Ready"
            )

        for bmc, name in zip(bmcs, names, strict=True):
            assert bmc.dpu.firmware["DPU_OS"] == "4.0", name
            assert len(bmc.tasks) == 1, f"{name} (killed at {killed_at[name]}): {len(bmc.tasks)} SimpleUpdates"
