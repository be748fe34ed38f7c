"""Given the real API server with its controllers and four Ready DPUs on two hosts, when a user
applies DPUServices, then the scheduler places them, `dpufleet get`/`describe` show where and why
not, and a dependency cycle is refused at the API naming the cycle."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from dpufleet.main import app
from support.server import RunningServer, threaded_server

BASE = "/apis/dpufleet.io/v1alpha1/projects/default"
SHA = "c" * 64


@pytest.fixture
def api(tmp_path: Path) -> Iterator[RunningServer]:
    with threaded_server(tmp_path / "data") as running:
        yield running


def add_dpu(http: httpx.Client, name: str, host: str, memory_gib: float = 16) -> None:
    assert http.post(f"{BASE}/dpus", json={"kind": "DPU", "metadata": {"name": name}}).status_code == 201
    status = {
        "status": {
            "phase": "Ready",
            "host": host,
            "vendor": "NVIDIA",
            "model": "BlueField-3",
            "partNumber": "900-9D3B6-00CV-AA0",
            "capabilities": {"cpu": {"cores": 16}, "memoryGiB": memory_gib},
        }
    }
    headers = {"Content-Type": "application/merge-patch+json"}
    assert http.patch(f"{BASE}/dpus/{name}/status", json=status, headers=headers).status_code == 200


def service(name: str, placement: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "dpufleet.io/v1alpha1",
        "kind": "DPUService",
        "metadata": {"name": name},
        "spec": {"artifact": {"image": {"reference": f"repo/{name}@sha256:{SHA}"}}, "placement": placement, **spec},
    }


def wait_for(
    http: httpx.Client, name: str, done: Callable[[dict[str, Any]], bool], within: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        doc: dict[str, Any] = http.get(f"{BASE}/dpuservices/{name}").json()
        if done(doc.get("status") or {}):
            return doc
        assert time.monotonic() < deadline, f"dpuservice {name} did not get there: {doc.get('status')}"
        time.sleep(0.1)


def cli_env(api: RunningServer) -> dict[str, str]:
    return {"DPUFLEET_SERVER": api.url, "DPUFLEET_TOKEN": api.token, "DPUFLEET_PROJECT": "", "COLUMNS": "200"}


def cli(api: RunningServer, *args: str) -> str:
    result = CliRunner().invoke(app, list(args), env=cli_env(api))
    assert result.exit_code == 0, result.output
    return result.stdout


def test_services_are_placed_and_why_pending_is_shown(api: RunningServer, tmp_path: Path) -> None:
    with api.client() as http:
        for i in range(4):
            add_dpu(http, f"dpu-{i}", host=f"host-{i // 2}", memory_gib=16 if i else 0.5)
        headers = {"Content-Type": "application/merge-patch+json"}
        assert http.patch(f"{BASE}/dpus/dpu-3", json={"spec": {"unschedulable": True}}, headers=headers).is_success

        manifest = tmp_path / "services.yaml"
        manifest.write_text(
            yaml.safe_dump_all(
                [
                    service("dns", {"replicas": 2, "maxPerHost": 1}, resources={"memoryMiB": 256}),
                    service("huge", {"replicas": 1}, resources={"memoryMiB": 20_000}, priority=5),
                ]
            )
        )
        assert "dpuservice/dns created" in cli(api, "apply", "-f", str(manifest))

        dns = wait_for(http, "dns", lambda s: s.get("scheduled") == 2)
        placed = {i["dpu"]: i["host"] for i in dns["status"]["instances"]}
        assert len(set(placed.values())) == 2, placed  # spread over both hosts
        assert "dpu-3" not in placed  # unschedulable
        record = http.get(f"{BASE}/dpuallocations/{next(iter(placed))}").json()
        assert [i["service"] for i in record["spec"]["instances"]] == ["dns"]
        dpu = http.get(f"{BASE}/dpus/{next(iter(placed))}").json()
        assert dpu["status"]["allocated"]["memoryMiB"] == 256

        huge = wait_for(http, "huge", lambda s: bool(s.get("pendingReason")))
        assert huge["status"]["pendingReason"] == "0/4 DPUs fit: 3 insufficient memory, 1 unschedulable"
        assert huge["status"]["instances"] == [{"name": "huge/pending-0", "phase": "Pending"}]
        listing = cli(api, "get", "dpuservices")
        assert "dns" in listing and "huge" in listing
        described = cli(api, "describe", "dpuservice", "huge")
        assert "0/4 DPUs fit: 3 insufficient memory, 1 unschedulable" in described

        # a DPU made schedulable again wakes the scheduler (well before its 30 s resync)
        every = service("agent", {"mode": "EveryDPU"}, resources={"memoryMiB": 64})
        assert http.post(f"{BASE}/dpuservices", json=every).status_code == 201
        wait_for(http, "agent", lambda s: s.get("scheduled") == 3)
        assert http.patch(f"{BASE}/dpus/dpu-3", json={"spec": {"unschedulable": False}}, headers=headers).is_success
        wait_for(http, "agent", lambda s: s.get("scheduled") == 4, within=10)

        # a cycle is refused at the API, naming it
        assert http.post(
            f"{BASE}/dpuservices", json=service("a", {"replicas": 1}, dependsOn=[{"service": "b"}])
        ).is_success
        refused = http.post(f"{BASE}/dpuservices", json=service("b", {"replicas": 1}, dependsOn=[{"service": "a"}]))
        assert refused.status_code == 422 and "dependency cycle a -> b -> a" in refused.json()["message"]


def test_a_drained_dpu_hands_its_replicas_elsewhere_first_and_stops_the_rest(api: RunningServer) -> None:
    """`dpufleet dpu drain`: a replicated service's instance is placed on another DPU before it leaves
    the drained one; an every-DPU service's instance there stops; `undrain` takes instances again."""
    with api.client() as http:
        for i in range(3):
            add_dpu(http, f"dpu-{i}", host=f"host-{i}")
        for doc in (service("dns", {"replicas": 2, "maxPerHost": 1}, resources={"memoryMiB": 256}),
                    service("agent", {"mode": "EveryDPU"}, resources={"memoryMiB": 64})):  # fmt: skip
            assert http.post(f"{BASE}/dpuservices", json=doc).status_code == 201
        dns = wait_for(http, "dns", lambda s: s.get("scheduled") == 2)
        wait_for(http, "agent", lambda s: s.get("scheduled") == 3)
        target = dns["status"]["instances"][0]["dpu"]

        out = cli(api, "dpu", "drain", target, "--wait", "30")
        assert f"dpu/{target}: drained" in out
        dns = wait_for(
            http, "dns", lambda s: s.get("scheduled") == 2 and target not in {i["dpu"] for i in s["instances"]}
        )
        assert len({i["host"] for i in dns["status"]["instances"]}) == 2  # still spread, now without the drained DPU
        agent = wait_for(http, "agent", lambda s: s.get("scheduled") == 2)
        assert target not in {i["dpu"] for i in agent["status"]["instances"]}
        record = http.get(f"{BASE}/dpuallocations/{target}").json()
        assert record["spec"]["instances"] == []
        dpu = http.get(f"{BASE}/dpus/{target}").json()
        assert dpu["spec"]["unschedulable"] is True and dpu["status"]["allocated"]["memoryMiB"] == 0

        assert f"dpu/{target}: schedulable again" in cli(api, "dpu", "undrain", target)
        wait_for(http, "agent", lambda s: s.get("scheduled") == 3)  # an every-DPU service comes back
        dpu = http.get(f"{BASE}/dpus/{target}").json()
        assert dpu["spec"]["unschedulable"] is False and "dpufleet.io/drain" not in dpu["metadata"]["annotations"]


