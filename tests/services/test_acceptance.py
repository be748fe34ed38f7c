"""Issue 17's acceptance, as one script on the emulated fleet with real containers (runc): four hosts, two
with NVIDIA DPUs and two with Intel IPUs.

1. a chain of three dependent services (base <- mid <- top, SameDPU) on every DPU of one vendor, and
   two replicas of another service (pair) spread across hosts;
2. placement, status and logs, as `dpufleet get`, `describe` and `service logs` show them;
3. a config upgrade of top, applied by reload: no restart;
4. an image upgrade of pair, rolled one DPU at a time, health-gated; then an upgrade that fails and is
   rolled back;
5. a drain of a DPU that holds a pair replica: the replica moves, the drained DPU keeps none;
6. pair moved from its DPUs to their hosts, back to the DPUs, and to the hosts again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from dpufleet.agent.sandbox import netns_name
from dpufleet.cli.main import app
from dpufleet.sim.runner import SimRunning
from dpufleet.sim.tally import build_tally, compiler
from provisioning.conftest import Operator
from services.fleet import service, services_fleet
from services.test_handoff import CLIENT as COUNTER
from support.oci import served_image, tools_missing
from support.server import RunningServer

pytestmark = [
    pytest.mark.timeout(420),
    pytest.mark.skipif(os.geteuid() != 0, reason="runc with cgroup limits needs root"),
    pytest.mark.skipif(bool(tools_missing()), reason=f"not installed: {', '.join(tools_missing())}"),
]
STRATEGY = {"maxUnavailable": 1, "maxFailures": 1, "minReadySeconds": 1, "progressDeadlineSeconds": 60}
LOOP = "while true; do sleep 1 & wait $!; done"


@pytest.fixture(scope="module")
def fleet(api: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimRunning]:
    profiles = ["nvidia-bluefield-3", "intel-ipu-e2100"]
    with services_fleet(api, tmp_path_factory.mktemp("fleet"), hosts=4, profiles=profiles) as running:
        yield running


def cli(api: RunningServer, *args: str) -> str:
    env = {"DPUFLEET_SERVER": api.url, "DPUFLEET_TOKEN": api.token, "DPUFLEET_PROJECT": "", "COLUMNS": "200"}
    result = CliRunner().invoke(app, list(args), env=env)
    assert result.exit_code == 0, (args, result.output)
    return result.output


def status(site: Operator, name: str) -> dict[str, Any]:
    return (site.get("dpuservices", name) or {}).get("status") or {}


def ready(site: Operator, name: str, count: int, more: Any = lambda s: True, timeout: float = 120) -> dict[str, Any]:
    return site.wait_for(  # type: ignore[no-any-return]
        f"{name}: {count} ready",
        lambda: status(site, name),
        lambda s: s.get("ready") == count and s.get("desired") == count and more(s),
        timeout=timeout,
    )


def merge(site: Operator, name: str, spec: dict[str, Any]) -> None:
    resp = site.http.patch(
        site.path("dpuservices", name), json={"spec": spec}, headers={"Content-Type": "application/merge-patch+json"}
    )
    assert resp.status_code == 200, resp.text


def test_issue_17_acceptance_on_the_emulated_fleet(site: Operator, api: RunningServer, image: dict[str, str]) -> None:
    dpus = {d["metadata"]["name"]: d["status"] for d in site.items("dpus")}
    vendor = dpus[sorted(dpus)[0]]["vendor"]
    ours = sorted(n for n, s in dpus.items() if s["vendor"] == vendor)
    hosts = {n: s.get("host") for n, s in dpus.items()}
    assert len(ours) == 2 and len({s["vendor"] for s in dpus.values()}) == 2

    # 1. the chain on every DPU of one vendor, and two replicas across hosts
    every = {"mode": "EveryDPU"}
    compat = {"vendors": [vendor]}
    site.create("dpuservices", service("base", image, f"echo base up; {LOOP}", compatibility=compat))
    site.create("dpuservices", service("mid", image, f"echo mid up; {LOOP}", compatibility=compat,
                                       dependsOn=[{"service": "base"}]))  # fmt: skip
    top = service("top", image, f"trap 'echo reloaded $(cat /etc/top.conf)' HUP; echo top up; {LOOP}",
                  compatibility=compat, dependsOn=[{"service": "mid"}], placement=every)  # fmt: skip
    top["spec"]["config"]["files"] = [{"path": "/etc/top.conf", "content": "level=1\n"}]
    top["spec"]["config"]["reload"] = {"signal": "HUP"}
    site.create("dpuservices", top)
    pair = service("pair", image, f"echo pair v1; {LOOP}", upgrade=STRATEGY,
                   placement={"mode": "Replicas", "replicas": 2, "maxPerHost": 1})  # fmt: skip
    site.create("dpuservices", pair)
    for name in ("base", "mid", "top"):
        st = ready(site, name, 2)
        assert sorted(i["dpu"] for i in st["instances"]) == ours  # every DPU of that vendor, no other
    placed = ready(site, "pair", 2)
    assert len({i["host"] for i in placed["instances"]}) == 2  # spread across hosts

    # 2. placement, status, logs
    listing = cli(api, "get", "dpuservices")
    for name in ("base", "mid", "top", "pair"):
        assert name in listing
    assert "Running" in cli(api, "describe", "dpuservice", "top")
    site.wait_for("top's logs", lambda: cli(api, "service", "logs", "top"), lambda out: out.count("top up") == 2)
    started = {
        n: [e for e in site.events("DPUService", n) if e["reason"] == "InstanceStarted"] for n in ("base", "top")
    }
    assert all(len(v) == 2 for v in started.values())  # each started once per DPU, in dependency order below
    alloc = {a["spec"]["dpu"]: a for a in site.objects("dpuallocations")}
    for dpu in ours:
        by_service = {e["service"]: e["startedAt"] for e in alloc[dpu]["status"]["instances"]}
        assert by_service["base"] <= by_service["mid"] <= by_service["top"]

    # 3. a config change of top, by reload: no restart
    merge(site, "top", {"config": {"files": [{"path": "/etc/top.conf", "content": "level=2\n"}]}})
    site.wait_for("top reloaded on both DPUs", lambda: cli(api, "service", "logs", "top"),
                  lambda out: out.count("reloaded level=2") == 2)  # fmt: skip
    after = ready(site, "top", 2, lambda s: (s.get("upgrade") or {}).get("phase") == "Complete")
    assert all(i.get("restarts") == 0 for i in after["instances"])

    # 4. an image upgrade of pair, rolled and gated; then one that fails, rolled back
    v1 = placed["upgrade"]["currentRevision"]
    merge(site, "pair", {"config": {"args": ["/bin/sh", "-c", f"echo pair v2; {LOOP}"]}})
    done = ready(site, "pair", 2, lambda s: (s.get("upgrade") or {}).get("currentRevision") not in (None, v1)
                 and s["upgrade"]["phase"] == "Complete")  # fmt: skip
    v2 = done["upgrade"]["currentRevision"]
    assert [e["reason"] for e in site.events("DPUService", "pair")].count("Upgrading") == 2
    merge(site, "pair", {"config": {"args": ["/bin/sh", "-c", "echo pair v3; sleep 0.3; exit 3"]}})
    rolled = ready(site, "pair", 2, lambda s: (s.get("upgrade") or {}).get("phase") == "RolledBack")
    assert rolled["upgrade"]["currentRevision"] == v2
    assert "RolledBack" in cli(api, "service", "rollout", "pair")
    cli(api, "service", "undo", "pair")  # the spec back to what runs
    ready(site, "pair", 2, lambda s: (s.get("upgrade") or {}).get("phase") == "Complete")

    # 5. drain a DPU that holds a replica: it moves
    drained = sorted(i["dpu"] for i in status(site, "pair")["instances"])[0]
    cli(api, "dpu", "drain", drained, "--wait", "120")
    moved = ready(site, "pair", 2, lambda s: drained not in {i["dpu"] for i in s["instances"]})
    assert len({hosts[i["dpu"]] for i in moved["instances"]}) == 2  # still on two hosts
    cli(api, "dpu", "undrain", drained)

    # 6. host <- DPU -> host: pair to the hosts, back to the DPUs, and to the hosts again
    for where in ("host", "dpu", "host"):
        out = cli(api, "service", "run-on", "pair", where, "--wait", "90")
        assert f"run on the {where}, ready" in out
        st = ready(site, "pair", 2)
        assert {i["runsOn"] for i in st["instances"]} == {"Host" if where == "host" else "DPU"}
    site.wait_for(  # the logs of where the instances run now, labelled with their hosts; the DPUs' are gone
        "pair's logs from the hosts only",
        lambda: [line.partition("]")[0] for line in cli(api, "service", "logs", "pair").splitlines()],
        lambda labels: len(set(labels)) == 2 and all(label.endswith(" host") for label in labels),
        timeout=30,
    )


@pytest.fixture(scope="module")
def tally_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    if compiler() is None:
        pytest.skip("no C compiler to build the tally service")
    where = tmp_path_factory.mktemp("tally")
    with served_image(where / "image", extra={"bin/tally": build_tally(where)}) as served:
        yield served


def test_a_stateful_service_upgraded_through_the_control_plane_loses_no_request(
    site: Operator, api: RunningServer, tally_image: dict[str, str], tmp_path: Path
) -> None:
    """The handoff end to end: the spec through the API, the upgrade controller, the agent protocol and the
    emulated DPU's runtime, while a client counts in the service's namespace on that DPU."""
    dpu = sorted(d["metadata"]["name"] for d in site.items("dpus"))[-1]
    spec = {
        "artifact": {"ociArchive": {"url": tally_image["url"], "sha256": tally_image["sha256"]}},
        "config": {"args": ["/bin/tally"], "env": {"VERSION": "1"}},
        "resources": {"cpuMillicores": 100, "memoryMiB": 16},
        "placement": {"mode": "DPUs", "dpus": [dpu]},
        "handoff": {"listen": [8080], "timeoutSeconds": 20},
        "upgrade": STRATEGY,
    }
    site.create("dpuservices", {"kind": "DPUService", "metadata": {"name": "tally"}, "spec": spec})
    first = ready(site, "tally", 1)
    stop = tmp_path / "stop"
    client = subprocess.Popen(
        ["ip", "netns", "exec", netns_name(dpu, "tally"), sys.executable, "-c", COUNTER, str(stop)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.0)
        v1 = first["upgrade"]["currentRevision"]
        merge(site, "tally", {"config": {"env": {"VERSION": "2"}}})
        done = ready(site, "tally", 1, lambda s: (s.get("upgrade") or {}).get("currentRevision") not in (None, v1)
                     and s["upgrade"]["phase"] == "Complete")  # fmt: skip
        assert done["instances"][0]["revision"] != v1.partition(".")[0]
        time.sleep(1.0)
    finally:
        stop.touch()
        out, err = client.communicate(timeout=120)
    assert client.returncode == 0, err
    result = json.loads(out)
    assert result["errors"] == [] and len(result["answers"]) > 20
    assert result["answers"] == list(range(1, len(result["answers"]) + 1))  # the count went on, none lost
    logs = cli(api, "service", "logs", "tally")
    assert "tally: imported" in logs
    assert site.http.delete(site.path("dpuservices", "tally")).status_code in (200, 202)


COUNT = r"""
import sys, urllib.request
for _ in range(int(sys.argv[1])):
    req = urllib.request.Request("http://127.0.0.1:8080/add", data=b"", method="POST")
    print(int(urllib.request.urlopen(req, timeout=30).read()))
