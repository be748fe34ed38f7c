"""Given DPUs that boot with no configuration, whose DHCP lease (emulated: there is no dnsmasq in this
test) names the control plane's bootstrap URL and onboarding key, when the operator expects a DPU (its
serial in a Discovery's expectedSerials, its DPU object naming an image), then its agent fetches signed
onboarding information, verifies it, installs the image into its inactive A/B slot, boots it, enrolls with
the one-time token and reports Complete -- the DPU is Ready on the image without any BMC. A DPU nobody
expects gets 403 and nothing else; an expected one with nothing to install, 404. An onboarding document
altered on the way (or stripped of its signature) is refused by the DPU, which installs nothing and whose
refusal shows on its DPU object; once the network is honest again it onboards.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from dpufleet.agent import slots
from dpufleet.agent.bootstrap import read_option, signed_request, write_lease
from dpufleet.sim.bmc import SimBMC
from dpufleet.sim.identity import IDEVID_CERT, IDEVID_KEY
from dpufleet.sim.runner import SimRunning, sim_in_thread
from provisioning.conftest import Operator, fleet_options, image_doc, upload
from support.operator import condition
from support.server import RunningServer

from .conftest import OS_V3, VERSION_V3

pytestmark = pytest.mark.timeout(90)


@dataclass
class Meddler:
    """What the network between a DPU and the bootstrap server does to onboarding documents."""

    upstream: str
    mode: str = "alter"  # alter (change the image URL, keep the signature), unsigned, pass
    altered: int = 0


@contextmanager
def meddling_proxy(upstream: str) -> Iterator[tuple[str, Meddler]]:
    meddler = Meddler(upstream)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            resp = httpx.post(meddler.upstream + self.path, content=body, headers={"Content-Type": "application/json"})
            content = resp.content
            if self.path.endswith("/onboarding") and resp.status_code == 200 and meddler.mode != "pass":
                doc = orjson.loads(content)
                if meddler.mode == "alter":
                    doc["onboarding"]["image"]["url"] = "http://203.0.113.9/evil.bin"
                else:
                    doc["signatures"] = []
                meddler.altered += 1
                content = orjson.dumps(doc)
            self.send_response(resp.status_code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", meddler
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def fleet(api: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimRunning]:
    options = dataclasses.replace(
        fleet_options(api, tmp_path_factory.mktemp("fleet"), hosts=1),
        agents=True,
        install_check_seconds=0.05,
        zero_touch=True,
    )
    with sim_in_thread(options) as running:
        yield running


@pytest.fixture(scope="module")
def meddler(fleet: SimRunning, api: RunningServer) -> Iterator[Meddler]:
    """The second DPU's bootstrap traffic goes through a meddling network from the start."""
    _serial, bmc = dpus(fleet)[1]
    with meddling_proxy(api.url) as (url, meddler):
        option = read_option(root(bmc))
        assert option is not None, "the emulated DHCP server gave every DPU the bootstrap options"
        write_lease(root(bmc), url + "/bootstrap/v1", option.keyid)
        yield meddler


@pytest.fixture(scope="module")
def site(http: httpx.Client) -> Operator:
    return Operator(http, "default")


def dpus(fleet: SimRunning) -> list[tuple[str, SimBMC]]:
    return sorted((b.dpu.serial, b) for b in fleet.fleet.bmcs.values())


def root(bmc: SimBMC) -> Path:
    assert bmc.dpu.osroot is not None
    return bmc.dpu.osroot


def ask(api: RunningServer, bmc: SimBMC) -> httpx.Response:
    """What the DPU asks, signed with its own IDevID."""
    body = signed_request(bmc.dpu.serial, "onboarding", root(bmc) / IDEVID_CERT, root(bmc) / IDEVID_KEY)
    body["partNumber"] = bmc.dpu.profile.part_number
    return httpx.post(api.url + "/bootstrap/v1/onboarding", json=body)


def expect(site: Operator, *serials: str) -> None:
    site.create(
        "discoveries",
        {
            "kind": "Discovery",
            "metadata": {"name": "ztp-site"},
            "spec": {"adoption": "Expected", "expectedSerials": list(serials)},
        },
    )


def wants_image(site: Operator, serial: str, image: str) -> None:
    """The operator names what the DPU runs (its object may already exist: the host agent saw it)."""
    name = f"dpu-{serial.lower()}"
    spec = {"serialNumber": serial, "image": image}
    if site.get("dpus", name) is None:
        resp = site.http.post(site.path("dpus"), json={"kind": "DPU", "metadata": {"name": name}, "spec": spec})
        if resp.status_code == 201:
            return
    resp = site.http.patch(
        site.path("dpus", name), json={"spec": spec}, headers={"Content-Type": "application/merge-patch+json"}
    )
    assert resp.status_code == 200, resp.text


