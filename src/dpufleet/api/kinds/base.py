"""The envelope every kind shares."""

from __future__ import annotations

from typing import Literal

from ..meta import ObjectMeta, Strict


class Resource(Strict):
    """A document: apiVersion, kind, metadata, spec, status."""

    apiVersion: Literal["dpufleet.io/v1alpha1"] = "dpufleet.io/v1alpha1"
    kind: str
    metadata: ObjectMeta
