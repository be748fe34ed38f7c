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

import os
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from dpufleet.cli.main import app
from dpufleet.sim.runner import SimRunning
from provisioning.conftest import Operator, provisioning_server
from services.fleet import provision, service, services_fleet
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
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    with served_image(tmp_path_factory.mktemp("image")) as served:
        yield served


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with provisioning_server(tmp_path_factory.mktemp("api")) as running:
        yield running


@pytest.fixture(scope="module")
def fleet(api: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimRunning]:
    profiles = ["nvidia-bluefield-3", "intel-ipu-e2100"]
    with services_fleet(api, tmp_path_factory.mktemp("fleet"), hosts=4, profiles=profiles) as running:
        yield running


@pytest.fixture(scope="module")
def site(api: RunningServer, fleet: SimRunning) -> Iterator[Operator]:
    yield from provision(api, fleet)


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
