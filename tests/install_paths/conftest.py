"""Install paths end to end: the real server (fast provisioning timings), an emulated fleet whose DPU
agents run and enroll over mTLS, and a tampering HTTP proxy in front of the image repository."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from dpufleet.images.repository import ImageRepository
from dpufleet.sim.bmc import SimBMC
from dpufleet.sim.runner import SimRunning, sim_in_thread
from provisioning.conftest import Operator, discover, fleet_options, image_doc, provisioning_server, upload
from support.server import RunningServer

OS_V3 = b"emulated DOCA 3.0 BFB payload\n" * 4000  # 120 kB: several chunks, so downloads can be cut
VERSION_V3 = "DOCA_3.0.0_BSP_4.11.0_Ubuntu_24.04-3"


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
    options = dataclasses.replace(
        fleet_options(api, tmp_path_factory.mktemp("fleet")), agents=True, install_check_seconds=0.05
    )
    with sim_in_thread(options) as running:
        yield running


@pytest.fixture(scope="module")
def site(http: httpx.Client, fleet: SimRunning) -> Operator:
    op = Operator(http, "default")
    discover(op, fleet)
    return op


@pytest.fixture(scope="module")
def repo(api: RunningServer) -> ImageRepository:
    assert api.server is not None
    repository = api.server.services.repository
    assert repository is not None
    return repository


@pytest.fixture(scope="module")
def image_v3(site: Operator) -> str:
    assert upload(site.http, OS_V3).status_code == 201
    site.create("images", image_doc("doca-3-0", VERSION_V3, OS_V3))
    return "doca-3-0"


def dpu_at(fleet: SimRunning, index: int) -> tuple[str, SimBMC]:
    return sorted((f"dpu-{b.dpu.serial.lower()}", b) for b in fleet.fleet.bmcs.values())[index]


def set_spec(op: Operator, name: str, **spec: Any) -> None:
    resp = op.http.patch(
        op.path("dpus", name), json={"spec": spec}, headers={"Content-Type": "application/merge-patch+json"}
    )
    assert resp.status_code == 200, resp.text


def phase_is(*phases: str) -> Any:
    return lambda d: (d.get("status") or {}).get("phase") in phases


@dataclass
class Tamper:
    """What the proxy does to the next responses: pass, corrupt (flip a byte), cut (close mid-body, once)."""

    upstream: str
    mode: str = "pass"
    ranges: list[str] = field(default_factory=list)
    requests: int = 0


@contextmanager
def tampering_proxy(upstream: str) -> Iterator[tuple[str, Tamper]]:
    """A man in the middle of image downloads: a corrupting network, or one that drops connections."""
    tamper = Tamper(upstream)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            tamper.requests += 1
            headers = {}
            if self.headers.get("Range"):
                headers["Range"] = self.headers["Range"]
                tamper.ranges.append(self.headers["Range"])
            resp = httpx.get(tamper.upstream + self.path, headers=headers, timeout=10)
            body = bytearray(resp.content)
            self.send_response(resp.status_code)
            for name in ("Content-Type", "Content-Range", "Accept-Ranges"):
                if name in resp.headers:
                    self.send_header(name, resp.headers[name])
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if tamper.mode == "corrupt" and body:
                body[len(body) // 3] ^= 0x01
            if tamper.mode == "cut" and len(body) > 2:
                tamper.mode = "pass"
                self.wfile.write(bytes(body[: len(body) // 2]))
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(bytes(body))

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", tamper
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def downloads_through(repo: ImageRepository, api: RunningServer) -> Iterator[Tamper]:
    """Signed URLs handed to BMCs and agents point at the proxy while inside the block."""
    with tampering_proxy(api.url) as (url, tamper):
        repo.public_url = url
        try:
            yield tamper
        finally:
            repo.public_url = api.url


def os_release(bmc: SimBMC) -> str:
    assert bmc.dpu.osroot is not None
    return (bmc.dpu.osroot / "etc/os-release").read_text()


def osroot(bmc: SimBMC) -> Path:
    assert bmc.dpu.osroot is not None
    return bmc.dpu.osroot
