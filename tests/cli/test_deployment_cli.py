"""`dpufleet deployment ...` against a real server with its controllers: a bundle's revisions, undo and pause."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from dpufleet.client import Client
from dpufleet.demo import EmbeddedServer

from .conftest import CLI

SHA = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"


def bundle(image: str | None, name: str = "edge") -> str:
    os = {"dpuSet": {"template": {"image": image}, "strategy": {"maxUnavailable": 1}}} if image else {}
    doc = {
        "kind": "DPUDeployment",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"rack": "r9"}},
            **os,
            "services": {
                "storage": {
                    "artifact": {"image": {"reference": f"registry.example/spdk@sha256:{SHA}"}},
                    "upgrade": {"maxUnavailable": "10%"},
                }
            },
        },
    }
    return json.dumps(doc)


def wait(server: EmbeddedServer, kind: str, name: str, done: Any, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    with Client(server.url, server.token()) as client:
        while True:
            doc: dict[str, Any] = client.get(kind, name)
            if done(doc):
                return doc
            assert time.monotonic() < deadline, f"{kind}/{name}: {doc.get('status')}"
            time.sleep(0.1)


def revision(n: int) -> Any:
    return lambda d: (d.get("status") or {}).get("revision") == n


def test_undo_puts_the_whole_bundle_back_as_a_new_revision(cli: CLI, server: EmbeddedServer, tmp_path: Path) -> None:
    assert cli("apply", "-f", "-", input=bundle("os-1")).exit_code == 0
    wait(server, "dpudeployments", "edge", revision(1))
    nothing = cli("deployment", "undo", "edge")
    assert nothing.exit_code == 1 and "no earlier revision" in nothing.stderr

    assert cli("apply", "-f", "-", input=bundle("os-2")).exit_code == 0
    wait(server, "dpudeployments", "edge", revision(2))
    history = cli("deployment", "history", "edge")
    assert history.exit_code == 0
    rows = [line.split() for line in history.stdout.splitlines()[1:]]
    assert [r[0] for r in rows] == ["1", "2"] and rows[1][1] == "(current)"
    assert "os os-1;" in history.stdout and "os os-2;" in history.stdout

    undone = cli("deployment", "undo", "edge")
    assert undone.exit_code == 0, undone.stderr
    assert "returning to revision 1 (os os-1; services storage)" in undone.stdout
    doc = wait(server, "dpudeployments", "edge", revision(3))
    assert doc["spec"]["dpuSet"]["template"]["image"] == "os-1"
    assert [h["revision"] for h in doc["status"]["history"]] == [2, 3]
    wait(server, "dpusets", "edge", lambda d: d["spec"]["template"]["image"] == "os-1")

    missing = cli("deployment", "undo", "edge", "--to-revision", "1")  # renumbered 3: no longer kept as 1
    assert missing.exit_code == 1 and "--to-revision" in missing.stderr and "kept: 2, 3" in missing.stderr
    current = cli("deployment", "undo", "edge", "--to-revision", "3")
    assert current.exit_code == 1 and "runs now" in current.stderr
    assert (
        wait(server, "dpudeployments", "edge", revision(3))["metadata"]["generation"] == doc["metadata"]["generation"]
    )

    back = cli("deployment", "undo", "edge", "--to-revision", "2")
    assert back.exit_code == 0 and "revision 2 (os os-2;" in back.stdout
    wait(server, "dpusets", "edge", lambda d: d["spec"]["template"]["image"] == "os-2")


def test_pause_holds_the_bundle_and_a_bundled_service_is_paused_only_with_it(cli: CLI, server: EmbeddedServer) -> None:
    assert cli("apply", "-f", "-", input=bundle(None, "core")).exit_code == 0  # services only: written at once
    wait(server, "dpuservices", "core-storage", lambda d: d["spec"]["upgrade"]["paused"] is False)
    paused = cli("deployment", "pause", "core")
    assert paused.exit_code == 0 and "paused" in paused.stdout
    service = wait(server, "dpuservices", "core-storage", lambda d: d["spec"]["upgrade"]["paused"] is True)
    assert service["spec"]["upgrade"]["maxUnavailable"] == "10%"  # the bundle's own upgrade settings kept
    status = cli("deployment", "status", "core")
    assert status.exit_code == 0 and "(spec.paused) - revision 1" in status.stdout  # pausing is no new revision
    assert "storage: dpuservice/core-storage" in status.stdout
    refused = cli("service", "pause", "core-storage")
    assert refused.exit_code == 1 and "dpufleet deployment pause core" in refused.stderr
    assert cli("deployment", "resume", "core").exit_code == 0
    wait(server, "dpuservices", "core-storage", lambda d: d["spec"]["upgrade"]["paused"] is False)
    unknown = cli("deployment", "pause", "nope")
    assert unknown.exit_code == 1 and "nope" in unknown.stderr


def test_a_service_of_its_own_is_paused_and_resumed_by_name(cli: CLI, server: EmbeddedServer) -> None:
    doc = {
        "kind": "DPUService",
        "metadata": {"name": "solo"},
        "spec": {
            "artifact": {"image": {"reference": f"registry.example/spdk@sha256:{SHA}"}},
            "placement": {"mode": "EveryDPU"},
        },
    }
    assert cli("apply", "-f", "-", input=json.dumps(doc)).exit_code == 0
    paused = cli("service", "pause", "solo")
    assert paused.exit_code == 0 and "no more instances start the upgrade" in paused.stdout
    assert wait(server, "dpuservices", "solo", lambda d: d["spec"]["upgrade"]["paused"] is True)
    assert cli("service", "resume", "solo").exit_code == 0
    wait(server, "dpuservices", "solo", lambda d: d["spec"]["upgrade"]["paused"] is False)
