"""Given a DPUSet rolling an image out with maxUnavailable 1, when one of its DPUs suffers an OS hang
(dpufleet.sim.faults), then remediation repairs it without breaking the rollout's limit: never more than
one DPU unavailable, counted as the DPUSet controller counts (fleet/dpuset.py), and the rollout
completes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from dpufleet import plane as manager
from dpufleet.api.kinds import FAILED_PHASES, WORKING_PHASES, Phase
from dpufleet.fleet.dpuset import OUT_OF_SERVICE
from dpufleet.provisioning.controller import DPUProvisioner
from dpufleet.sim import faults
from dpufleet.sim.runner import SimRunning, sim_in_thread
from provisioning.conftest import Operator, discover, fast_provisioner, fleet_options, image_doc, upload

from .conftest import FAST_POLICY, Agents, health_server, healthy, history

pytestmark = pytest.mark.timeout(120)

PAYLOAD = b"emulated OS image for the rollout-with-a-fault test\n" * 200
IMAGE = "os-under-fault"


def unavailable(dpu: dict[str, Any]) -> bool:
    """As DPUSetReconciler counts: working, failed or held, out of service by diagnosis, or updating."""
    status = dpu.get("status") or {}
    phase = status.get("phase")
    if phase in WORKING_PHASES or phase in FAILED_PHASES or phase == Phase.HELD:
        return True
    if (status.get("diagnosis") or {}).get("failureClass") in OUT_OF_SERVICE:
        return True
    return (dpu.get("spec") or {}).get("image") == IMAGE and not (
        phase == Phase.READY and status.get("installedImage") == IMAGE
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Operator, SimRunning, Agents]]:
    with pytest.MonkeyPatch.context() as mp:
        factories = [f for f in manager.DEFAULT_RECONCILERS if f is not DPUProvisioner] + [fast_provisioner]
        mp.setattr(manager, "DEFAULT_RECONCILERS", factories)
        with health_server(tmp_path_factory.mktemp("api")) as api, api.client() as http:
            assert api.server is not None
            from dpufleet.images.repository import ImageRepository

            repo = api.server.services.repository
            assert isinstance(repo, ImageRepository)
            repo.public_url = api.url
            repo.allow_private_mirrors = True
            with sim_in_thread(fleet_options(api, tmp_path_factory.mktemp("fleet"), hosts=3)) as fleet:
                op = Operator(http)
                discover(op, fleet)
                op.create("remediationpolicies", FAST_POLICY)
                with api.client() as agent_http:
                    agents = Agents(agent_http, list(fleet.fleet.dpus))
                    thread = threading.Thread(target=agents.loop, daemon=True)
                    thread.start()
                    try:
                        op.wait_for(
                            "every DPU Healthy",
                            lambda: op.items("dpus"),
                            lambda dpus: len(dpus) == len(fleet.fleet.dpus) and all(healthy(d) for d in dpus),
                            timeout=20,
                        )
                        yield op, fleet, agents
                    finally:
                        agents.stop()
                        thread.join(timeout=5)


def test_an_os_hang_during_a_rollout_keeps_max_unavailable(site: tuple[Operator, SimRunning, Agents]) -> None:
    op, fleet, _agents = site
    names = []
    for dpu in fleet.fleet.dpus:
        name = f"dpu-{dpu.serial.lower()}"
        names.append(name)
        resp = op.http.patch(
            op.path("dpus", name),
            json={"metadata": {"labels": {"rollout": "yes"}}, "spec": {"hostRef": dpu.host_id}},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert resp.status_code == 200, resp.text
    assert upload(op.http, PAYLOAD).status_code == 201
    op.create("images", image_doc(IMAGE, "OS-9.9", PAYLOAD))

    worst: list[int] = [0]
    samples: list[list[str]] = []
    stop = threading.Event()

    victim_holder: list[str] = []
    started_while_out: list[str] = []
    targeted: set[str] = set()

    def watch() -> None:
        # The fault itself is not the rollout's doing: the limit applies to what the rollout and remediation
        # choose to take down. So: the others never exceed it, and no update starts while the victim is out.
        while not stop.is_set():
            dpus = op.items("dpus")
            victim = victim_holder[0] if victim_holder else None
            out = any(d["metadata"]["name"] == victim and unavailable(d) for d in dpus)
            busy = [d["metadata"]["name"] for d in dpus if unavailable(d) and d["metadata"]["name"] != victim]
            now_targeted = {d["metadata"]["name"] for d in dpus if (d.get("spec") or {}).get("image") == IMAGE}
            if out:
                started_while_out.extend(sorted(now_targeted - targeted - {victim or ""}))
            targeted.update(now_targeted)
            if len(busy) > worst[0]:
                worst[0] = len(busy)
                samples.append(busy)
            time.sleep(0.03)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        op.create(
            "dpusets",
            {
                "kind": "DPUSet",
                "metadata": {"name": "under-fault"},
                "spec": {
                    "selector": {"matchLabels": {"rollout": "yes"}},
                    "template": {"image": IMAGE},
                    "strategy": {"type": "RollingUpdate", "maxUnavailable": 1, "maxUnavailablePerHost": 1},
                },
            },
        )
        # the rollout has started on some DPU: hang the OS of the last DPU, which it has not reached yet
        op.wait_for(
            "the rollout to start",
            lambda: op.items("dpus"),
            lambda dpus: any((d.get("spec") or {}).get("image") == IMAGE for d in dpus),
        )
        victim_sim = sorted(fleet.fleet.dpus, key=lambda d: f"dpu-{d.serial.lower()}")[-1]
        victim = f"dpu-{victim_sim.serial.lower()}"
        victim_holder.append(victim)
        faults.inject(fleet, victim_sim.id, "os-hang")
        op.wait_object("dpus", victim, lambda d: (d["status"].get("diagnosis") or {}).get("failureClass") == "OSHang")
        dpuset = op.wait_object(
            "dpusets", "under-fault", lambda s: (s.get("status") or {}).get("phase") == "Complete", timeout=90
        )
    finally:
        stop.set()
        watcher.join(5)
        faults.clear(fleet, victim_sim.id)
    assert worst[0] <= 1, f"{worst[0]} DPUs unavailable at once (maxUnavailable 1): {samples[-1]}"
    # at most the one update already under way when the hang was diagnosed may have been in flight: the
    # rollout may have chosen it from a read of the DPUs just before the diagnosis was written (CI saw this once);
    # a rollout that ignored the hung DPU would go on starting one after another while it is out
    assert len(set(started_while_out)) <= 1, f"updates started while the hung DPU was out: {started_while_out}"
    assert dpuset["status"]["ready"] == len(names)
    dpu = op.wait_object("dpus", victim, lambda d: healthy(d))
    assert ("reboot", "Succeeded") in history(dpu) and ("recovered", "Recovered") in history(dpu)
    for name in names:
        assert op.get("dpus", name)["status"].get("installedImage") == IMAGE  # type: ignore[index]
