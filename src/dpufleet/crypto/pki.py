"""The fleet CA: who an agent is, proven by a short-lived certificate it earned at enrollment.

The CA key lives in `<data-dir>/pki/ca.key` (0600) and never leaves the server.
Agents keep their own keys; the CA only ever sees their CSRs. A certificate
names exactly one device, SPIFFE-style, in a URI SAN:

    spiffe://dpufleet/dpu/<serial>      the agent on a DPU's Arm cores
    spiffe://dpufleet/host/<serial>     the agent on the host carrying DPUs

Certificates are short-lived (24 h by default) so a stolen agent key is worth a
day at most; revocation (decommission) covers the rest: a device revoked at time
T has every certificate issued to it before T refused, so the server needs no
list of every certificate it ever issued. EC P-256 keys throughout: every TLS
stack speaks it and signing is cheap enough to enroll a fleet in seconds.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import json
import logging
import os
import re
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

PKI_DIR = "pki"
CA_KEY = "ca.key"
CA_CERT = "ca.crt"
SERVER_KEY = "agent-server.key"
SERVER_CERT = "agent-server.crt"
REVOCATIONS = "revocations.json"
TRUST_DOMAIN = "dpufleet"
CLIENT_LIFETIME = dt.timedelta(hours=24)
CA_LIFETIME = dt.timedelta(days=3650)
SERVER_LIFETIME = dt.timedelta(days=365)
CLOCK_SKEW = dt.timedelta(minutes=5)
SERIAL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
Role = Literal["dpu", "host"]
ROLES: tuple[Role, ...] = ("dpu", "host")


class PKIError(Exception):
    """A certificate or CSR the fleet CA will not accept; the message says why."""


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def write_private(path: Path, data: bytes) -> None:
    """Write a file only its owner can read, atomically (a crash leaves the old file or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    os.chmod(path, 0o600)


@dataclass(frozen=True)
class AgentIdentity:
    """The device a certificate speaks for."""

    role: Role
    serial: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise PKIError(f"role {self.role!r}: expected one of {', '.join(ROLES)}")
        if not SERIAL_RE.match(self.serial):
            raise PKIError(f"serial {self.serial!r}: expected 1-128 letters, digits, '.', '_', ':' or '-'")

    @property
    def uri(self) -> str:
        return f"spiffe://{TRUST_DOMAIN}/{self.role}/{self.serial}"

    def __str__(self) -> str:
        return f"{self.role}/{self.serial}"

    @classmethod
    def from_uri(cls, uri: str) -> AgentIdentity:
        prefix = f"spiffe://{TRUST_DOMAIN}/"
        if not uri.startswith(prefix):
            raise PKIError(f"{uri!r} is not a dpufleet agent identity")
        role, _, serial = uri[len(prefix) :].partition("/")
        if role not in ROLES:
            raise PKIError(f"{uri!r} names no agent role")
        return cls(role, serial)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_cert(pem: bytes | str) -> x509.Certificate:
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise PKIError(f"not a PEM certificate: {exc}") from None


def load_private_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PKIError("expected an EC private key")
    return key


def fingerprint(cert: x509.Certificate) -> str:
    """sha256:<hex> of the DER encoding; what an agent pins with --ca-hash."""
    return "sha256:" + cert.fingerprint(hashes.SHA256()).hex()


def make_csr(key: ec.EllipticCurvePrivateKey, identity: AgentIdentity) -> x509.CertificateSigningRequest:
    """The CSR an agent sends: its public key, signed with its private key (proof of possession)."""
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity.serial)]))
        .sign(key, hashes.SHA256())
    )


def load_csr(pem: str) -> x509.CertificateSigningRequest:
    try:
        csr = x509.load_pem_x509_csr(pem.encode())
    except ValueError as exc:
        raise PKIError(f"csr is not a PEM certificate signing request: {exc}") from None
    if not csr.is_signature_valid:
        raise PKIError("csr signature is invalid: the requester does not hold the key it asks a certificate for")
    key = csr.public_key()
    acceptable = (
        (isinstance(key, ec.EllipticCurvePublicKey) and key.curve.key_size >= 256)
        or isinstance(key, ed25519.Ed25519PublicKey)
        or (isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048)
    )
    if not acceptable:
        raise PKIError("csr key is too weak: use EC P-256 or stronger, Ed25519, or RSA >= 2048")
    return csr


