"""Signed artifacts: nothing is installed or started unless its manifest verifies.

A manifest names an artifact (an OS image, a firmware bundle, a service package),
its version and a monotonic `sequence` (rollback protection compares these, never
version strings), the SHA-256 of every component, what it is compatible with, who
published it and in which class (vendor, official, third-party, private), and
when it stops being acceptable. The publisher signs the canonical JSON of the
manifest with ed25519; the envelope carries the manifest and its signatures:

    {"manifest": {...}, "signatures": [{"keyid": "<sha256 of the raw public key>", "sig": "<base64>"}]}

Trust is configured per publisher key (which publisher and class it speaks for)
and per project (which classes the project may deploy). `verify_manifest` refuses,
with a `ManifestRefused` carrying a stable `RefusalReason`: malformed, unsigned,
unknown key, bad signature (tampered), publisher mismatch, class not allowed,
expired, not yet valid, rolled back; `verify_component` refuses a blob whose digest
differs from the manifest's.
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import BaseModel, ConfigDict, Field, ValidationError

MAX_ENVELOPE = 1024 * 1024
SHA256_HEX = r"^[0-9a-f]{64}$"


class PublisherClass(enum.StrEnum):
    VENDOR = "vendor"
    OFFICIAL = "official"
    THIRD_PARTY = "third-party"
    PRIVATE = "private"


class RefusalReason(enum.StrEnum):
    MALFORMED = "Malformed"
    UNSIGNED = "Unsigned"
    UNKNOWN_KEY = "UnknownKey"
    BAD_SIGNATURE = "BadSignature"
    PUBLISHER_MISMATCH = "PublisherMismatch"
    CLASS_NOT_ALLOWED = "ClassNotAllowed"
    EXPIRED = "Expired"
    NOT_YET_VALID = "NotYetValid"
    ROLLBACK = "Rollback"
    DIGEST_MISMATCH = "DigestMismatch"
    UNKNOWN_COMPONENT = "UnknownComponent"
    INCOMPATIBLE = "Incompatible"


class ManifestRefused(Exception):
    def __init__(self, reason: RefusalReason, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class Component(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=256)
    sha256: str = Field(pattern=SHA256_HEX)
    size: int = Field(ge=0)


class Compatibility(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    vendors: list[str] = Field(default_factory=list, max_length=64)
    models: list[str] = Field(default_factory=list, max_length=256)
    partNumbers: list[str] = Field(default_factory=list, max_length=1024)
    minAgentVersion: str | None = Field(default=None, max_length=64)


class Publisher(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=128)
    publisherClass: PublisherClass = Field(alias="class")


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
    version: str = Field(min_length=1, max_length=64)
    sequence: int = Field(ge=0, le=2**53, description="monotonic; a lower sequence than installed is a rollback")
    components: list[Component] = Field(min_length=1, max_length=1024)
    compatibility: Compatibility = Field(default_factory=Compatibility)
    publisher: Publisher
    issued: dt.datetime
    expires: dt.datetime

    def canonical(self) -> bytes:
        """The bytes that are signed: sorted keys, no whitespace, UTF-8."""
        doc = self.model_dump(mode="json", by_alias=True)
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    def component(self, name: str) -> Component:
        for c in self.components:
            if c.name == name:
                return c
        raise ManifestRefused(RefusalReason.UNKNOWN_COMPONENT, f"{self.name} {self.version} has no component {name!r}")


class Signature(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    keyid: str = Field(pattern=SHA256_HEX)
    sig: str = Field(min_length=1, max_length=256)


class SignedManifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    manifest: Manifest
    signatures: list[Signature] = Field(default_factory=list, max_length=16)

    def to_json(self) -> bytes:
        return json.dumps(self.model_dump(mode="json", by_alias=True), indent=1, sort_keys=True).encode()


def key_id(public: ed25519.Ed25519PublicKey) -> str:
    return hashlib.sha256(public.public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest()


def sign_manifest(manifest: Manifest, key: ed25519.Ed25519PrivateKey) -> SignedManifest:
    sig = base64.b64encode(key.sign(manifest.canonical())).decode()
    return SignedManifest(manifest=manifest, signatures=[Signature(keyid=key_id(key.public_key()), sig=sig)])


def load_public_key(text: str | bytes) -> ed25519.Ed25519PublicKey:
    """An ed25519 public key from PEM (SubjectPublicKeyInfo) or from base64 of its 32 raw bytes."""
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    raw = text.encode() if isinstance(text, str) else text
    if b"-----BEGIN" in raw:
        try:
            key = load_pem_public_key(raw)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"not a PEM public key: {str(exc)[:120]}") from None
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise ValueError(f"the PEM key is {type(key).__name__.removeprefix('_')}, not ed25519")
        return key
    try:
        decoded = base64.b64decode(raw.strip(), validate=True)
    except ValueError:
        raise ValueError("not PEM and not base64") from None
    if len(decoded) != 32:
        raise ValueError(f"a raw ed25519 public key is 32 bytes; this one is {len(decoded)}")
    return ed25519.Ed25519PublicKey.from_public_bytes(decoded)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_signed_manifest(data: bytes | str) -> SignedManifest:
    """Bytes from anywhere (a repository, a tenant) to a typed envelope, or ManifestRefused(Malformed)."""
    raw = data.encode() if isinstance(data, str) else data
    if len(raw) > MAX_ENVELOPE:
        raise ManifestRefused(RefusalReason.MALFORMED, f"the envelope is {len(raw)} bytes; the limit is {MAX_ENVELOPE}")
    try:
        doc: Any = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ManifestRefused(RefusalReason.MALFORMED, f"not JSON: {str(exc)[:200]}") from None
    if not isinstance(doc, dict):
        raise ManifestRefused(RefusalReason.MALFORMED, "the envelope must be a JSON object")
    try:
        return SignedManifest.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise ManifestRefused(RefusalReason.MALFORMED, f"{where}: {first.get('msg')}") from None
    except (ValueError, TypeError, RecursionError) as exc:  # pragma: no cover - pydantic wraps nearly all
        raise ManifestRefused(RefusalReason.MALFORMED, str(exc)[:200]) from None


@dataclass(frozen=True)
class TrustedKey:
    publisher: str
    publisher_class: PublisherClass
    key: ed25519.Ed25519PublicKey

    @property
    def keyid(self) -> str:
        return key_id(self.key)


@dataclass
class TrustPolicy:
    """Which keys speak for which publishers, and which publisher classes each project may deploy."""

    keys: dict[str, TrustedKey] = field(default_factory=dict)
    project_classes: dict[str, frozenset[PublisherClass]] = field(default_factory=dict)
    default_classes: frozenset[PublisherClass] = frozenset({PublisherClass.VENDOR, PublisherClass.OFFICIAL})

    def trust(self, publisher: str, publisher_class: PublisherClass, key: ed25519.Ed25519PublicKey) -> TrustedKey:
        trusted = TrustedKey(publisher, publisher_class, key)
        self.keys[trusted.keyid] = trusted
        return trusted

    def allow(self, project: str, *classes: PublisherClass) -> None:
        self.project_classes[project] = frozenset(classes)

    def classes_for(self, project: str) -> frozenset[PublisherClass]:
        return self.project_classes.get(project, self.default_classes)


def verify_manifest(
    signed: SignedManifest | bytes | str,
    policy: TrustPolicy,
    project: str,
    *,
    installed_sequence: int | None = None,
    allow_downgrade: bool = False,
    now: dt.datetime | None = None,
) -> Manifest:
    """The manifest, if a trusted key of its publisher signed exactly it and this project may deploy it now."""
    envelope = signed if isinstance(signed, SignedManifest) else parse_signed_manifest(signed)
    manifest = envelope.manifest
    label = f"{manifest.name} {manifest.version}"
    if not envelope.signatures:
        raise ManifestRefused(RefusalReason.UNSIGNED, f"{label} carries no signature")
    payload = manifest.canonical()
    signer: TrustedKey | None = None
    unknown: list[str] = []
    for entry in envelope.signatures:
        trusted = policy.keys.get(entry.keyid)
        if trusted is None:
            unknown.append(entry.keyid[:16])
            continue
        try:
            trusted.key.verify(base64.b64decode(entry.sig, validate=True), payload)
        except (InvalidSignature, ValueError):
            raise ManifestRefused(
                RefusalReason.BAD_SIGNATURE,
                f"{label}: the signature of key {entry.keyid[:16]} ({trusted.publisher}) does not match the "
                "manifest: it was altered after signing, or signed by another key",
            ) from None
        signer = trusted
        break
    if signer is None:
        raise ManifestRefused(
            RefusalReason.UNKNOWN_KEY, f"{label} is signed only by untrusted keys {', '.join(unknown)}"
        )
    claimed = manifest.publisher
    if (claimed.name, claimed.publisherClass) != (signer.publisher, signer.publisher_class):
        raise ManifestRefused(
            RefusalReason.PUBLISHER_MISMATCH,
            f"{label} claims publisher {claimed.name} ({claimed.publisherClass}) but is signed by the key of "
            f"{signer.publisher} ({signer.publisher_class})",
        )
    allowed = policy.classes_for(project)
    if signer.publisher_class not in allowed:
        raise ManifestRefused(
            RefusalReason.CLASS_NOT_ALLOWED,
            f"project {project} may deploy {', '.join(sorted(allowed)) or 'nothing'}, not {signer.publisher_class} "
            f"artifacts like {label}",
        )
    moment = now or dt.datetime.now(dt.UTC)
    expires = _aware(manifest.expires)
    if moment >= expires:
        raise ManifestRefused(RefusalReason.EXPIRED, f"{label} expired at {expires.isoformat()}")
    issued = _aware(manifest.issued)
    if issued - dt.timedelta(minutes=5) > moment:
        raise ManifestRefused(RefusalReason.NOT_YET_VALID, f"{label} is issued in the future ({issued.isoformat()})")
    if installed_sequence is not None and manifest.sequence < installed_sequence and not allow_downgrade:
        raise ManifestRefused(
            RefusalReason.ROLLBACK,
            f"{label} has sequence {manifest.sequence}, older than the installed {installed_sequence}; "
            "pass allow_downgrade to install it anyway",
        )
    return manifest


def verify_component(manifest: Manifest, name: str, data: bytes) -> Component:
    component = manifest.component(name)
    got = digest(data)
    if got != component.sha256 or len(data) != component.size:
        raise ManifestRefused(
            RefusalReason.DIGEST_MISMATCH,
            f"{manifest.name} {manifest.version}: component {name} has sha256 {got[:16]}... ({len(data)} bytes), "
            f"the manifest says {component.sha256[:16]}... ({component.size} bytes)",
        )
    return component


def _aware(when: dt.datetime) -> dt.datetime:
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)
