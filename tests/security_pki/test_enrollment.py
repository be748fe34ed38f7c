"""Given an operator and devices, only a device that proves who it is gets a fleet certificate."""

from __future__ import annotations

import logging
import os

import pytest
from cryptography import x509

from dpufleet.crypto import pki
from dpufleet.sim.identity import VendorCA

from .conftest import Device, Fleet, enrolled


def test_a_token_enrolls_its_device_once_and_only_once(fleet: Fleet, caplog: pytest.LogCaptureFixture) -> None:
    token = fleet.token("MT0001")
    device = Device("MT0001")
    first = fleet.post("/agent/v1/enroll", device.enroll_body(token=token))
    assert first.status_code == 200, first.text
    cert = x509.load_pem_x509_certificate(first.json()["certificate"].encode())
    assert pki.identity_of(cert) == pki.AgentIdentity("dpu", "MT0001")
    assert first.json()["identity"] == "spiffe://dpufleet/dpu/MT0001"
    assert cert.public_key() == device.key.public_key()  # the device's own key: it never left the device
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert 23.9 * 3600 <= lifetime.total_seconds() <= 24.2 * 3600

    with caplog.at_level(logging.WARNING):
        again = fleet.post("/agent/v1/enroll", Device("MT0001").enroll_body(token=token))
    assert again.status_code == 403
    assert again.json()["details"]["reasonCode"] == "TokenAlreadyUsed"
    assert "TokenAlreadyUsed" in caplog.text


def test_a_token_bound_to_another_serial_is_refused(fleet: Fleet) -> None:
    token = fleet.token("MT0001")
    resp = fleet.post("/agent/v1/enroll", Device("MT9999").enroll_body(token=token))
    assert resp.status_code == 403
    assert resp.json()["details"]["reasonCode"] == "TokenBoundToAnotherDevice"


def test_a_token_for_a_dpu_does_not_enroll_a_host_of_the_same_serial(fleet: Fleet) -> None:
    token = fleet.token("SRV1", role="dpu")
    resp = fleet.post("/agent/v1/enroll", Device("SRV1", role="host").enroll_body(token=token))
    assert resp.status_code == 403


def test_unknown_and_forged_tokens_are_refused(fleet: Fleet) -> None:
    real = fleet.token("MT0001")
    forged = real.rsplit(".", 1)[0] + ".not-the-secret"
    for token in ("dpfe.deadbeef.whatever", forged, "garbage"):
        resp = fleet.post("/agent/v1/enroll", Device("MT0001").enroll_body(token=token))
        assert resp.status_code == 403
        assert resp.json()["details"]["reasonCode"] == "TokenUnknown"


def test_tokens_are_stored_hashed_and_private(fleet: Fleet) -> None:
    token = fleet.token("MT0001")
    path = fleet.api.data_dir / "pki" / "enrollment-tokens.json"
    assert token.split(".")[2] not in path.read_text()
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(fleet.api.data_dir / "pki" / "ca.key").st_mode & 0o777 == 0o600


def test_an_idevid_from_a_trusted_vendor_enrolls(fleet: Fleet) -> None:
    vendor = VendorCA.create("NVIDIA")
    fleet.trust(vendor)
    device = Device("MT0002")
    resp = fleet.post("/agent/v1/enroll", device.enroll_body(idevid=vendor.idevid("MT0002", "BlueField-3")))
    assert resp.status_code == 200, resp.text
    assert resp.json()["identity"] == "spiffe://dpufleet/dpu/MT0002"


def test_an_idevid_from_an_untrusted_vendor_is_refused(fleet: Fleet, caplog: pytest.LogCaptureFixture) -> None:
    fleet.trust(VendorCA.create("NVIDIA"))
    rogue = VendorCA.create("NVIDIA")  # same name, different key: not the CA the operator trusted
    with caplog.at_level(logging.WARNING):
        resp = fleet.post("/agent/v1/enroll", Device("MT0002").enroll_body(idevid=rogue.idevid("MT0002", "BF3")))
    assert resp.status_code == 403
    assert resp.json()["details"]["reasonCode"] == "IDevIDUntrusted"
    assert "IDevIDUntrusted" in caplog.text


def test_an_idevid_naming_another_serial_is_refused(fleet: Fleet) -> None:
    vendor = VendorCA.create("Intel")
    fleet.trust(vendor)
    resp = fleet.post("/agent/v1/enroll", Device("IPU1").enroll_body(idevid=vendor.idevid("IPU2", "E2100")))
    assert resp.status_code == 403
    assert resp.json()["details"]["reasonCode"] == "IDevIDNamesAnotherDevice"


def test_an_idevid_without_its_key_is_refused(fleet: Fleet) -> None:
    """A copied IDevID certificate is public; signing the CSR with another key proves nothing."""
    vendor = VendorCA.create("AMD")
    fleet.trust(vendor)
    _key, cert = vendor.idevid("DSC1", "DSC2")
    resp = fleet.post("/agent/v1/enroll", Device("DSC1").enroll_body(idevid=(pki.new_key(), cert)))
    assert resp.status_code == 403
    assert resp.json()["details"]["reasonCode"] == "ProofOfPossessionInvalid"


def test_no_credential_no_certificate(fleet: Fleet) -> None:
    resp = fleet.post("/agent/v1/enroll", Device("MT0001").enroll_body())
    assert resp.status_code == 403
    assert resp.json()["details"]["reasonCode"] == "NoCredential"


def test_a_revoked_device_cannot_reenroll_by_idevid_until_an_operator_issues_a_token(fleet: Fleet) -> None:
    vendor = VendorCA.create("Marvell")
    fleet.trust(vendor)
    idevid = vendor.idevid("WA1", "OCTEON")
    assert fleet.post("/agent/v1/enroll", Device("WA1").enroll_body(idevid=idevid)).status_code == 200
    fleet.revoke("WA1")
    refused = fleet.post("/agent/v1/enroll", Device("WA1").enroll_body(idevid=idevid))
    assert refused.status_code == 403
    assert refused.json()["details"]["reasonCode"] == "DeviceRevoked"
    device = enrolled(fleet, "WA1")  # a new token re-admits it
    assert fleet.post("/agent/v1/report", device.report(), device).status_code == 200


def test_only_operators_manage_enrollment(fleet: Fleet) -> None:
    import httpx

    resp = httpx.post(fleet.api.url + "/enroll/v1/tokens", json={"serial": "X"})
    assert resp.status_code == 401
