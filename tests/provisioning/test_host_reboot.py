"""A host reboot does not reset its DPU (issue 6, the charter's "DPU is not affected if host is updated").

Given a host whose two DPUs were provisioned to Ready through the control plane, when the host
soft-resets (fault injection: host-soft-reset), then neither DPU boots again (boot count and
BootProgress unchanged throughout), each stays Ready on its image, and the control plane neither
reprovisions nor remediates it."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from dpufleet.sim.faults import FaultKind, active, inject
from dpufleet.sim.runner import SimRunning
from support.net import wait_until

from .conftest import Operator, image_doc, upload

pytestmark = pytest.mark.timeout(120)

MERGE = {"Content-Type": "application/merge-patch+json"}
PAYLOAD = b"emulated DOCA 2.10 BFB payload\n" * 500
VERSION = "DOCA_2.10.0_BSP_4.10.0_Ubuntu_22.04-1.1"
RESET_SECONDS = 2.0


class Sampler:
    """Samples the DPUs (sim and API) continuously while the host resets; remembers every anomaly."""

    def __init__(self, op: Operator, fleet: SimRunning, names: dict[str, Any]) -> None:
        self.op, self.fleet, self.names = op, fleet, names
        self.seen: list[str] = []
        self.host_went_down = False
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            for name, dpu in self.names.items():
                if dpu.boot_progress != "OSRunning" or not dpu.os_alive:
                    self.seen.append(f"{name}: sim BootProgress {dpu.boot_progress}, os_alive {dpu.os_alive}")
                status = (self.op.get("dpus", name) or {}).get("status") or {}
                if status.get("phase") != "Ready":
                    self.seen.append(f"{name}: phase {status.get('phase')}")
                failure = (status.get("diagnosis") or {}).get("failureClass", "Healthy")
                if failure != "Healthy":
                    self.seen.append(f"{name}: diagnosis {status['diagnosis']}")
            host = next(h for h in self.fleet.fleet.hosts if h.id == next(iter(self.names.values())).host_id)
            self.host_went_down |= not host.os_alive
            time.sleep(0.05)

    def __enter__(self) -> Sampler:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self.thread.join(5)


def test_a_host_reboot_does_not_reset_its_dpus(site: Operator, fleet: SimRunning) -> None:
    host = sorted(fleet.fleet.hosts, key=lambda h: h.id)[0]
    dpus = {f"dpu-{d.serial.lower()}": d for d in fleet.fleet.dpus if d.host_id == host.id}
    assert len(dpus) == 2
    assert upload(site.http, PAYLOAD).status_code == 201
    site.create("images", image_doc("doca-2-10", VERSION, PAYLOAD))
    for name, dpu in dpus.items():
        resp = site.http.patch(
            site.path("dpus", name), json={"spec": {"image": "doca-2-10", "hostRef": dpu.host_id}}, headers=MERGE
        )
        assert resp.status_code == 200, resp.text
    for name in dpus:
        site.wait_object(
            "dpus",
            name,
            lambda d: d["status"].get("phase") == "Ready" and d["status"].get("installedImage") == "doca-2-10",
            timeout=60,
        )
    time.sleep(0.5)  # let the last inventory and events of the install land
    boots = {name: dpu.boot_count for name, dpu in dpus.items()}
    progress_times = {name: dpu.boot_progress_time for name, dpu in dpus.items()}
    before = {name: site.get("dpus", name) for name in dpus}
    events_before = {name: len(site.events("DPU", name)) for name in dpus}

    with Sampler(site, fleet, dpus) as sampler:
        fault = inject(fleet.fleet, next(iter(dpus)), FaultKind.HOST_SOFT_RESET, RESET_SECONDS)
        assert fault["kind"] == "host-soft-reset"
        wait_until(lambda: not active(fleet.fleet), RESET_SECONDS + 10, interval=0.05, what="the host reset to end")
        time.sleep(2.0)  # the controllers' passes after the host is back

    assert sampler.host_went_down, "the fault did not take the host down"
    assert sampler.seen == [], "a DPU was affected by its host's reboot:\n" + "\n".join(sampler.seen[:20])
    for name, dpu in dpus.items():
        assert dpu.boot_count == boots[name], f"{name} rebooted with its host"
        assert dpu.boot_progress == "OSRunning"
        assert dpu.boot_progress_time == progress_times[name], f"{name}'s BootProgress changed"
        assert dpu.firmware["DPU_OS"] == VERSION
        after = site.get("dpus", name)
        assert after is not None and before[name] is not None
        assert after["status"]["phase"] == "Ready"
        assert after["status"].get("installedImage") == "doca-2-10"
        assert after["metadata"]["generation"] == before[name]["metadata"]["generation"]  # type: ignore[index]
        assert (after["status"].get("diagnosis") or {}).get("failureClass", "Healthy") == "Healthy"
        new_events = site.events("DPU", name)[events_before[name] :]
        assert [e for e in new_events if e.get("type") == "Warning"] == [], new_events
        assert not [e for e in new_events if "provision" in str(e.get("reason", "")).lower()], new_events
