"""A service placed on the host instead of its DPU (placement.runsOn Host) runs on the host agent's own
runtime (real runc), and moves host -> DPU -> host: each time it starts at the new place, ready, before it
stops at the old, so the service keeps a ready instance throughout."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from dpufleet.cli.main import app
from dpufleet.sim.runner import SimRunning
from provisioning.conftest import Operator
from services.fleet import service, services_fleet
from support.oci import tools_missing
from support.server import RunningServer

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(os.geteuid() != 0, reason="runc with cgroup limits needs root"),
    pytest.mark.skipif(bool(tools_missing()), reason=f"not installed: {', '.join(tools_missing())}"),
]


@pytest.fixture(scope="module")
def fleet(api: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimRunning]:
    with services_fleet(api, tmp_path_factory.mktemp("fleet")) as running:
        yield running


def runtimes(fleet: SimRunning, dpu: str) -> tuple[Any, Any]:
    """(the DPU agent's runtime, the host agent's runtime for that DPU)."""
    on_dpu = next(a.services for a in fleet.agents if a.services is not None)
    on_host = next(a.host_services[dpu] for a in fleet.agents if dpu in a.host_services)
    return on_dpu, on_host


def running(runtime: Any, service: str) -> bool:
    inst = runtime.instances.get(service)
    return inst is not None and inst.phase == "Running"


def status(site: Operator) -> dict[str, Any]:
    return (site.get("dpuservices", "edge") or {}).get("status") or {}


def move(api: RunningServer, site: Operator, fleet: SimRunning, dpu: str, to: str) -> list[tuple[int, bool, bool]]:
    """`dpufleet service run-on edge <to>`; sample (ready instances, runs on the DPU, runs on the host) until
    it has moved."""
    on_dpu, on_host = runtimes(fleet, dpu)
    samples: list[tuple[int, bool, bool]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append((int(status(site).get("ready") or 0), running(on_dpu, "edge"), running(on_host, "edge")))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    args = ["--server", api.url, "--token", api.token, "service", "run-on", "edge", to.lower(), "--wait", "60"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"run on the {to.lower()}, ready" in result.output
    stays, leaves = (on_dpu, on_host) if to == "DPU" else (on_host, on_dpu)
    site.wait_for(
        f"the instance moved to the {to}",
        lambda: (status(site), running(stays, "edge"), running(leaves, "edge")),
        lambda s: s[1] and not s[2] and s[0]["instances"][0].get("runsOn") == to and s[0].get("ready") == 1,
        timeout=60,
    )
    done.set()
    sampler.join(timeout=5)
    return samples


def logs_on(site: Operator, where: set[str]) -> None:
    """`dpufleet service logs edge` shows lines from `where` (DPU, Host) and nowhere else: the DPU's and
    the host's runtime each keep their own, and what a runtime no longer runs it no longer reports."""
    site.wait_for(
        f"the logs from {where}",
        lambda: site.http.get("/services/v1/projects/default/dpuservices/edge/logs").json()["instances"],
        lambda found: (
            {i["runsOn"] for i in found} == where and all(any("edge on" in line for line in i["lines"]) for i in found)
        ),
        timeout=60,
    )


def test_a_service_runs_on_the_host_and_moves_to_the_dpu_and_back(
    api: RunningServer, site: Operator, fleet: SimRunning, image: dict[str, str]
) -> None:
    dpu = f"dpu-{fleet.fleet.dpus[0].serial.lower()}"
    edge = service(
        "edge", image, "echo edge on $(hostname); sleep 3600", placement={"mode": "EveryDPU", "runsOn": "Host"}
    )
    site.create("dpuservices", edge)
    st = site.wait_for("the service ready on the host", lambda: status(site),
                       lambda s: s.get("ready") == 1, timeout=90)  # fmt: skip
    (inst,) = st["instances"]
    assert inst["dpu"] == dpu and inst["runsOn"] == "Host" and inst["host"]
    on_dpu, on_host = runtimes(fleet, dpu)
    assert running(on_host, "edge") and not running(on_dpu, "edge")
    allocation = (site.get("dpuallocations", dpu) or {})["status"]
    assert [e["service"] for e in allocation["hostInstances"]] == ["edge"] and allocation.get("instances") == []
    assert (on_host.runc_root / "dpufleet-edge").exists() or any(on_host.runc_root.iterdir())

    logs_on(site, {"Host"})
    for to in ("DPU", "Host"):
        samples = move(api, site, fleet, dpu, to)
        assert samples, "nothing sampled"
        assert all(ready >= 1 for ready, _, _ in samples), samples  # a ready instance all along
        assert all(d or h for _, d, h in samples), (to, samples)  # never running nowhere
        assert any(d and h for _, d, h in samples), samples  # the new one started before the old stopped
        logs_on(site, {to})  # the logs of where it runs now; the old place's went with its instance
    result = CliRunner().invoke(app, ["--server", api.url, "--token", api.token, "service", "logs", "edge"])
    assert result.exit_code == 0 and f"[{dpu} host] edge on" in result.output, result.output
    started = {
        e["message"].split(":")[0] for e in site.events("DPUService", "edge") if e["reason"] == "InstanceStarted"
    }
    assert started == {dpu, f"{dpu}'s host"}  # the Events say where each start was
