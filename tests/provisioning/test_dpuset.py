"""Given a discovered emulated fleet of 8 DPUs on 4 hosts, when a DPUSet rolls an image out, then
maxUnavailable and the per-host cap are never exceeded (checked continuously, counted from the store),
every DPU ends up running the image, and a canary holds until promoted."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from typer.testing import CliRunner

from dpufleet.api.kinds import FAILED_PHASES, WORKING_PHASES
from dpufleet.main import app
from dpufleet.sim.runner import SimRunning
from support.server import RunningServer

from .conftest import Operator, image_doc, upload

pytestmark = pytest.mark.timeout(120)

PAYLOAD = b"emulated DOCA 2.11 BFB payload\n" * 500
VERSION = "DOCA_2.11.0_BSP_4.11.0_Ubuntu_22.04-1.1"


def unavailable(dpu: dict[str, Any], image: str) -> bool:
    status = dpu.get("status") or {}
    phase = status.get("phase")
    updating = (dpu.get("spec") or {}).get("image") == image and not (
        phase == "Ready" and status.get("installedImage") == image
    )
    return phase in WORKING_PHASES or phase in FAILED_PHASES or updating


class Watchdog:
    """Samples the fleet continuously while the rollout runs; remembers the worst moment."""

    def __init__(self, op: Operator, image: str) -> None:
        self.op, self.image = op, image
        self.worst = 0
        self.worst_per_host = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            busy = [
                d
                for d in self.op.items("dpus")
                if d["metadata"]["labels"].get("rollout") == "yes" and unavailable(d, self.image)
            ]
            self.worst = max(self.worst, len(busy))
            hosts: dict[str, int] = {}
            for d in busy:
                host = d["status"].get("host") or d["spec"].get("hostRef") or "?"
                hosts[host] = hosts.get(host, 0) + 1
            self.worst_per_host = max([self.worst_per_host, *hosts.values()])
            time.sleep(0.05)

    def __enter__(self) -> Watchdog:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self.thread.join(5)


def label_all(op: Operator, fleet: SimRunning) -> list[str]:
    """Label every DPU for the rollout and declare the host it sits in (this fleet runs no host agents)."""
    for dpu in fleet.fleet.dpus:
        resp = op.http.patch(
            op.path("dpus", f"dpu-{dpu.serial.lower()}"),
            json={"metadata": {"labels": {"rollout": "yes"}}, "spec": {"hostRef": dpu.host_id}},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert resp.status_code == 200, resp.text
    return sorted(f"dpu-{d.serial.lower()}" for d in fleet.fleet.dpus)


def test_updates_start_only_inside_a_maintenance_window(site: Operator, fleet: SimRunning) -> None:
    label_all(site, fleet)
    tomorrow = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[(datetime.now(UTC).weekday() + 1) % 7]
    site.create(
        "dpusets",
        {
            "kind": "DPUSet",
            "metadata": {"name": "weekend"},
            "spec": {
                "selector": {"matchLabels": {"rollout": "yes"}},
                "template": {"image": "not-yet"},
                "strategy": {"windows": [{"days": [tomorrow], "start": "00:00", "end": "23:59"}]},
            },
        },
    )
    held = site.wait_object("dpusets", "weekend", lambda s: s["status"].get("phase") == "OutsideWindow")
    assert held["status"]["updated"] == 0
    assert not [d for d in site.items("dpus") if d["spec"].get("image") == "not-yet"]
    assert site.http.delete(site.path("dpusets", "weekend")).status_code == 200


def test_a_rolling_update_never_exceeds_its_limits_and_converges(site: Operator, fleet: SimRunning) -> None:
    names = label_all(site, fleet)
    assert upload(site.http, PAYLOAD).status_code == 201
    site.create("images", image_doc("doca-2-11", VERSION, PAYLOAD))
    with Watchdog(site, "doca-2-11") as watchdog:
        site.create(
            "dpusets",
            {
                "kind": "DPUSet",
                "metadata": {"name": "fleet-os"},
                "spec": {
                    "selector": {"matchLabels": {"rollout": "yes"}},
                    "template": {"image": "doca-2-11"},
                    "strategy": {"type": "RollingUpdate", "maxUnavailable": "25%", "maxUnavailablePerHost": 1},
                },
            },
        )
        dpuset = site.wait_object("dpusets", "fleet-os", lambda s: s["status"].get("phase") == "Complete", timeout=90)
    assert dpuset["status"]["ready"] == len(names) == 8
    assert dpuset["status"]["maxUnavailable"] == 2
    assert 1 <= watchdog.worst <= 2, f"at worst {watchdog.worst} DPUs were unavailable at once (limit 2)"
    assert watchdog.worst_per_host <= 1, "two DPUs of one host were down at once"
    for bmc in fleet.fleet.bmcs.values():
        assert bmc.dpu.firmware["DPU_OS"] == VERSION


def test_a_dpu_selected_by_two_sets_belongs_to_the_older_one(site: Operator, fleet: SimRunning) -> None:
    label_all(site, fleet)
    site.create(
        "dpusets",
        {
            "kind": "DPUSet",
            "metadata": {"name": "latecomer"},
            "spec": {"selector": {"matchLabels": {"rollout": "yes"}}, "template": {"image": "no-such-image"}},
        },
    )
    late = site.wait_object("dpusets", "latecomer", lambda s: s["status"].get("observedGeneration") == 1)
    assert late["status"]["dpus"] == 0
    assert "belong to an older DPUSet" in (late["status"]["conditions"][0]["message"])
    assert not [d for d in site.items("dpus") if d["spec"].get("image") == "no-such-image"]
    assert site.http.delete(site.path("dpusets", "latecomer")).status_code == 200


def test_a_canary_holds_until_promoted(site: Operator, fleet: SimRunning) -> None:
    assert site.http.delete(site.path("dpusets", "fleet-os")).status_code == 200
    names = label_all(site, fleet)
    payload = b"emulated DOCA 2.12 BFB payload\n" * 500
    assert upload(site.http, payload).status_code == 201
    site.create("images", image_doc("doca-2-12", "DOCA_2.12.0_BSP_4.12.0_Ubuntu_22.04-1.1", payload))
    site.create(
        "dpusets",
        {
            "kind": "DPUSet",
            "metadata": {"name": "canary"},
            "spec": {
                "selector": {"matchLabels": {"rollout": "yes"}},
                "template": {"image": "doca-2-12"},
                "strategy": {"type": "Canary", "canary": 2, "maxUnavailable": 2},
            },
        },
    )
    held = site.wait_object("dpusets", "canary", lambda s: s["status"].get("phase") == "CanaryHold", timeout=60)
    assert held["status"]["updated"] == 2 and held["status"]["ready"] == 2
    time.sleep(1.0)  # holding: nothing else is touched
    assert sum(1 for d in site.items("dpus") if d["spec"].get("image") == "doca-2-12") == 2
    dpuset = site.get("dpusets", "canary")
    assert dpuset is not None
    dpuset["spec"]["strategy"]["type"] = "RollingUpdate"
    resp = site.http.put(site.path("dpusets", "canary"), json=dpuset)
    assert resp.status_code == 200, resp.text
    done = site.wait_object("dpusets", "canary", lambda s: s["status"].get("phase") == "Complete", timeout=90)
    assert done["status"]["ready"] == len(names)


def test_undo_returns_every_dpu_to_the_previous_image(site: Operator, fleet: SimRunning, api: RunningServer) -> None:
    """Continuing from the promoted canary (all on 2.12): roll forward to 2.11's image, then undo."""
    resp = site.http.patch(
        site.path("dpusets", "canary"),
        json={"spec": {"template": {"image": "doca-2-11"}}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert resp.status_code == 200, resp.text
    site.wait_object(
        "dpusets",
        "canary",
        lambda s: s["status"].get("phase") == "Complete" and s["status"]["currentTemplate"].get("image") == "doca-2-11",
        timeout=90,
    )
    assert {b.dpu.firmware["DPU_OS"] for b in fleet.fleet.bmcs.values()} == {VERSION}
    out = CliRunner().invoke(app, ["--server", api.url, "--token", api.token, "rollout", "undo", "canary"])
    assert out.exit_code == 0, out.output
    assert "rolling back to image doca-2-12" in out.output
    site.wait_object(
        "dpusets",
        "canary",
        lambda s: s["status"].get("phase") == "Complete" and s["status"]["currentTemplate"].get("image") == "doca-2-12",
        timeout=90,
    )
    assert {b.dpu.firmware["DPU_OS"] for b in fleet.fleet.bmcs.values()} == {"DOCA_2.12.0_BSP_4.12.0_Ubuntu_22.04-1.1"}
    status = CliRunner().invoke(app, ["--server", api.url, "--token", api.token, "rollout", "status", "canary"])
    assert "Complete - 8/8 ready" in status.output


def test_abort_stops_the_rollout_and_resume_finishes_it(site: Operator, fleet: SimRunning, api: RunningServer) -> None:
    """Continuing from undo (all on 2.12): roll forward to 2.11, abort while DPUs are writing."""
    old, new = "DOCA_2.12.0_BSP_4.12.0_Ubuntu_22.04-1.1", VERSION

    def rollout(*args: str) -> Any:
        return CliRunner().invoke(app, ["--server", api.url, "--token", api.token, "rollout", *args, "canary"])

    resp = site.http.patch(
        site.path("dpusets", "canary"),
        json={"spec": {"template": {"image": "doca-2-11"}, "strategy": {"maxUnavailable": 2}}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert resp.status_code == 200, resp.text
    site.wait_for(
        "a DPU writing the new image",
        lambda: site.items("dpus"),
        lambda dpus: any((d.get("status") or {}).get("phase") == "Installing" for d in dpus),
        timeout=30,
    )
    out = rollout("abort")
    assert out.exit_code == 0 and "aborted" in out.output, out.output
    site.wait_object("dpusets", "canary", lambda s: s["status"].get("phase") == "Aborted", timeout=15)

    def settled(dpus: list[dict[str, Any]]) -> bool:
        return all((d.get("status") or {}).get("phase") in ("Ready", "Available") for d in dpus)

    site.wait_for("every DPU settled", lambda: site.items("dpus"), settled, timeout=30)
    time.sleep(1.5)  # the rollout starts nothing more
    dpus = site.items("dpus")
    running = {f"dpu-{b.dpu.serial.lower()}": b.dpu.firmware["DPU_OS"] for b in fleet.fleet.bmcs.values()}
    finished = [n for n, v in running.items() if v == new]
    assert 1 <= len(finished) < 8, running
    for d in dpus:  # each runs what its spec names: the ones writing finished, the others were put back
        name = d["metadata"]["name"]
        assert d["spec"]["image"] == ("doca-2-11" if running[name] == new else "doca-2-12"), (name, running[name])
        assert running[name] in (old, new)
    status = rollout("status")
    assert status.exit_code == 0 and "Aborted" in status.output, status.output

    assert rollout("resume").exit_code == 0
    site.wait_object(
        "dpusets",
        "canary",
        lambda s: s["status"].get("phase") == "Complete" and s["status"]["currentTemplate"].get("image") == "doca-2-11",
        timeout=90,
    )
    assert {b.dpu.firmware["DPU_OS"] for b in fleet.fleet.bmcs.values()} == {new}
