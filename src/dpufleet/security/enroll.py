"""Zero-trust agent enrollment: a device earns a fleet certificate by proving who it is.

Two proofs are accepted, and nothing else (no shared secret, no "first come"):

- a one-time enrollment token an operator issued for the device's expected serial
  (`dpufleet enroll token create --serial S`); only its SHA-256 is stored, it is
  bound to the serial and role, expires, and is consumed by its first use;
- a device identity certificate (IDevID, IEEE 802.1AR style) signed by a vendor CA
  the operator trusts (`dpufleet enroll trust-vendor-ca FILE`), whose subject
  serialNumber is the device's serial, plus a signature over the CSR made with the
  IDevID key, proving the device holds that key right now.

Either way the device sends a CSR for a key it generated itself and receives a
short-lived client certificate; it renews with its current certificate before
two thirds of its life have passed. Decommissioning revokes the device.
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import hashlib
import hmac
import json
import logging
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from pydantic import BaseModel, Field

from ..crypto.pki import (
    CLIENT_LIFETIME,
    AgentIdentity,
    FleetCA,
    IssuedCertificate,
    PKIError,
    Role,
    cert_pem,
    fingerprint,
    load_cert,
    load_csr,
    utcnow,
    write_private,
)
from .audit import AuditEntry

log = logging.getLogger(__name__)

TOKENS_FILE = "enrollment-tokens.json"
VENDOR_CA_DIR = "vendor-cas"
TOKEN_PREFIX = "dpfe"
DEFAULT_TOKEN_LIFETIME = dt.timedelta(hours=1)
MAX_PEM = 16 * 1024


class RefusalCode(enum.StrEnum):
    NO_CREDENTIAL = "NoCredential"
    TOKEN_UNKNOWN = "TokenUnknown"
    TOKEN_USED = "TokenAlreadyUsed"
    TOKEN_EXPIRED = "TokenExpired"
    TOKEN_WRONG_DEVICE = "TokenBoundToAnotherDevice"
    IDEVID_INVALID = "IDevIDInvalid"
    IDEVID_UNTRUSTED = "IDevIDUntrusted"
    IDEVID_WRONG_DEVICE = "IDevIDNamesAnotherDevice"
    PROOF_INVALID = "ProofOfPossessionInvalid"
    DEVICE_REVOKED = "DeviceRevoked"
    CSR_INVALID = "CSRInvalid"


class EnrollmentRefused(Exception):
    """Why a device was not given a certificate; `code` is stable, `message` is for people."""

    def __init__(self, code: RefusalCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class IDevIDProof(BaseModel):
    certificate: str = Field(max_length=MAX_PEM, description="the IDevID certificate (PEM)")
    intermediates: list[str] = Field(default_factory=list, max_length=4)
    signature: str = Field(max_length=2048, description="base64 signature over the CSR (DER) with the IDevID key")


class EnrollRequest(BaseModel):
    serial: str = Field(min_length=1, max_length=128)
    role: Role = "dpu"
    csr: str = Field(min_length=1, max_length=MAX_PEM)
    token: str | None = Field(default=None, max_length=256)
    idevid: IDevIDProof | None = None


class RenewRequest(BaseModel):
    csr: str = Field(min_length=1, max_length=MAX_PEM)


class EnrollReply(BaseModel):
    identity: str
    certificate: str
    caCertificate: str
    notAfter: str
    renewAfter: str


@dataclass(frozen=True)
class EnrollmentToken:
    token: str  # shown once, never stored
    token_id: str
    identity: AgentIdentity
    expires: dt.datetime
    project: str | None = None


@dataclass(frozen=True)
class TokenInfo:
    token_id: str
    identity: str
    created: str
    expires: str
    created_by: str
    used: str | None
    project: str | None = None


def _token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class EnrollmentTokens:
    """One-time tokens bound to a device; stored as SHA-256 only, consumed atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def _load(self) -> dict[str, dict[str, str | None]]:
        if not self.path.exists():
            return {}
        doc: dict[str, dict[str, str | None]] = json.loads(self.path.read_text())
        return doc

    def _save(self, doc: dict[str, dict[str, str | None]]) -> None:
        write_private(self.path, json.dumps(doc, indent=1, sort_keys=True).encode())

    def create(
        self,
        identity: AgentIdentity,
        lifetime: dt.timedelta = DEFAULT_TOKEN_LIFETIME,
        created_by: str = "?",
        project: str | None = None,
    ) -> EnrollmentToken:
        """`project`: where the device belongs until an object of it exists (inventory/tenancy.py)."""
        token_id = secrets.token_hex(4)
        secret = secrets.token_urlsafe(32)
        now = utcnow()
        expires = now + lifetime
        with self._lock:
            doc = self._load()
            doc[token_id] = {
                "sha256": _token_hash(secret),
                "identity": str(identity),
                "created": now.isoformat(),
                "expires": expires.isoformat(),
                "createdBy": created_by,
                "used": None,
                "project": project,
            }
            self._save(doc)
        return EnrollmentToken(f"{TOKEN_PREFIX}.{token_id}.{secret}", token_id, identity, expires, project)

    def list(self) -> list[TokenInfo]:
        with self._lock:
            doc = self._load()
        return [
            TokenInfo(
                tid,
                str(e["identity"]),
                str(e["created"]),
                str(e["expires"]),
                str(e["createdBy"]),
                e["used"],
                e.get("project"),
            )
            for tid, e in sorted(doc.items(), key=lambda kv: str(kv[1]["created"]))
        ]

    def project_of(self, identity: AgentIdentity) -> str | None:
        """The project named by the token `identity` last enrolled with (None: no token, or it named none).

        What admitted the device decides where it belongs while no object of it exists yet; a token
        issued but never used admitted nothing."""
        with self._lock:
            doc = self._load()
        used = [e for e in doc.values() if e["identity"] == str(identity) and e["used"]]
        if not used:
            return None
        newest = max(used, key=lambda e: str(e["used"]))
        return str(newest["project"]) if newest.get("project") else None

    def consume(self, token: str, identity: AgentIdentity) -> None:
        """Use the token for `identity`, or refuse; a token is spent even if later steps fail."""
        prefix, _, rest = token.partition(".")
        token_id, _, secret = rest.partition(".")
        with self._lock:
            doc = self._load()
            entry = doc.get(token_id) if prefix == TOKEN_PREFIX else None
            if entry is None or not hmac.compare_digest(str(entry["sha256"]), _token_hash(secret)):
                raise EnrollmentRefused(RefusalCode.TOKEN_UNKNOWN, "the enrollment token is not known to this server")
            if entry["used"]:
                raise EnrollmentRefused(
                    RefusalCode.TOKEN_USED, f"enrollment token {token_id} was already used at {entry['used']}"
                )
            if dt.datetime.fromisoformat(str(entry["expires"])) < utcnow():
                raise EnrollmentRefused(
                    RefusalCode.TOKEN_EXPIRED, f"enrollment token {token_id} expired at {entry['expires']}"
                )
            if entry["identity"] != str(identity):
                raise EnrollmentRefused(
                    RefusalCode.TOKEN_WRONG_DEVICE,
                    f"enrollment token {token_id} is bound to {entry['identity']}, not {identity}",
                )
            entry["used"] = utcnow().isoformat()
            self._save(doc)


