"""Trust in a service's artifact, checked before any of its instances is placed or upgraded.

A service's artifact may carry its publisher's signed manifest (`spec.artifact.signedManifest`, the
format images use: crypto/signing.py), with one component named `artifact` whose sha256 is the
artifact's. The project decides what runs (Project spec):

- `allowedPublisherClasses` (vendor and official by default): a signed artifact of another class
  is refused, like an image;
- `requireSignedServices`: an unsigned artifact is refused;
- `privilegedServiceClasses` (vendor by default): a privileged service or a kernel module runs only
  when signed by a publisher of one of these classes — an unsigned one never does. (Who may *write*
  such a service is the API's rule: admins only.)
- `serviceSandboxes` (none by default): the sandbox an accepted service's instances get on the DPU, by its
  publisher's class or `unsigned`: `restricted` takes every capability away and runs it as nobody
  (agent/services.py). A privileged service of a class the project restricts is refused.

A refusal is a `ManifestRefused` with its reason (Unsigned, UnknownKey, BadSignature, DigestMismatch,
ClassNotAllowed, Expired, ...). The controller shows it as the `Trusted` condition and places
nothing new with it; instances already running keep the revision they were accepted with. The
DPU's runtime checks the signature and the digest again before it runs anything (agent/services.py).
"""

from __future__ import annotations

import json

from ..api.kinds import DPUServiceSpec
from ..api.kinds.core import UNSIGNED
from ..crypto.signing import (
    Manifest,
    ManifestRefused,
    PublisherClass,
    RefusalReason,
    parse_signed_manifest,
    verify_manifest,
)
from ..images.verify import project_spec, trust_policy
from ..store.store import Store

ARTIFACT_COMPONENT = "artifact"


def _project_rules(store: Store, project: str) -> tuple[bool, set[PublisherClass], dict[str, str]]:
    spec = project_spec(store, project)
    privileged = spec.get("privilegedServiceClasses", [PublisherClass.VENDOR])
    sandboxes = {str(k): str(v) for k, v in (spec.get("serviceSandboxes") or {}).items()}
    return bool(spec.get("requireSignedServices")), {PublisherClass(c) for c in privileged}, sandboxes


def publisher_class(spec: DPUServiceSpec) -> str:
    """The class the artifact's manifest names (verified before anything is placed), or `unsigned`."""
    signed = spec.artifact.signedManifest
    if signed is None:
        return UNSIGNED
    try:
        return str(parse_signed_manifest(json.dumps(signed)).manifest.publisher.publisherClass)
    except ManifestRefused:
        return UNSIGNED  # never placed (the controller refused it); the strictest reading all the same


def verify_service_artifact(store: Store, project: str, name: str, spec: DPUServiceSpec) -> Manifest | None:
    """The verified manifest; None for an unsigned artifact the project accepts; else ManifestRefused."""
    artifact = spec.artifact
    label = f"dpuservice {name!r}"
    require_signed, privileged_classes, sandboxes = _project_rules(store, project)
    privileged = spec.privileged or artifact.kernelModule is not None
    what = "a kernel module" if artifact.kernelModule is not None else "privileged"
    if artifact.signedManifest is None:
        if require_signed:
            raise ManifestRefused(
                RefusalReason.UNSIGNED,
                f"{label}: its artifact carries no signed manifest and project {project} requires one "
                "(requireSignedServices)",
            )
        if privileged:
            raise ManifestRefused(
                RefusalReason.UNSIGNED,
                f"{label} is {what}: its artifact must be signed by a publisher of class "
                f"{', '.join(sorted(privileged_classes)) or '(none allowed)'} (privilegedServiceClasses)",
            )
        return None
    manifest = verify_manifest(
        parse_signed_manifest(json.dumps(artifact.signedManifest)), trust_policy(store, project), project
    )
    component = manifest.component(ARTIFACT_COMPONENT)
    if component.sha256 != artifact.sha256():
        raise ManifestRefused(
            RefusalReason.DIGEST_MISMATCH,
            f"{label}: the artifact has sha256 {artifact.sha256()[:16]}..., its signed manifest says "
            f"{component.sha256[:16]}...",
        )
    if privileged and manifest.publisher.publisherClass not in privileged_classes:
        raise ManifestRefused(
            RefusalReason.CLASS_NOT_ALLOWED,
            f"{label} is {what}; project {project} lets only {', '.join(sorted(privileged_classes)) or 'no'} "
            f"publishers run that, not {manifest.publisher.publisherClass} ({manifest.publisher.name})",
        )
    cls = str(manifest.publisher.publisherClass)
    if privileged and sandboxes.get(cls, "standard") != "standard":
        raise ManifestRefused(
            RefusalReason.CLASS_NOT_ALLOWED,
            f"{label} is {what}, but project {project} runs {cls} services {sandboxes[cls]} (serviceSandboxes)",
        )
    return manifest