def identity_of(cert: x509.Certificate) -> AgentIdentity:
    """The one agent identity a fleet client certificate carries in its URI SAN."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise PKIError("the certificate has no subjectAltName naming an agent") from None
    uris = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith("spiffe://")]
    if len(uris) != 1:
        raise PKIError(f"the certificate names {len(uris)} SPIFFE identities; exactly one is required")
    return AgentIdentity.from_uri(uris[0])


@dataclass(frozen=True)
class IssuedCertificate:
    certificate: x509.Certificate
    identity: AgentIdentity

    @property
    def not_after(self) -> dt.datetime:
        return self.certificate.not_valid_after_utc

    @property
    def renew_after(self) -> dt.datetime:
        """Two thirds into its life: time to renew with a day-long certificate is eight hours."""
        start = self.certificate.not_valid_before_utc + CLOCK_SKEW
        return start + (self.not_after - start) * 2 / 3


class RevocationList:
    """Revoked devices (with the time of revocation) and single revoked certificate serial numbers.

    Persisted as JSON in the PKI dir, rewritten atomically on each change; the server
    consults it on every agent request, so a revocation takes effect at once.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._devices: dict[str, str] = {}
        self._certificates: dict[str, str] = {}
        if path.exists():
            doc = json.loads(path.read_text())
            self._devices = dict(doc.get("devices", {}))
            self._certificates = dict(doc.get("certificates", {}))

    def _save(self) -> None:
        doc = {"devices": self._devices, "certificates": self._certificates}
        write_private(self.path, json.dumps(doc, indent=1, sort_keys=True).encode())

    def revoke_device(self, identity: AgentIdentity, when: dt.datetime | None = None) -> dt.datetime:
        stamp = when or utcnow()
        with self._lock:
            self._devices[str(identity)] = stamp.isoformat()
            self._save()
        return stamp

    def readmit_device(self, identity: AgentIdentity) -> None:
        """An operator's new enrollment token for a revoked device lets it back in (certificates issued later)."""
        with self._lock:
            if self._devices.pop(str(identity), None) is not None:
                self._save()

    def revoke_certificate(self, serial_number: int) -> None:
        with self._lock:
            self._certificates[format(serial_number, "x")] = utcnow().isoformat()
            self._save()

    def device_revoked_at(self, identity: AgentIdentity) -> dt.datetime | None:
        stamp = self._devices.get(str(identity))
        return dt.datetime.fromisoformat(stamp) if stamp else None

    def why_revoked(self, cert: x509.Certificate, identity: AgentIdentity) -> str | None:
        """None if the certificate stands; otherwise the reason it does not."""
        if format(cert.serial_number, "x") in self._certificates:
            return f"certificate {cert.serial_number:x} was revoked"
        revoked_at = self.device_revoked_at(identity)
        if revoked_at is not None and cert.not_valid_before_utc + CLOCK_SKEW <= revoked_at:
            return f"device {identity} was revoked (decommissioned) at {revoked_at.isoformat()}"
        return None


def self_signed_ca(
    key: ec.EllipticCurvePrivateKey,
    organization: str,
    common_name: str,
    backdate: dt.timedelta,
    lifetime: dt.timedelta,
) -> x509.Certificate:
    """A self-signed CA certificate that may sign leaf certificates only (path length 0)."""
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    now = utcnow()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - backdate)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


