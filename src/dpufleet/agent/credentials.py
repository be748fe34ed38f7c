"""The agent's side of zero-trust enrollment: its own key, its fleet certificate, the CA it pins.

All of it lives in the agent's state dir (0700; files 0600):

    agent.key   generated here, never sent anywhere (only a CSR for it is)
    agent.crt   the fleet client certificate, renewed at 2/3 of its life
    ca.crt      the fleet CA, pinned at first contact by --ca-file or --ca-hash

Renewal generates a new key each time, so a key stolen from a disk image stops
being useful within a day even if nobody notices the theft.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding

from ..crypto.pki import (
    CLOCK_SKEW,
    AgentIdentity,
    cert_pem,
    key_pem,
    load_cert,
    make_csr,
    new_key,
    sign_proof,
    utcnow,
    write_private,
)

log = logging.getLogger(__name__)
ENROLL_PATH = "/agent/v1/enroll"
RENEW_PATH = "/agent/v1/renew"
CA_PATH = "/agent/v1/ca"


class EnrollmentError(RuntimeError):
    """The agent could not get or keep a fleet certificate; the message says what to do."""


@dataclass
class EnrollmentOptions:
    token: str | None = None
    idevid_cert: Path | None = None
    idevid_key: Path | None = None
    ca_file: Path | None = None
    ca_sha256: str | None = None  # "sha256:<hex>" of the CA certificate (DER), as `enroll token create` prints


class AgentCredentials:
    def __init__(self, state_dir: Path, server: str, identity: AgentIdentity, options: EnrollmentOptions) -> None:
        self.dir = state_dir
        self.server = server.rstrip("/")
        self.identity = identity
        self.options = options
        self.key_path = state_dir / "agent.key"
        self.cert_path = state_dir / "agent.crt"
        self.ca_path = state_dir / "ca.crt"

    # --- what is on disk -------------------------------------------------------------------
    def certificate(self) -> x509.Certificate | None:
        if not (self.cert_path.exists() and self.key_path.exists() and self.ca_path.exists()):
            return None
        return load_cert(self.cert_path.read_bytes())

    def renew_after(self, cert: x509.Certificate) -> dt.datetime:
        start = cert.not_valid_before_utc + CLOCK_SKEW
        return start + (cert.not_valid_after_utc - start) * 2 / 3

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_path))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert_path.exists():
            ctx.load_cert_chain(self.cert_path, self.key_path)
        return ctx

    # --- first contact ---------------------------------------------------------------------
    async def _pin_ca(self) -> None:
        if self.options.ca_file is not None:
            pem = self.options.ca_file.read_bytes()
        elif self.options.ca_sha256:
            # fetched without verification, then accepted only if it is the CA the operator named
            async with httpx.AsyncClient(verify=False, timeout=15) as http:
                resp = await http.get(self.server + CA_PATH)
                resp.raise_for_status()
                pem = resp.content
        elif self.ca_path.exists():
            return
        else:
            raise EnrollmentError(
                "no fleet CA to trust: pass --ca-file or --ca-hash (printed by 'enroll token create')"
            )
        cert = load_cert(pem)
        got = "sha256:" + hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()
        if self.options.ca_sha256 and got != self.options.ca_sha256.lower():
            raise EnrollmentError(f"the server's CA is {got}, not the pinned {self.options.ca_sha256}: refusing it")
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        write_private(self.ca_path, cert_pem(cert))

    def _proof(self, csr_der: bytes) -> dict[str, object] | None:
        if self.options.idevid_cert is None or self.options.idevid_key is None:
            return None
        key = serialization.load_pem_private_key(self.options.idevid_key.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
            raise EnrollmentError(f"{self.options.idevid_key}: IDevID key must be EC or Ed25519")
        return {"certificate": self.options.idevid_cert.read_text(), "signature": sign_proof(key, csr_der)}

    async def _request_certificate(self, path: str, body: dict[str, object], key: ec.EllipticCurvePrivateKey) -> None:
        async with httpx.AsyncClient(verify=self.ssl_context(), timeout=30) as http:
            resp = await http.post(self.server + path, json=body)
        if resp.status_code >= 400:
            try:
                message = resp.json().get("message", resp.text)
            except ValueError:
                message = resp.text[:300]
            raise EnrollmentError(f"{path} refused (HTTP {resp.status_code}): {message}")
        reply = resp.json()
        write_private(self.key_path, key_pem(key))
        write_private(self.cert_path, reply["certificate"].encode())

    async def enroll(self) -> None:
        await self._pin_ca()
        key = new_key()
        csr = make_csr(key, self.identity)
        body: dict[str, object] = {
            "serial": self.identity.serial,
            "role": self.identity.role,
            "csr": csr.public_bytes(Encoding.PEM).decode(),
        }
        proof = self._proof(csr.public_bytes(Encoding.DER))
        if self.options.token:
            body["token"] = self.options.token
        elif proof is not None:
            body["idevid"] = proof
        else:
            raise EnrollmentError(
                f"{self.identity} has no fleet certificate: enroll with --enroll-token or --idevid-cert/--idevid-key"
            )
        # a previous certificate must not be presented while enrolling (it may be revoked)
        for stale in (self.cert_path, self.key_path):
            stale.unlink(missing_ok=True)
        await self._request_certificate(ENROLL_PATH, body, key)
        log.info("enrolled %s with the control plane at %s", self.identity, self.server)

    async def renew(self) -> None:
        key = new_key()
        csr = make_csr(key, self.identity)
        await self._request_certificate(RENEW_PATH, {"csr": csr.public_bytes(Encoding.PEM).decode()}, key)
        log.info("renewed the fleet certificate of %s", self.identity)

    async def ensure(self) -> bool:
        """Enroll or renew as needed; True if the certificate on disk changed."""
        cert = self.certificate()
        now = utcnow()
        if cert is None or now >= cert.not_valid_after_utc:
            if cert is not None:
                log.warning(
                    "the fleet certificate of %s expired at %s; enrolling again",
                    self.identity,
                    cert.not_valid_after_utc,
                )
            await self.enroll()
            return True
        if now >= self.renew_after(cert):
            await self.renew()
            return True
        return False