def test_service_move_places_the_instance_on_the_dpu_asked_for_first(api: RunningServer) -> None:
    """`dpufleet service move`: the instance leaves the DPU it names for the DPU asked for, which stays
    excluded for the service; an every-DPU service's instances do not move (a clear error)."""
    with api.client() as http:
        for i in range(4):
            add_dpu(http, f"dpu-{i}", host=f"host-{i}")
        for doc in (service("dns", {"replicas": 2}), service("agent", {"mode": "EveryDPU"})):
            assert http.post(f"{BASE}/dpuservices", json=doc).status_code == 201
        dns = wait_for(http, "dns", lambda s: s.get("scheduled") == 2)
        source = dns["status"]["instances"][0]["dpu"]
        free = sorted({f"dpu-{i}" for i in range(4)} - {i["dpu"] for i in dns["status"]["instances"]})
        target = free[-1]

        out = cli(api, "service", "move", "dns", "--from", source, "--to", target, "--wait", "30")
        assert "dpuservice/dns: moved; it runs on" in out and target in out
        placed = {i["dpu"] for i in http.get(f"{BASE}/dpuservices/dns").json()["status"]["instances"]}
        assert source not in placed and target in placed and len(placed) == 2
        spec = http.get(f"{BASE}/dpuservices/dns").json()["spec"]["placement"]
        assert spec["exclude"] == [source] and spec["prefer"] == [target]

        result = CliRunner().invoke(app, ["service", "move", "agent", "--from", source], env=cli_env(api))
        assert result.exit_code == 1 and "do not move (drain the DPU)" in result.output
        result = CliRunner().invoke(app, ["service", "move", "dns", "--from", source], env=cli_env(api))
        assert result.exit_code == 1 and f"has no instance on dpu/{source}" in result.output