class VendorTrust:
    """Vendor CAs whose IDevIDs the operator accepts, one PEM file per CA (named by fingerprint)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def add(self, pem: bytes) -> x509.Certificate:
        cert = load_cert(pem)
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            raise PKIError("not a CA certificate: it has no basicConstraints") from None
        if not constraints.ca:
            raise PKIError("not a CA certificate: basicConstraints says CA:FALSE")
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / (fingerprint(cert).removeprefix("sha256:")[:32] + ".pem")).write_bytes(cert_pem(cert))
        return cert

    def roots(self) -> list[x509.Certificate]:
        if not self.directory.is_dir():
            return []
        return [load_cert(p.read_bytes()) for p in sorted(self.directory.glob("*.pem"))]

    def verify(self, leaf: x509.Certificate, intermediates: list[x509.Certificate]) -> x509.Certificate:
        """Walk leaf -> intermediates -> a trusted root; return the root or raise PKIError."""
        now = utcnow()
        chain = [leaf, *intermediates]
        for i, cert in enumerate(chain):
            if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
                raise PKIError(f"{cert.subject.rfc4514_string()} is not valid now")
            if i > 0 and not _is_ca(cert):
                raise PKIError(f"{cert.subject.rfc4514_string()} is not a CA")
        for i in range(len(chain) - 1):
            _signed_by(chain[i], chain[i + 1])
        top = chain[-1]
        for root in self.roots():
            if root.subject == top.issuer:
                try:
                    _signed_by(top, root)
                except PKIError:
                    continue
                return root
        raise PKIError(f"no trusted vendor CA issued {top.issuer.rfc4514_string()!r}")


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> None:
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError) as exc:
        raise PKIError(
            f"{cert.subject.rfc4514_string()} is not signed by {issuer.subject.rfc4514_string()}: {exc}"
        ) from None


def idevid_serial(cert: x509.Certificate) -> str | None:
    """IEEE 802.1AR puts the device serial in the subject's serialNumber attribute."""
    values = cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
    return str(values[0].value) if values else None


