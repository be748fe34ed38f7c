"""Verification of an Image before its content is used.

Digests are verified by the repository on upload, on mirror and again at staging. The
signed manifest (spec.manifestSignature) is checked here through the security layer's
`dpufleet.security.signing.verify_manifest` once that module exists; until then an image
that carries a signature cannot be verified and is refused rather than trusted.
"""

from __future__ import annotations

import importlib
from typing import Any


def verify_image_manifest(image: dict[str, Any]) -> str | None:
    """None when the image may be used; otherwise why not.

    The single hook for manifest signatures: images without a signature are accepted on the
    strength of their digests (policy may later require signatures).
    """
    signature = (image.get("spec") or {}).get("manifestSignature")
    if not signature:
        return None
    try:
        signing = importlib.import_module("dpufleet.security.signing")
    except ImportError:
        return "the image carries a manifest signature, but this server cannot verify signatures yet"
    verify = getattr(signing, "verify_manifest", None)
    if verify is None:
        return "the image carries a manifest signature, but this server cannot verify signatures yet"
    try:
        verify(image)
    except Exception as exc:  # the signing module raises its own error types
        return f"manifest signature does not verify: {exc}"
    return None
