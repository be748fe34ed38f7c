"""Asking the provisioner to install a DPU's spec.image again, when its spec has not changed.

The provisioner acts on a spec it has not yet carried out; to re-run one it has, it takes two
signals of its own (provisioning/controller.py): the retry annotation re-runs the step a
`*Failed` phase failed in, and a Ready DPU whose `status.installedImage` is cleared runs no image
it knows of, so it provisions spec.image from the start. Remediation (`reflash`) and the drift
policy (`revert`) both ask this way, so there is one way to ask.
"""

from __future__ import annotations

from typing import Any

from ..api.errors import Conflict
from ..api.meta import isotime, now
from ..runtime.status import mutate_status_sync
from ..store.store import Store

RETRY_ANNOTATION = "dpufleet.io/retry"  # provisioning/controller.py RETRY


def request_reinstall(store: Store, dpu: dict[str, Any], by: str) -> tuple[str, str]:
    """(result, message): Succeeded once asked, NotAvailable for a DPU with no spec.image.
    `by` names the asker in the annotation's token (`<time>/<by>`)."""
    meta = dpu["metadata"]
    if not (dpu.get("spec") or {}).get("image"):
        return "NotAvailable", "the DPU has no desired image (spec.image) to re-install"
    token = f"{isotime(now())}/{by}"
    for _ in range(8):
        current = store.get("DPU", meta["name"], meta["project"])
        current["metadata"].setdefault("annotations", {})[RETRY_ANNOTATION] = token
        try:
            store.update(current)
            break
        except Conflict:
            continue
    status = current.get("status") or {}
    if status.get("phase") == "Ready" and status.get("installedImage"):
        # A Ready DPU runs what it was given as far as the provisioner knows: tell it the image is gone,
        # so it installs spec.image again (the retry annotation re-runs only a failed step).
        def forget(s: dict[str, Any]) -> None:
            s["installedImage"] = None

        mutate_status_sync(store, "DPU", meta["name"], forget, meta["project"])
    return "Succeeded", f"the provisioner re-installs image {dpu['spec']['image']} ({RETRY_ANNOTATION}={token})"