def _verify_proof(cert: x509.Certificate, signature_b64: str, data: bytes) -> None:
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except ValueError:
        raise EnrollmentRefused(RefusalCode.PROOF_INVALID, "idevid.signature is not base64") from None
    key = cert.public_key()
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        else:
            raise EnrollmentRefused(RefusalCode.IDEVID_INVALID, "the IDevID key type is not supported")
    except InvalidSignature:
        raise EnrollmentRefused(
            RefusalCode.PROOF_INVALID, "the signature over the CSR was not made with the IDevID's key"
        ) from None


class AuditSink(Protocol):
    def record(self, entry: AuditEntry) -> object: ...


class EnrollmentAuthority:
    """Turns a proven device identity and a CSR into a fleet certificate."""

    def __init__(self, ca: FleetCA, lifetime: dt.timedelta = CLIENT_LIFETIME, audit: AuditSink | None = None) -> None:
        self.ca = ca
        self.lifetime = lifetime
        self.audit_log = audit
        self.tokens = EnrollmentTokens(ca.directory / TOKENS_FILE)
        self.vendors = VendorTrust(ca.directory / VENDOR_CA_DIR)

    def audit(
        self,
        action: str,
        identity: str,
        result: str,
        detail: str,
        source: str | None = None,
        *,
        subject: str | None = None,
        roles: str = "agent",
        code: int = 200,
    ) -> None:
        """Every enrollment, renewal, refusal, token and revocation is a security event: log it and audit it."""
        log.info("%s %s: %s (%s) from %s", action, identity, result, detail, source or "?")
        if self.audit_log is None:
            return
        role, _, name = identity.partition("/")
        entry = AuditEntry(
            subject=subject or f"agent:{identity}",
            roles=roles,
            action=action,
            kind={"dpu": "DPU", "host": "Host"}.get(role, ""),
            name=name,
            result=result,
            code=code,
            source=source or "",
            detail=detail,
        )
        try:
            self.audit_log.record(entry)
        except Exception:  # the audit store failing must not hide why; the log above still has it
            log.exception("could not append the %s audit record for %s", action, identity)

    def _reply(self, issued: IssuedCertificate) -> EnrollReply:
        return EnrollReply(
            identity=issued.identity.uri,
            certificate=cert_pem(issued.certificate).decode(),
            caCertificate=cert_pem(self.ca.certificate).decode(),
            notAfter=issued.not_after.isoformat(),
            renewAfter=issued.renew_after.isoformat(),
        )

    def enroll(self, request: EnrollRequest, source: str | None = None) -> EnrollReply:
        try:
            identity = AgentIdentity(request.role, request.serial)
            csr = load_csr(request.csr)
        except PKIError as exc:
            self._refused("enroll", f"{request.role}/{request.serial}", RefusalCode.CSR_INVALID, str(exc), source)
        try:
            how = self._prove(request, identity, csr)
        except EnrollmentRefused as exc:
            self._refused("enroll", str(identity), exc.code, exc.message, source)
        issued = self.ca.issue(csr, identity, self.lifetime)
        self.audit(
            "enroll", str(identity), "Success", f"{how}; certificate {issued.certificate.serial_number:x}", source
        )
        return self._reply(issued)

    def _prove(self, request: EnrollRequest, identity: AgentIdentity, csr: x509.CertificateSigningRequest) -> str:
        if request.token:
            self.tokens.consume(request.token, identity)
            # the operator issued a token for this device after it was revoked: it is re-admitted
            self.ca.revocations.readmit_device(identity)
            return f"token {request.token.split('.')[1] if request.token.count('.') == 2 else '?'}"
        if request.idevid is not None:
            return self.verify_idevid(identity, request.idevid, csr.public_bytes(Encoding.DER))
        raise EnrollmentRefused(RefusalCode.NO_CREDENTIAL, "send an enrollment token or an IDevID proof")

    def verify_idevid(self, identity: AgentIdentity, proof: IDevIDProof, data: bytes) -> str:
        """That `proof` is a trusted vendor's IDevID naming `identity`'s serial, and a signature over `data`
        made with its key right now (enrollment signs its CSR; zero-touch bootstrap its request)."""
        if self.ca.revocations.device_revoked_at(identity) is not None:
            raise EnrollmentRefused(
                RefusalCode.DEVICE_REVOKED,
                f"{identity} was decommissioned; an operator must issue an enrollment token to re-admit it",
            )
        try:
            leaf = load_cert(proof.certificate)
            chain = [load_cert(p) for p in proof.intermediates]
        except PKIError as exc:
            raise EnrollmentRefused(RefusalCode.IDEVID_INVALID, str(exc)) from None
        try:
            root = self.vendors.verify(leaf, chain)
        except PKIError as exc:
            raise EnrollmentRefused(RefusalCode.IDEVID_UNTRUSTED, str(exc)) from None
        named = idevid_serial(leaf)
        if named != identity.serial:
            raise EnrollmentRefused(
                RefusalCode.IDEVID_WRONG_DEVICE, f"the IDevID names serial {named!r}, not {identity.serial!r}"
            )
        _verify_proof(leaf, proof.signature, data)
        return f"IDevID from {root.subject.rfc4514_string()}"

    def renew(self, identity: AgentIdentity, request: RenewRequest, source: str | None = None) -> EnrollReply:
        """The caller already authenticated with a current, unrevoked certificate for `identity`."""
        try:
            csr = load_csr(request.csr)
        except PKIError as exc:
            self._refused("renew", str(identity), RefusalCode.CSR_INVALID, str(exc), source)
        issued = self.ca.issue(csr, identity, self.lifetime)
        self.audit("renew", str(identity), "Success", f"certificate {issued.certificate.serial_number:x}", source)
        return self._reply(issued)

    def revoke(self, identity: AgentIdentity, by: str = "?", source: str | None = None) -> dt.datetime:
        when = self.ca.revocations.revoke_device(identity)
        self.audit(
            "enroll-revoke", str(identity), "Success", "device decommissioned", source, subject=by, roles="operator"
        )
        return when

    def _refused(self, action: str, who: str, code: RefusalCode, message: str, source: str | None) -> NoReturn:
        log.warning("%s refused for %s from %s: %s: %s", action, who, source or "?", code, message)
        self.audit(action, who, str(code), message, source, code=403)
        raise EnrollmentRefused(code, message)