def test_a_dpudeployment_without_an_os_deploys_its_services_through_the_control_plane(api: RunningServer) -> None:
    with api.client() as http:
        for i in range(2):
            add_dpu(http, f"dpu-{i}", host=f"host-{i}")
        art = {"image": {"reference": f"repo/s@sha256:{SHA}"}}
        doc = {
            "kind": "DPUDeployment",
            "metadata": {"name": "edge"},
            "spec": {"services": {"storage": {"artifact": art}, "agent": {"artifact": art,
                                                                          "dependsOn": [{"service": "storage"}]}}},
        }  # fmt: skip
        assert http.post(f"{BASE}/dpudeployments", json=doc).status_code == 201
        agent = wait_for(http, "edge-agent", lambda s: isinstance(s, dict) and s.get("scheduled") == 2)
        assert [d["service"] for d in agent["spec"]["dependsOn"]] == ["edge-storage"]
        deadline = time.monotonic() + 30
        while True:
            status = http.get(f"{BASE}/dpudeployments/edge").json().get("status") or {}
            if status.get("services", {}).get("agent", {}).get("desired") == 2:
                break
            assert time.monotonic() < deadline, status
            time.sleep(0.2)
        assert status["phase"] == "Deploying" and status["servicesReady"] == "0/2"  # no DPU runs them here
        assert "edge" in cli(api, "get", "dpudeployments")


def test_service_exec_names_the_instances_and_says_when_no_agent_took_the_command(api: RunningServer) -> None:
    with api.client() as http:
        for i in range(2):
            add_dpu(http, f"dpu-{i}", host=f"host-{i}")
        assert http.post(f"{BASE}/dpuservices", json=service("dns", {"replicas": 2})).status_code == 201
        wait_for(http, "dns", lambda s: s.get("scheduled") == 2)
        path = "/services/v1/projects/default/dpuservices/dns/exec"

        several = http.post(path, json={"command": ["true"]})
        assert several.status_code == 400 and "name one with --dpu (dpu-0, dpu-1)" in several.json()["message"]
        missing = http.post("/services/v1/projects/default/dpuservices/nope/exec", json={"command": ["true"]})
        assert missing.status_code == 404
        too_long = http.post(path, json={"command": ["true"], "timeoutSeconds": 3600})
        assert too_long.status_code == 422 and "timeoutSeconds" in too_long.text

        # these DPUs have no agent: nobody asks for the command, which is then never handed out
        waited = http.post(path, json={"dpu": "dpu-1", "command": ["true"], "timeoutSeconds": 0.5}, timeout=60)
        assert waited.status_code == 504 and waited.json()["reason"] == "Timeout"
        assert "did not ask for its services" in waited.json()["message"]
        assert "the command did not run" in waited.json()["message"]