"""


def count(dpu: str, times: int) -> list[int]:
    """`times` increments from inside the service's namespace on that DPU: each answer, in order."""
    out = subprocess.run(
        ["ip", "netns", "exec", netns_name(dpu, "tally"), sys.executable, "-c", COUNT, str(times)],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    return [int(line) for line in out.split()]


def test_a_stateful_service_moved_to_another_dpu_takes_its_state_along(
    site: Operator, api: RunningServer, tally_image: dict[str, str]
) -> None:
    """`dpufleet service move` of a service with a state handoff: the new instance on the other DPU starts
    with the count the old one had (drained, exported to the control plane, fetched and digest-checked
    by the new DPU's runtime); the old one is stopped only once the new one serves."""
    spec = {
        "artifact": {"ociArchive": {"url": tally_image["url"], "sha256": tally_image["sha256"]}},
        "config": {"args": ["/bin/tally"]},
        "resources": {"cpuMillicores": 100, "memoryMiB": 16},
        "placement": {"mode": "Replicas", "replicas": 1},
        "handoff": {"listen": [8080], "timeoutSeconds": 20},
    }
    site.wait_for("the last tally gone", lambda: site.get("dpuservices", "tally"), lambda d: d is None, 60)
    site.create("dpuservices", {"kind": "DPUService", "metadata": {"name": "tally"}, "spec": spec})
    (old,) = [i["dpu"] for i in ready(site, "tally", 1)["instances"]]
    assert count(old, 25) == list(range(1, 26))

    said = cli(api, "service", "move", "tally", "--from", old, "--wait", "120")
    (new,) = [i["dpu"] for i in ready(site, "tally", 1, lambda s: s["instances"][0]["dpu"] != old)["instances"]]
    assert f"it runs on {new}" in said
    assert count(new, 3) == [26, 27, 28], "the count went on where it was on the old DPU"
    gone = f"/run/netns/{netns_name(old, 'tally')}"  # the old DPU's runtime stops it on its next pass
    site.wait_for("the old instance and its sandbox gone", lambda: os.path.exists(gone), lambda there: not there, 30)
    events = [e["reason"] for e in site.events("DPUService", "tally")]
    assert "StateHandoff" in events and "StateHandedOff" in events
    assert "tally: imported 25" in cli(api, "service", "logs", "tally")
    assert site.http.delete(site.path("dpuservices", "tally")).status_code in (200, 202)
