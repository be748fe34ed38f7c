"""A real server (API + mTLS agent listener on 127.0.0.1) and helpers that act as devices."""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from tests.support.server import RunningServer, threaded_server

from dpufleet.crypto import pki
from dpufleet.crypto.pki import AgentIdentity, sign_proof
from dpufleet.sim.identity import VendorCA


@dataclass
class Fleet:
    """The control plane as an operator and as devices see it."""

    api: RunningServer
    agent_url: str
    ca_pem: str
    tmp: Path

    @property
    def ca_file(self) -> Path:
        path = self.tmp / "fleet-ca.crt"
        path.write_text(self.ca_pem)
        return path

    def admin(self) -> httpx.Client:
        return self.api.client()

    def token(self, serial: str, role: str = "dpu", expires: int = 3600, project: str | None = "default") -> str:
        """A token that places the device in `project` (its reports create its object there)."""
        body = {"serial": serial, "role": role, "expiresSeconds": expires, "project": project}
        with self.admin() as http:
            resp = http.post("/enroll/v1/tokens", json=body)
        assert resp.status_code == 201, resp.text
        return str(resp.json()["token"])

    def expect(self, serial: str, project: str = "default") -> None:
        """List the serial in a Discovery of `project`: an IDevID-enrolled device is placed there."""
        doc = {
            "kind": "Discovery",
            "metadata": {"name": f"expect-{serial.lower()}"},
            "spec": {"expectedSerials": [serial]},
        }
        with self.admin() as http:
            resp = http.post(f"/apis/dpufleet.io/v1alpha1/projects/{project}/discoveries", json=doc)
        assert resp.status_code == 201, resp.text

    def trust(self, vendor: VendorCA) -> None:
        pem = pki.cert_pem(vendor.certificate).decode()
        with self.admin() as http:
            assert http.post("/enroll/v1/vendor-cas", json={"certificate": pem}).status_code == 201

    def revoke(self, serial: str, role: str = "dpu") -> None:
        with self.admin() as http:
            assert http.post("/enroll/v1/revocations", json={"serial": serial, "role": role}).status_code == 201

    def tls(self, device: Device | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        if device is not None and device.cert_pem:
            cert, key = self.tmp / f"{device.serial}.crt", self.tmp / f"{device.serial}.key"
            cert.write_text(device.cert_pem)
            key.write_bytes(pki.key_pem(device.key))
            ctx.load_cert_chain(cert, key)
        return ctx

    def post(self, path: str, body: Any, device: Device | None = None, **kwargs: Any) -> httpx.Response:
        return httpx.post(self.agent_url + path, json=body, verify=self.tls(device), timeout=10, **kwargs)


@dataclass
class Device:
    serial: str
    role: str = "dpu"
    key: Any = None
    cert_pem: str = ""

    def __post_init__(self) -> None:
        self.key = pki.new_key()

    def csr(self) -> x509.CertificateSigningRequest:
        return pki.make_csr(self.key, AgentIdentity(self.role, self.serial))  # type: ignore[arg-type]

    def enroll_body(
        self, token: str | None = None, idevid: tuple[Any, x509.Certificate] | None = None
    ) -> dict[str, Any]:
        csr = self.csr()
        body: dict[str, Any] = {
            "serial": self.serial,
            "role": self.role,
            "csr": csr.public_bytes(Encoding.PEM).decode(),
        }
        if token:
            body["token"] = token
        if idevid:
            key, cert = idevid
            body["idevid"] = {
                "certificate": pki.cert_pem(cert).decode(),
                "signature": sign_proof(key, csr.public_bytes(Encoding.DER)),
            }
        return body

    def report(self, serial: str | None = None) -> dict[str, Any]:
        return {"serial": serial or self.serial, "role": self.role, "agentVersion": "test"}


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    with threaded_server(tmp_path / "data", controllers=False) as api:
        assert api.server is not None
        with api.client() as http:
            info = http.get("/enroll/v1/info").json()
        yield Fleet(api, info["agentURL"], info["caCertificate"], tmp_path)


def enrolled(fleet: Fleet, serial: str = "MT0001") -> Device:
    device = Device(serial)
    resp = fleet.post("/agent/v1/enroll", device.enroll_body(token=fleet.token(serial)))
    assert resp.status_code == 200, resp.text
    device.cert_pem = resp.json()["certificate"]
    return device


def issue_directly(fleet: Fleet, device: Device, lifetime: dt.timedelta, now: dt.datetime | None = None) -> None:
    """A certificate from the server's own CA with a chosen validity (for expiry tests)."""
    assert fleet.api.server is not None
    ca = fleet.api.server.ca
    issued = ca.issue(device.csr(), AgentIdentity(device.role, device.serial), lifetime, now)  # type: ignore[arg-type]
    device.cert_pem = pki.cert_pem(issued.certificate).decode()
