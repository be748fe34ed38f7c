"""Given enrolled agents, the agent listener accepts a report only from the device it is about."""

from __future__ import annotations

import datetime as dt
import logging
import ssl

import httpx
import pytest

from dpufleet.crypto import pki
from dpufleet.sim.identity import VendorCA

from .conftest import Device, Fleet, enrolled, issue_directly

HANDSHAKE_REFUSED = (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteError, ssl.SSLError)


def test_a_valid_certificate_reports_for_its_own_device(fleet: Fleet) -> None:
    device = enrolled(fleet, "MT0001")
    resp = fleet.post("/agent/v1/report", device.report(), device)
    assert resp.status_code == 200, resp.text
    assert resp.json()["object"] == "dpu-mt0001"
    with fleet.admin() as http:
        dpu = http.get("/apis/dpufleet.io/v1alpha1/projects/default/dpus/dpu-mt0001").json()
    assert dpu["status"]["agent"]["version"] == "test"


def test_an_agent_cannot_report_for_another_dpu(fleet: Fleet, caplog: pytest.LogCaptureFixture) -> None:
    device = enrolled(fleet, "MT0001")
    with caplog.at_level(logging.WARNING):
        resp = fleet.post("/agent/v1/report", device.report(serial="MT0002"), device)
    assert resp.status_code == 403
    assert "speaks for dpu/MT0001, not dpu/MT0002" in resp.json()["message"]
    assert "the certificate names dpu/MT0001 but the report speaks for dpu/MT0002" in caplog.text
    with fleet.admin() as http:
        assert http.get("/apis/dpufleet.io/v1alpha1/projects/default/dpus/dpu-mt0002").status_code == 404


def test_a_dpu_certificate_cannot_report_as_a_host(fleet: Fleet) -> None:
    device = enrolled(fleet, "MT0001")
    body = device.report() | {"role": "host"}
    assert fleet.post("/agent/v1/report", body, device).status_code == 403


def test_no_certificate_no_report(fleet: Fleet) -> None:
    resp = fleet.post("/agent/v1/report", Device("MT0001").report())
    assert resp.status_code == 401


def test_an_expired_certificate_fails_the_handshake(fleet: Fleet, caplog: pytest.LogCaptureFixture) -> None:
    device = Device("MT0001")
    issue_directly(fleet, device, dt.timedelta(hours=1), now=pki.utcnow() - dt.timedelta(hours=3))
    with caplog.at_level(logging.WARNING), pytest.raises(HANDSHAKE_REFUSED):
        fleet.post("/agent/v1/report", device.report(), device)
    assert "client certificate certificate has expired" in caplog.text


def test_a_certificate_from_another_ca_fails_the_handshake(fleet: Fleet, caplog: pytest.LogCaptureFixture) -> None:
    device = Device("MT0001")
    other = VendorCA.create("dpufleet")  # a CA that is not this fleet's, issuing a look-alike certificate
    fake = pki.FleetCA(fleet.tmp, other.key, other.certificate)
    issued = fake.issue(device.csr(), pki.AgentIdentity("dpu", "MT0001"))
    device.cert_pem = pki.cert_pem(issued.certificate).decode()
    with caplog.at_level(logging.WARNING), pytest.raises(HANDSHAKE_REFUSED):
        fleet.post("/agent/v1/report", device.report(), device)
    assert "agent TLS handshake refused: client certificate unable to get local issuer certificate" in caplog.text


def test_a_revoked_device_is_refused_at_once(fleet: Fleet, caplog: pytest.LogCaptureFixture) -> None:
    device = enrolled(fleet, "MT0001")
    assert fleet.post("/agent/v1/report", device.report(), device).status_code == 200
    fleet.revoke("MT0001")
    with caplog.at_level(logging.WARNING):
        resp = fleet.post("/agent/v1/report", device.report(), device)
    assert resp.status_code == 403
    assert "device dpu/MT0001 was revoked" in resp.json()["message"]
    assert "device dpu/MT0001 was revoked" in caplog.text
    renew = fleet.post("/agent/v1/renew", {"csr": Device("MT0001").enroll_body()["csr"]}, device)
    assert renew.status_code == 403  # and it cannot renew its way out


def test_renewal_gives_a_fresh_certificate_for_a_new_key(fleet: Fleet) -> None:
    device = enrolled(fleet, "MT0001")
    successor = Device("MT0001")
    resp = fleet.post("/agent/v1/renew", {"csr": successor.enroll_body()["csr"]}, device)
    assert resp.status_code == 200, resp.text
    successor.cert_pem = resp.json()["certificate"]
    assert successor.cert_pem != device.cert_pem
    assert fleet.post("/agent/v1/report", successor.report(), successor).status_code == 200


def test_renewal_needs_a_certificate(fleet: Fleet) -> None:
    assert fleet.post("/agent/v1/renew", {"csr": Device("MT0001").enroll_body()["csr"]}).status_code == 401


def test_the_agent_listener_speaks_only_tls(fleet: Fleet) -> None:
    plain = fleet.agent_url.replace("https://", "http://")
    with pytest.raises(httpx.TransportError):
        httpx.post(plain + "/agent/v1/report", json={}, timeout=5)
