"""Given a DPU whose host has a host policy, when the DPU is provisioned, then PreparingHost protects
the host per the policy (none, taint, drain with its acknowledgement, hook with a POST) before the
DPU is touched, undoes it at Ready, and a host that never answers ends in PreparingHostFailed.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from dpufleet.sim.bmc import SimBMC
from dpufleet.sim.runner import SimRunning

from .conftest import Operator, image_doc, upload

pytestmark = pytest.mark.timeout(90)

PAYLOAD = b"emulated OS for host policies\n" * 100
VERSION = "hp-1.0"
TAINT = "dpufleet.io/dpu-maintenance."
DRAIN_REQUEST = "dpufleet.io/drain-request."
DRAIN_ACK = "dpufleet.io/drain-ack."


@pytest.fixture(scope="module")
def image(site: Operator) -> str:
    assert upload(site.http, PAYLOAD).status_code == 201
    site.create("images", image_doc("hp-os", VERSION, PAYLOAD))
    return "hp-os"


def dpu(fleet: SimRunning, index: int) -> tuple[str, SimBMC]:
    return sorted((f"dpu-{b.dpu.serial.lower()}", b) for b in fleet.fleet.bmcs.values())[index]


def merge_patch(op: Operator, plural: str, name: str, doc: dict[str, Any]) -> None:
    op.patch(plural, name, doc)


def host(op: Operator, name: str, **spec: Any) -> None:
    op.create("hosts", {"kind": "Host", "metadata": {"name": name}, "spec": spec})


def provision(op: Operator, name: str, host_name: str, image: str) -> None:
    merge_patch(op, "dpus", name, {"spec": {"image": image, "hostRef": host_name}})


def phase(d: dict[str, Any]) -> str:
    return str((d.get("status") or {}).get("phase"))


def ours(annotations: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (annotations or {}).items() if k.startswith("dpufleet.io/")}


def test_policy_none_leaves_the_host_alone(site: Operator, fleet: SimRunning, image: str) -> None:
    name, bmc = dpu(fleet, 0)
    host(site, "hp-none", hostPolicy="none")
    provision(site, name, "hp-none", image)
    site.wait_object("dpus", name, lambda d: phase(d) == "Ready", timeout=30)
    events = [e["message"] for e in site.events("DPU", name) if e["reason"] == "StagingImage"]
    assert any("host policy none" in m for m in events), events
    found = site.get("hosts", "hp-none")
    assert found is not None and not ours(found["metadata"].get("annotations"))
    assert bmc.dpu.firmware["DPU_OS"] == VERSION


def test_policy_taint_marks_the_host_and_undoes_it_at_ready(site: Operator, fleet: SimRunning, image: str) -> None:
    name, _bmc = dpu(fleet, 1)
    host(site, "hp-taint", hostPolicy="taint")
    provision(site, name, "hp-taint", image)
    seen: list[dict[str, Any]] = []

    def tainted_then_ready(d: dict[str, Any]) -> bool:
        current = site.get("hosts", "hp-taint") or {}
        seen.append(ours((current.get("metadata") or {}).get("annotations")))
        return phase(d) == "Ready"

    site.wait_object("dpus", name, tainted_then_ready, timeout=30)
    assert any(TAINT + name in s for s in seen), "the taint was never seen while provisioning"
    found = site.get("hosts", "hp-taint")
    assert found is not None and not ours(found["metadata"].get("annotations")), "the taint is removed at Ready"


def test_policy_drain_waits_for_the_acknowledgement(site: Operator, fleet: SimRunning, image: str) -> None:
    name, bmc = dpu(fleet, 2)
    before = dict(bmc.dpu.firmware)
    host(site, "hp-drain", hostPolicy="drain")
    provision(site, name, "hp-drain", image)
    site.wait_for(
        "the drain request",
        lambda: ours((site.get("hosts", "hp-drain") or {})["metadata"].get("annotations")),
        lambda a: DRAIN_REQUEST + name in a and TAINT + name in a,
    )
    current = site.get("dpus", name)
    assert current is not None and phase(current) == "PreparingHost"
    assert bmc.dpu.firmware == before and not bmc.tasks, "nothing touches the DPU before the host is drained"
    merge_patch(site, "hosts", "hp-drain", {"metadata": {"annotations": {DRAIN_ACK + name: "drained"}}})
    site.wait_object("dpus", name, lambda d: phase(d) == "Ready", timeout=30)
    found = site.get("hosts", "hp-drain")
    assert found is not None and not ours(found["metadata"].get("annotations")), "request, taint and ack are removed"


def test_a_drain_never_acknowledged_times_out(site: Operator, fleet: SimRunning, image: str) -> None:
    name, bmc = dpu(fleet, 3)
    host(site, "hp-drain-slow", hostPolicy="drain")
    provision(site, name, "hp-drain-slow", image)
    failed = site.wait_object("dpus", name, lambda d: phase(d) == "PreparingHostFailed", timeout=30)
    assert failed["status"]["provisioning"]["reason"] == "HostPreparationTimeout"
    assert not bmc.tasks


@contextmanager
def hook_server(status: int = 200) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A tiny HTTP server on 127.0.0.1 that records the JSON bodies POSTed to it."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            received.append(json.loads(self.rfile.read(length) or b"{}"))
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/dpu-prepare", received
    finally:
        server.shutdown()
        server.server_close()


def test_policy_hook_posts_to_the_host_hook(site: Operator, fleet: SimRunning, image: str) -> None:
    name, _bmc = dpu(fleet, 4)
    with hook_server() as (url, received):
        host(site, "hp-hook", hostPolicy="hook", hookURL=url)
        provision(site, name, "hp-hook", image)
        site.wait_object("dpus", name, lambda d: phase(d) == "Ready", timeout=30)
    assert received == [{"event": "dpu.prepare", "dpu": name, "host": "hp-hook", "image": image}]


def test_a_failing_hook_lands_in_preparing_host_failed(site: Operator, fleet: SimRunning, image: str) -> None:
    name, bmc = dpu(fleet, 5)
    with hook_server(status=503) as (url, received):
        host(site, "hp-hook-down", hostPolicy="hook", hookURL=url)
        provision(site, name, "hp-hook-down", image)
        failed = site.wait_object("dpus", name, lambda d: phase(d) == "PreparingHostFailed", timeout=30)
    assert failed["status"]["provisioning"]["reason"] == "HookFailed"
    assert "HTTP 503" in failed["status"]["provisioning"]["message"]
    assert len(received) == 2, "tried again once (max_attempts 2), then waits in the failed phase"
    assert not bmc.tasks


def test_a_hook_policy_without_url_is_refused(site: Operator, fleet: SimRunning, image: str) -> None:
    name, _bmc = dpu(fleet, 6)
    host(site, "hp-hook-none", hostPolicy="hook")
    provision(site, name, "hp-hook-none", image)
    failed = site.wait_object("dpus", name, lambda d: phase(d) == "PreparingHostFailed", timeout=30)
    assert failed["status"]["provisioning"]["reason"] == "HookMissing"
