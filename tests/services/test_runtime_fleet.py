"""A DPUService run for real on an emulated DPU: its agent enrolled over mTLS, its runtime on runc.

- the service's status goes Scheduled -> Running, with the instance ready and the DPU's runtime
  report (phase, revision, memory limit) in the DPU's DPUAllocation;
- `dpufleet service logs` shows what the instance wrote;
- a crash is a restart the service's status and Events show;
- cut off from the control plane, the DPU loses power and comes back: its instance runs again from
  what the DPU kept on disk, before the control plane is reachable.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dpufleet.cli.main import app
from dpufleet.sim.runner import SimRunning
from provisioning.conftest import Operator
from services.fleet import service, services_fleet
from support.net import wait_until
from support.oci import tools_missing
from support.server import RunningServer

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(os.geteuid() != 0, reason="runc with cgroup limits needs root"),
    pytest.mark.skipif(bool(tools_missing()), reason=f"not installed: {', '.join(tools_missing())}"),
]


@pytest.fixture(scope="module")
def fleet(api: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimRunning]:
    with services_fleet(api, tmp_path_factory.mktemp("fleet")) as running:
        yield running


def test_a_service_runs_on_the_dpu_and_shows_it(site: Operator, fleet: SimRunning, image: dict[str, str]) -> None:
    dpu = f"dpu-{fleet.fleet.dpus[0].serial.lower()}"
    site.create("dpuservices", service("hello", image, "echo hello from $(hostname); sleep 3600"))
    status = site.wait_for(
        "the service running and ready",
        lambda: (site.get("dpuservices", "hello") or {}).get("status") or {},
        lambda s: s.get("running") == 1 and s.get("ready") == 1,
        timeout=60,
    )
    assert status["phase"] == "Running"
    (inst,) = status["instances"]
    assert inst["dpu"] == dpu and inst["phase"] == "Running" and inst["restarts"] == 0
    running = next(c for c in status["conditions"] if c["type"] == "Running")
    assert running["status"] == "True" and running["reason"] == "AllRunning"
    allocation = site.get("dpuallocations", dpu) or {}
    (seen,) = allocation["status"]["instances"]
    assert seen["memoryLimitBytes"] == 32 * 1024 * 1024 and seen["revision"] == inst["revision"]
    logs = site.wait_for(
        "the instance's log",
        lambda: site.http.get("/services/v1/projects/default/dpuservices/hello/logs").json(),
        lambda body: any("hello from hello" in line for i in body["instances"] for line in i["lines"]),
    )
    assert logs["instances"][0]["dpu"] == dpu
    only = site.http.get("/services/v1/projects/default/dpuservices/hello/logs", params={"dpu": dpu}).json()
    assert [i["dpu"] for i in only["instances"]] == [dpu]
    elsewhere = site.http.get("/services/v1/projects/default/dpuservices/hello/logs", params={"dpu": "dpu-nowhere"})
    assert elsewhere.status_code == 400
    assert f"has no instance on DPU 'dpu-nowhere' (its instances' DPUs: {dpu})" in elsewhere.text
    assert any(e["reason"] == "InstanceStarted" for e in site.events("DPUService", "hello"))


def test_service_exec_runs_once_inside_the_instance_and_exits_with_its_status(
    site: Operator, api: RunningServer, fleet: SimRunning
) -> None:
    dpu = f"dpu-{fleet.fleet.dpus[0].serial.lower()}"
    site.wait_for(
        "hello running",
        lambda: (site.get("dpuservices", "hello") or {}).get("status") or {},
        lambda s: s.get("running") == 1,
        timeout=60,
    )
    code, out = cli(
        api, "service", "exec", "hello", "--", "/bin/sh", "-c", "cat /proc/sys/kernel/hostname; echo $((6*7))"
    )
    assert code == 0, out
    assert out.splitlines() == ["hello", "42"]  # the container's hostname: it ran inside the instance

    code, out = cli(api, "service", "exec", "hello", "--dpu", dpu, "--", "/bin/sh", "-c", "echo bad >&2; exit 3")
    assert code == 3 and "bad" in out

    code, out = cli(api, "service", "exec", "hello", "--dpu", "dpu-nowhere", "--", "true")
    assert code == 1 and "no instance on DPU 'dpu-nowhere'" in out and dpu in out

    code, out = cli(api, "service", "exec", "hello", "--", "/no/such/program")
    assert code != 0 and "no/such/program" in out  # runc's own complaint, shown as the command's output

    records = site.http.get("/audit/v1/records", params={"limit": 50}).json()["items"]
    execs = [r for r in records if r["action"] == "service-exec" and r["name"] == "hello"]
    assert len(execs) == 3 and execs[0]["detail"] == f"dpu={dpu} program=/bin/sh"

    resp = site.http.post(
        "/services/v1/projects/default/dpuservices/hello/exec", json={"command": [], "timeoutSeconds": 1}
    )
    assert resp.status_code == 422 and "command" in resp.text


def test_a_crash_is_a_restart_in_status_and_events(site: Operator, image: dict[str, str]) -> None:
    site.create("dpuservices", service("flaky", image, "echo up; sleep 1; exit 7"))
    status = site.wait_for(
        "a restart",
        lambda: (site.get("dpuservices", "flaky") or {}).get("status") or {},
        lambda s: any((i.get("restarts") or 0) >= 1 for i in s.get("instances") or []),
        timeout=60,
    )
    assert "exited with status 7" in (status["instances"][0].get("reason") or "")
    wait_until(
        lambda: any(e["reason"] == "InstanceRestarted" for e in site.events("DPUService", "flaky")),
        timeout=20,
        what="an InstanceRestarted event",
    )
    site.http.delete(site.path("dpuservices", "flaky"))


def test_a_dpu_cut_off_restores_its_instance_after_power_loss(
    site: Operator, fleet: SimRunning, image: dict[str, str]
) -> None:
    agent = next(a for a in fleet.agents if a.services is not None)
    runtime = agent.services
    assert runtime is not None
    wait_until(lambda: "hello" in runtime.instances and runtime.instances["hello"].pid, timeout=60, what="hello")
    pid = runtime.instances["hello"].pid
    device = fleet.fleet.dpus[0]
    device.network_partitioned = True
    try:
        device.os_alive = False  # the DPU loses power: its containers die with it
        wait_until(lambda: runtime.containers() == {}, timeout=20, what="the containers gone")
        device.os_alive = True  # it boots, still cut off from the control plane
        wait_until(
            lambda: (
                "hello" in runtime.instances
                and runtime.instances["hello"].phase == "Running"
                and runtime.instances["hello"].pid not in (None, pid)
            ),
            timeout=30,
            what="hello running again from the DPU's own record",
        )
        assert Path(runtime.root / "desired.json").exists()
    finally:
        device.network_partitioned = False


def test_an_image_from_the_control_planes_repository_runs(
    site: Operator, api: RunningServer, image: dict[str, str], tmp_path: Path
) -> None:
    archive = Path(image["path"])
    missing = {"image": {"reference": f"local/absent@sha256:{'0' * 64}"}}
    doc = service("absent", image, "sleep 3600")
    doc["spec"]["artifact"] = missing
    site.create("dpuservices", doc)
    status = site.wait_for(
        "the missing image refused on the DPU",
        lambda: (site.get("dpuservices", "absent") or {}).get("status") or {},
        lambda s: any(i.get("phase") == "Failed" for i in s.get("instances") or []),
        timeout=60,
    )
    assert "holds no content sha256:0000" in status["instances"][0]["reason"]
    site.http.delete(site.path("dpuservices", "absent"))

    code, out = cli(api, "image", "upload", str(archive))
    assert code == 0 and f"sha256:{image['sha256']} (" in out, out
    doc = service("stored", image, "echo from the repository; sleep 3600")
    doc["spec"]["artifact"] = {"image": {"reference": f"local/busybox@sha256:{image['sha256']}"}}
    site.create("dpuservices", doc)
    site.wait_for(
        "the stored image running",
        lambda: (site.get("dpuservices", "stored") or {}).get("status") or {},
        lambda s: s.get("running") == 1 and s.get("ready") == 1,
        timeout=60,
    )
    site.http.delete(site.path("dpuservices", "stored"))


def cli(api: RunningServer, *args: str) -> tuple[int, str]:
    env = {"DPUFLEET_SERVER": api.url, "DPUFLEET_TOKEN": api.token, "DPUFLEET_PROJECT": "", "COLUMNS": "200"}
    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, result.output