class FleetCA:
    """Issues agent client certificates and the agent listener's server certificate."""

    def __init__(self, directory: Path, key: ec.EllipticCurvePrivateKey, certificate: x509.Certificate) -> None:
        self.directory = directory
        self._key = key
        self.certificate = certificate
        self.revocations = RevocationList(directory / REVOCATIONS)

    @classmethod
    def load_or_create(cls, data_dir: Path) -> FleetCA:
        directory = data_dir / PKI_DIR
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        key_path, cert_path = directory / CA_KEY, directory / CA_CERT
        if key_path.exists() and cert_path.exists():
            os.chmod(key_path, 0o600)
            return cls(directory, load_private_key(key_path.read_bytes()), load_cert(cert_path.read_bytes()))
        key = new_key()
        cert = self_signed_ca(key, "dpufleet", f"dpufleet fleet CA {socket.gethostname()}", CLOCK_SKEW, CA_LIFETIME)
        write_private(key_path, key_pem(key))
        cert_path.write_bytes(cert_pem(cert))
        log.warning("created the fleet CA in %s (key mode 0600)", directory)
        return cls(directory, key, cert)

    @property
    def cert_path(self) -> Path:
        return self.directory / CA_CERT

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.certificate)

    def issue(
        self,
        csr: x509.CertificateSigningRequest,
        identity: AgentIdentity,
        lifetime: dt.timedelta = CLIENT_LIFETIME,
        now: dt.datetime | None = None,
    ) -> IssuedCertificate:
        """A client certificate for the CSR's key naming `identity`; the CSR's own subject is ignored."""
        start = now or utcnow()
        public = csr.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey):
            raise PKIError("csr key type is not supported")
        cert = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dpufleet"),
                        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, identity.role),
                        x509.NameAttribute(NameOID.COMMON_NAME, identity.serial),
                    ]
                )
            )
            .issuer_name(self.certificate.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start - CLOCK_SKEW)
            .not_valid_after(start + lifetime)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_leaf_usage(), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri)]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        return IssuedCertificate(cert, identity)

    def verify_issued(self, cert: x509.Certificate) -> AgentIdentity:
        """Check what TLS already checked (our signature, validity) plus identity and revocation."""
        if cert.issuer != self.certificate.subject:
            raise PKIError("the certificate was not issued by this fleet CA")
        try:
            cert.verify_directly_issued_by(self.certificate)
        except (InvalidSignature, ValueError, TypeError):
            raise PKIError("the certificate's signature does not verify against the fleet CA") from None
        now = utcnow()
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise PKIError(
                f"the certificate is not valid now (valid {cert.not_valid_before_utc} to {cert.not_valid_after_utc})"
            )
        identity = identity_of(cert)
        reason = self.revocations.why_revoked(cert, identity)
        if reason is not None:
            raise PKIError(reason)
        return identity

    def server_credentials(self, hosts: list[str]) -> tuple[Path, Path]:
        """(cert, key) paths for the agent listener, reissued when missing, near expiry or lacking a name."""
        cert_path, key_path = self.directory / SERVER_CERT, self.directory / SERVER_KEY
        wanted = sorted(set(hosts) | {"localhost", "127.0.0.1"})
        if cert_path.exists() and key_path.exists():
            current = load_cert(cert_path.read_bytes())
            names = _san_names(current)
            if set(wanted) <= names and current.not_valid_after_utc - utcnow() > dt.timedelta(days=30):
                return cert_path, key_path
        key = new_key()
        now = utcnow()
        alt: list[x509.GeneralName] = []
        for host in wanted:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                alt.append(x509.DNSName(host))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dpufleet agent listener")]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + SERVER_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_leaf_usage(), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        write_private(key_path, key_pem(key))
        cert_path.write_bytes(cert_pem(cert))
        return cert_path, key_path


def _san_names(cert: x509.Certificate) -> set[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(v) for v in san.get_values_for_type(x509.IPAddress)} | set(san.get_values_for_type(x509.DNSName))


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _leaf_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sign_proof(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey, csr_der: bytes) -> str:
    """What the device does with its IDevID key: sign the CSR it is about to send."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return base64.b64encode(key.sign(csr_der)).decode()
    return base64.b64encode(key.sign(csr_der, ec.ECDSA(hashes.SHA256()))).decode()
