"""Verification of an Image's signed manifest before its content is used on a DPU.

Digests are verified by the repository on upload, on mirror and again at staging. The signed
manifest (spec.signedManifest, made by `dpufleet image sign`) is checked here, the single hook
the staging phase calls, through `dpufleet.crypto.signing.verify_manifest`:

- the manifest verifies under the TrustPolicy built from the Publisher objects (a trusted key of
  the publisher it names signed exactly it), and its publisher class is one the DPU's project
  allows (Project.spec.allowedPublisherClasses; vendor and official by default);
- an image without a signed manifest is refused when the project sets requireSignedImages;
- its component digests (and sizes) are exactly the Image's components;
- its compatibility (vendors, models, part numbers) admits the DPU as inventoried;
- its sequence is not older than the one installed on the DPU (status.installedSequence),
  unless the DPU carries the annotation `dpufleet.io/allow-downgrade: "true"`.

Every refusal is a `ManifestRefused` with its `RefusalReason`; the staging phase turns it into
StagingImageFailed with that reason, and nothing is flashed.
"""

from __future__ import annotations

import json
from typing import Any

from ..api.errors import NotFound
from ..api.kinds import DEFAULT_PUBLISHER_CLASSES
from ..crypto.signing import (
    Manifest,
    ManifestRefused,
    PublisherClass,
    RefusalReason,
    TrustPolicy,
    load_public_key,
    parse_signed_manifest,
    verify_manifest,
)
from ..store.store import Store

ALLOW_DOWNGRADE = "dpufleet.io/allow-downgrade"


def trust_policy(store: Store, project: str) -> TrustPolicy:
    """The trusted keys (every Publisher object) and the classes `project` may deploy."""
    policy = TrustPolicy()
    for publisher in store.list("Publisher").items:
        spec = publisher.get("spec") or {}
        try:
            key = load_public_key(str(spec.get("publicKey") or ""))
            klass = PublisherClass(str(spec.get("publisherClass")))
        except ValueError:
            continue  # validated on write; a damaged record trusts nothing
        policy.trust(publisher["metadata"]["name"], klass, key)
    policy.allow(project, *_project_spec(store, project)[0])
    return policy


def project_spec(store: Store, project: str) -> dict[str, Any]:
    """The project's spec as stored ({} when there is no Project object: the defaults apply)."""
    try:
        spec: dict[str, Any] = store.get("Project", project, project).get("spec") or {}
    except NotFound:
        return {}
    return spec


def _project_spec(store: Store, project: str) -> tuple[list[PublisherClass], bool]:
    spec = project_spec(store, project)
    classes = [PublisherClass(c) for c in spec.get("allowedPublisherClasses", DEFAULT_PUBLISHER_CLASSES)]
    return classes, bool(spec.get("requireSignedImages"))


def verify_image_manifest(image: dict[str, Any], dpu: dict[str, Any], store: Store) -> Manifest | None:
    """The verified manifest; None for an unsigned image its project accepts; else ManifestRefused."""
    spec = image.get("spec") or {}
    meta = dpu.get("metadata") or {}
    project = str(meta.get("project") or "default")
    label = f"image {image['metadata']['name']!r}"
    signed = spec.get("signedManifest")
    if not signed:
        if _project_spec(store, project)[1]:
            raise ManifestRefused(
                RefusalReason.UNSIGNED, f"{label} carries no signed manifest and project {project} requires one"
            )
        return None
    status = dpu.get("status") or {}
    installed = status.get("installedSequence")
    allow_downgrade = str((meta.get("annotations") or {}).get(ALLOW_DOWNGRADE, "")).lower() == "true"
    manifest = verify_manifest(
        parse_signed_manifest(json.dumps(signed)),
        trust_policy(store, project),
        project,
        installed_sequence=installed if isinstance(installed, int) else None,
        allow_downgrade=allow_downgrade,
    )
    _check_components(manifest, spec.get("components") or [], label)
    _check_compatibility(manifest, status, dpu["metadata"]["name"])
    return manifest


def _check_components(manifest: Manifest, components: list[dict[str, Any]], label: str) -> None:
    signed = {c.name: c for c in manifest.components}
    listed = {str(c.get("name")): c for c in components}
    if set(signed) != set(listed):
        raise ManifestRefused(
            RefusalReason.DIGEST_MISMATCH,
            f"{label} has components {sorted(listed)}; its signed manifest lists {sorted(signed)}",
        )
    for name, component in listed.items():
        want = signed[name]
        if component.get("sha256") != want.sha256:
            raise ManifestRefused(
                RefusalReason.DIGEST_MISMATCH,
                f"{label}: component {name} has sha256 {str(component.get('sha256'))[:16]}..., "
                f"the signed manifest says {want.sha256[:16]}...",
            )
        size = component.get("size")
        if size is not None and size != want.size:
            raise ManifestRefused(
                RefusalReason.DIGEST_MISMATCH,
                f"{label}: component {name} is {size} bytes, the signed manifest says {want.size}",
            )


def _check_compatibility(manifest: Manifest, status: dict[str, Any], dpu: str) -> None:
    compat = manifest.compatibility
    label = f"{manifest.name} {manifest.version}"
    for field, allowed in (
        ("vendor", compat.vendors),
        ("model", compat.models),
        ("partNumber", compat.partNumbers),
    ):
        if not allowed:
            continue
        have = str(status.get(field) or "")
        if have.casefold() not in {a.casefold() for a in allowed}:
            raise ManifestRefused(
                RefusalReason.INCOMPATIBLE,
                f"{label} is signed for {field} {', '.join(allowed)}; DPU {dpu} has {field} {have or 'unknown'}",
            )
