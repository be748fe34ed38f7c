"""Signed onboarding information for zero-touch bootstrap (the ideas of sZTP, RFC 8572).

A DPU that boots with no configuration learns a bootstrap URL and the key id of the control
plane's onboarding key (the emulated DHCP option; on a real network the operator's DHCP
server hands both out). It asks the bootstrap endpoint for its onboarding information,
proving its serial with its IDevID, and gets a document naming the image to install (signed
URL, digest, version), the flavor, and a one-time enrollment token bound to its serial --
signed by the control plane with ed25519, in the same envelope shape as signed manifests
(`crypto/signing.py`: canonical JSON, ``signatures: [{keyid, sig}]``).

The device verifies before it uses anything: the public key the server offers must hash to
the key id it was given (the pin), a signature by that key must cover the document's
canonical bytes, the document must name its own serial and be unexpired. Anything else is
refused with a reason (`Unsigned`, `UnknownKey`, `BadSignature`, `WrongDevice`, `Expired`,
`Malformed`), which the device reports.

Unlike full sZTP there is no ownership voucher: the device trusts the key its DHCP option
pins, so the DHCP server is part of the trust base (as the CA hash an agent pins is).
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import json
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .pki import write_private
from .signing import Signature, key_id

KEY_FILE = "onboarding.key"
DOCUMENT_LIFETIME = dt.timedelta(hours=1)
REQUEST_MAX_AGE = dt.timedelta(minutes=5)  # how old a device's signed request may be


class OnboardingRefusal(enum.StrEnum):
    UNSIGNED = "Unsigned"
    UNKNOWN_KEY = "UnknownKey"
    BAD_SIGNATURE = "BadSignature"
    WRONG_DEVICE = "WrongDevice"
    EXPIRED = "Expired"
    MALFORMED = "Malformed"


class OnboardingRefused(Exception):
    def __init__(self, reason: OnboardingRefusal, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OnboardingImage(_Frozen):
    name: str
    version: str
    target: str  # firmware id the image replaces (the DPU's OS)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    fileName: str
    url: str  # short-lived signed URL on the control plane's repository


class OnboardingEnrollment(_Frozen):
    token: str  # one-time, bound to this serial as a DPU
    agentURL: str  # the agent listener (mTLS)
    caSha256: str  # "sha256:<hex>" of the fleet CA certificate: what the agent pins


class OnboardingInfo(_Frozen):
    serial: str
    dpu: str  # the DPU object it onboards as
    image: OnboardingImage
    flavor: str | None = None
    enrollment: OnboardingEnrollment
    progressURL: str
    issued: dt.datetime
    expires: dt.datetime

    def canonical(self) -> bytes:
        doc = self.model_dump(mode="json")
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class SignedOnboarding(_Frozen):
    onboarding: OnboardingInfo
    signatures: list[Signature] = Field(default_factory=list, max_length=16)
    publicKey: str | None = None  # base64 of the raw ed25519 key: checked against the device's pin, never trusted alone


def public_b64(key: ed25519.Ed25519PublicKey) -> str:
    return base64.b64encode(key.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


class OnboardingKey:
    """The control plane's onboarding signing key, created on first use (0600 in the data dir)."""

    def __init__(self, private: ed25519.Ed25519PrivateKey) -> None:
        self.private = private
        self.public = private.public_key()
        self.keyid = key_id(self.public)

    @classmethod
    def load_or_create(cls, directory: Path) -> OnboardingKey:
        path = directory / KEY_FILE
        if path.exists():
            key = load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(key, ed25519.Ed25519PrivateKey):
                raise ValueError(f"{path}: the onboarding key must be ed25519")
            return cls(key)
        key = ed25519.Ed25519PrivateKey.generate()
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        write_private(path, key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
        return cls(key)

    def sign(self, info: OnboardingInfo) -> SignedOnboarding:
        sig = base64.b64encode(self.private.sign(info.canonical())).decode()
        return SignedOnboarding(
            onboarding=info, signatures=[Signature(keyid=self.keyid, sig=sig)], publicKey=public_b64(self.public)
        )


def verify_onboarding(raw: bytes, pinned_keyid: str, serial: str, now: dt.datetime | None = None) -> OnboardingInfo:
    """The onboarding information in `raw` if, and only if, the pinned key signed it for this device."""
    try:
        envelope = SignedOnboarding.model_validate_json(raw)
    except ValidationError as exc:
        raise OnboardingRefused(
            OnboardingRefusal.MALFORMED, f"not signed onboarding information: {exc.errors()[0]['msg']}"
        ) from None
    if not envelope.signatures:
        raise OnboardingRefused(OnboardingRefusal.UNSIGNED, "the onboarding information carries no signature")
    if envelope.publicKey is None:
        raise OnboardingRefused(OnboardingRefusal.UNKNOWN_KEY, "no public key came with the onboarding information")
    try:
        public = ed25519.Ed25519PublicKey.from_public_bytes(base64.b64decode(envelope.publicKey, validate=True))
    except ValueError:
        raise OnboardingRefused(OnboardingRefusal.UNKNOWN_KEY, "the offered public key is not ed25519") from None
    if key_id(public) != pinned_keyid.lower().removeprefix("sha256:"):
        raise OnboardingRefused(
            OnboardingRefusal.UNKNOWN_KEY,
            f"signed with key {key_id(public)[:16]}..., not the pinned {pinned_keyid[:23]}...",
        )
    data = envelope.onboarding.canonical()
    good = False
    for signature in envelope.signatures:
        if signature.keyid != key_id(public):
            continue
        try:
            public.verify(base64.b64decode(signature.sig, validate=True), data)
            good = True
        except (InvalidSignature, ValueError):
            pass
    if not good:
        raise OnboardingRefused(
            OnboardingRefusal.BAD_SIGNATURE, "no signature by the pinned key covers this onboarding information"
        )
    info = envelope.onboarding
    if info.serial != serial:
        raise OnboardingRefused(OnboardingRefusal.WRONG_DEVICE, f"issued for serial {info.serial}, not {serial}")
    when = now or dt.datetime.now(dt.UTC)
    if not info.issued - dt.timedelta(minutes=5) <= when <= info.expires:
        raise OnboardingRefused(OnboardingRefusal.EXPIRED, f"valid {info.issued} .. {info.expires}, now {when}")
    return info


class DeviceRequest(BaseModel):
    """What a device signs with its IDevID key when it asks for onboarding or reports progress."""

    model_config = ConfigDict(extra="forbid")

    serial: str = Field(min_length=1, max_length=128)
    purpose: str = Field(pattern="^(onboarding|progress)$")
    at: dt.datetime
    stage: str | None = Field(default=None, max_length=64)
    reason: str | None = Field(default=None, max_length=64)
    message: str | None = Field(default=None, max_length=2000)
    version: str | None = Field(default=None, max_length=128)

    def canonical(self) -> bytes:
        doc = self.model_dump(mode="json")
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
