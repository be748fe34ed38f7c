"""A control plane with fast provisioning timings, an emulated fleet discovered through it, and images.

The fleet is reached only through Redfish; the BMCs fetch nothing in-process from the
controllers. Timings are shrunk (emulated hardware at 1/200 speed, second-long timeouts).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from dpufleet import plane as manager
from dpufleet.images.repository import ImageRepository
from dpufleet.provisioning.controller import DPUProvisioner
from dpufleet.provisioning.machine import ProvisioningConfig, Timeouts
from dpufleet.sim.runner import SimOptions, SimRunning, sim_in_thread
from support.operator import Operator as Operator
from support.operator import condition as condition
from support.operator import is_true as is_true
from support.server import RunningServer, threaded_server

OWNER = "test-provisioner"


FAST = ProvisioningConfig(
    timeouts=Timeouts(
        validating=5, preparing_host=3, staging=5, installing=8, rebooting=2.0, configuring=5, hook_request=2
    ),
    poll_seconds=0.05,
    max_attempts=2,
    retry_base_seconds=0.1,
    retry_cap_seconds=0.5,
    reservation_ttl=30,
)


def fast_provisioner(services: manager.Services) -> DPUProvisioner:
    return manager.wire(DPUProvisioner, services, FAST, owner=OWNER)


@contextmanager
def provisioning_server(data_dir: Path, config: ProvisioningConfig = FAST) -> Iterator[RunningServer]:
    """The real server with its controllers, the provisioner on fast timings, images served to loopback BMCs."""

    def provisioner(services: manager.Services) -> DPUProvisioner:
        return manager.wire(DPUProvisioner, services, config, owner=OWNER)

    with pytest.MonkeyPatch.context() as mp:
        factories = [f for f in manager.DEFAULT_RECONCILERS if f is not DPUProvisioner] + [provisioner]
        mp.setattr(manager, "DEFAULT_RECONCILERS", factories)
        with threaded_server(data_dir) as running:
            assert running.server is not None
            repo = running.server.services.repository
            assert isinstance(repo, ImageRepository)
            repo.public_url = running.url
            repo.allow_private_mirrors = True
            yield running


def fleet_options(api: RunningServer, directory: Path, hosts: int = 4) -> SimOptions:
    return SimOptions(
        hosts=hosts,
        dpus_per_host=2,
        profiles=["nvidia-bluefield-3"],
        seed=55,
        directory=directory,
        time_scale=0.005,  # a 60 s update takes 0.3 s, a 40 s boot 0.2 s
        server=api.url,
        token=api.token,
        register=False,
        agents=False,
    )


def discover(op: Operator, fleet: SimRunning) -> list[str]:
    """Register the fleet's BMCs as an operator would; return the DPU names once all are inventoried."""
    if op.get("credentials", "site-bmcs") is None:
        op.credential("site-bmcs", fleet.username, fleet.password)
        op.discovery("lab", endpoints=fleet.endpoints, credentialsRef="site-bmcs", intervalSeconds=600)
    names = sorted(f"dpu-{d.serial.lower()}" for d in fleet.fleet.dpus)

    def complete(dpus: list[dict[str, Any]]) -> bool:
        by_name = {d["metadata"]["name"]: d for d in dpus}
        return set(by_name) >= set(names) and all(by_name[n]["status"].get("firmware") for n in names)

    op.wait_for("every DPU inventoried", lambda: op.items("dpus"), complete, timeout=30)
    return names


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def upload(http: httpx.Client, data: bytes, digest: str | None = None) -> httpx.Response:
    return http.put(f"/images/v1/blobs/sha256/{digest or sha(data)}", content=data)


def image_doc(name: str, version: str, data: bytes, url: str | None = None) -> dict[str, Any]:
    component: dict[str, Any] = {"name": "os", "type": "os", "version": version, "sha256": sha(data), "size": len(data)}
    if url:
        component["url"] = url
    return {"kind": "Image", "metadata": {"name": name}, "spec": {"version": version, "components": [component]}}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with provisioning_server(tmp_path_factory.mktemp("api")) as running:
        yield running


@pytest.fixture(scope="module")
def http(api: RunningServer) -> Iterator[httpx.Client]:
    with api.client() as client:
        yield client


@pytest.fixture(scope="module")
def fleet(api: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimRunning]:
    with sim_in_thread(fleet_options(api, tmp_path_factory.mktemp("fleet"))) as running:
        yield running


@pytest.fixture(scope="module")
def site(http: httpx.Client, fleet: SimRunning) -> Operator:
    op = Operator(http, "default")
    discover(op, fleet)
    return op


class _FileHandler(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}

    def do_GET(self) -> None:
        body = self.files.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *_args: object) -> None:
        pass


@contextmanager
def file_server(files: dict[str, bytes]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """An external HTTP server (loopback) serving `files`; change the dict to change what it serves."""
    handler = type("Handler", (_FileHandler,), {"files": files})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", files
    finally:
        server.shutdown()
        server.server_close()