def bootstrap_stage(site: Operator, name: str, *stages: str, timeout: float = 30) -> dict[str, Any]:
    return site.wait_object(
        "dpus", name, lambda d: (d["status"].get("bootstrap") or {}).get("stage") in stages, timeout
    )


def test_only_expected_devices_get_onboarding_information(
    site: Operator, fleet: SimRunning, api: RunningServer, meddler: Meddler
) -> None:
    (serial, bmc), (_other, other) = dpus(fleet)
    resp = ask(api, bmc)
    assert resp.status_code == 403 and "not an expected machine" in resp.json()["message"], resp.text
    assert set(resp.json()) <= {"kind", "apiVersion", "status", "message", "reason", "details", "code"}
    forged = signed_request(serial, "onboarding", root(other) / IDEVID_CERT, root(other) / IDEVID_KEY)
    resp = httpx.post(api.url + "/bootstrap/v1/onboarding", json=forged)  # another device's IDevID
    assert resp.status_code == 403 and "device proof refused" in resp.json()["message"], resp.text
    expect(site, *(s for s, _b in dpus(fleet)))
    resp = ask(api, bmc)
    assert resp.status_code == 404 and "no onboarding information" in resp.json()["message"], resp.text


def test_an_expected_dpu_onboards_installs_boots_and_enrolls_with_no_bmc(
    site: Operator, fleet: SimRunning, api: RunningServer, meddler: Meddler
) -> None:
    serial, bmc = dpus(fleet)[0]
    name = f"dpu-{serial.lower()}"
    assert upload(site.http, OS_V3).status_code == 201
    site.create("images", image_doc("ztp-os", VERSION_V3, OS_V3))
    wants_image(site, serial, "ztp-os")
    dpu = bootstrap_stage(site, name, "Complete", "Failed", "Refused", timeout=40)
    assert dpu["status"]["bootstrap"]["stage"] == "Complete", dpu["status"]["bootstrap"]
    bootstrapped = condition(dpu, "Bootstrapped")
    assert bootstrapped is not None and bootstrapped["status"] == "True"
    assert (condition(dpu, "Ready") or {}).get("status") == "True", "Ready carries the bootstrap's outcome"
    assert dpu["status"]["installedImage"] == "ztp-os" and dpu["status"]["phase"] == "Ready"
    assert bmc.dpu.firmware["DPU_OS"] == VERSION_V3
    state = slots.read_state(root(bmc))
    assert state is not None and state["active"] == "b"
    assert (root(bmc) / "var/lib/dpufleet/agent/agent.crt").exists(), "enrolled with the token"
    assert not bmc.tasks and not bmc.sessions, "nothing went through the BMC"
    assert api.server is not None
    tokens = [t for t in api.server.enrollment.tokens.list() if t.identity == f"dpu/{serial}"]
    assert tokens and all(t.created_by == "bootstrap" for t in tokens)
    assert any(t.used for t in tokens), "its one-time enrollment token was used"
    reasons = [e["reason"] for e in site.events("DPU", name)]
    for stage in ("OnboardingIssued", "Verified", "Downloading", "Staged", "Rebooting", "Booted", "Complete"):
        assert stage in reasons, (stage, reasons)
    site.wait_object("dpus", name, lambda d: bool((d["status"].get("agent") or {}).get("lastHeartbeat")), 15)


def test_an_altered_or_unsigned_onboarding_document_is_refused_and_the_refusal_shows(
    site: Operator, fleet: SimRunning, meddler: Meddler
) -> None:
    serial, bmc = dpus(fleet)[1]
    name = f"dpu-{serial.lower()}"
    before = slots.read_state(root(bmc))
    old = bmc.dpu.firmware["DPU_OS"]
    wants_image(site, serial, "ztp-os")
    dpu = bootstrap_stage(site, name, "Refused", "Complete")
    refused = condition(dpu, "Bootstrapped")
    assert refused is not None and refused["status"] == "False" and refused["reason"] == "BadSignature", refused
    assert "no signature by the pinned key" in refused["message"]
    warnings = [e for e in site.events("DPU", name) if e["reason"] == "BadSignature"]
    assert warnings and warnings[0]["type"] == "Warning"
    meddler.mode = "unsigned"
    site.wait_object("dpus", name, lambda d: (condition(d, "Bootstrapped") or {}).get("reason") == "Unsigned", 30)
    assert bmc.dpu.firmware["DPU_OS"] == old and slots.read_state(root(bmc)) == before, "nothing was installed"
    assert not (root(bmc) / "var/lib/dpufleet/agent/agent.crt").exists(), "and it did not enroll"
    meddler.mode = "pass"  # the network is honest again
    dpu = bootstrap_stage(site, name, "Complete", timeout=40)
    assert bmc.dpu.firmware["DPU_OS"] == VERSION_V3
