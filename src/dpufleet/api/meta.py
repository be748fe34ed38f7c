"""Object metadata, status and conditions shared by every kind.

The shape follows Kubernetes so that anyone who has read a kubectl manifest can
read ours: metadata is owned by the store (uid, resourceVersion, generation,
timestamps), spec is owned by users, status is owned by controllers.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from .telemetry import check_annotations

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_KEY_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

DEFAULT_PROJECT = "default"


def now() -> datetime:
    return datetime.now(UTC)


def isotime(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def seconds_since(stamp: str | None) -> float:
    """Seconds since an RFC 3339 stamp (0 for none)."""
    if not stamp:
        return 0.0
    return (now() - datetime.fromisoformat(stamp.replace("Z", "+00:00"))).total_seconds()


def check_name(value: str) -> str:
    """Names are DNS-1123 subdomains, as in Kubernetes, so they fit in URLs and hostnames."""
    if not value:
        raise ValueError("must not be empty")
    if len(value) > 253:
        raise ValueError("must be at most 253 characters")
    if not DNS1123_SUBDOMAIN.match(value):
        raise ValueError(
            f"{value!r} is not a valid name: use lower-case letters, digits, '-' and '.', "
            "starting and ending with a letter or digit (DNS-1123)"
        )
    return value


def check_project(value: str) -> str:
    if len(value) > 63 or not DNS1123_LABEL.match(value):
        raise ValueError(f"{value!r} is not a valid project: use a DNS-1123 label (lower-case, digits, '-')")
    return value


def check_label_key(key: str) -> str:
    prefix, slash, name = key.rpartition("/")
    if slash and not prefix:
        raise ValueError(f"label key {key!r}: a '/' must follow a prefix (a DNS subdomain)")
    if prefix and (len(prefix) > 253 or not DNS1123_SUBDOMAIN.match(prefix)):
        raise ValueError(f"label key {key!r}: prefix must be a DNS-1123 subdomain")
    if not name or len(name) > 63 or not LABEL_KEY_NAME.match(name):
        raise ValueError(f"label key {key!r}: name must be 1-63 alphanumerics, '-', '_' or '.'")
    return key


def check_labels(labels: dict[str, str]) -> dict[str, str]:
    for key, value in labels.items():
        check_label_key(key)
        if len(value) > 63 or not LABEL_VALUE.match(value):
            raise ValueError(f"label {key!r}: value {value!r} must be at most 63 alphanumerics, '-', '_', '.'")
    return labels


Name = Annotated[str, AfterValidator(check_name)]
Project = Annotated[str, AfterValidator(check_project)]
Labels = Annotated[dict[str, str], AfterValidator(check_labels)]


class Strict(BaseModel):
    """Base for user-facing models: unknown fields are refused, naming them."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class OwnerReference(Strict):
    apiVersion: str = "dpufleet.io/v1alpha1"
    kind: str
    name: Name
    uid: str
    controller: bool = False
    blockOwnerDeletion: bool = False


MAX_UPGRADING_ANNOTATION = "services.dpufleet.io/max-upgrading"  # on a DPU: services upgrading there at once


def parse_max_upgrading(text: str) -> int:
    """The value of MAX_UPGRADING_ANNOTATION: a whole number from 1 to 1000 (ValueError naming the problem)."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= 1000:
        raise ValueError(f"{value} is outside 1 to 1000")
    return value


def _telemetry_annotations(annotations: dict[str, str]) -> dict[str, str]:
    check_annotations(annotations)
    if MAX_UPGRADING_ANNOTATION in annotations:
        try:
            parse_max_upgrading(annotations[MAX_UPGRADING_ANNOTATION])
        except ValueError as exc:
            raise ValueError(f"{MAX_UPGRADING_ANNOTATION}: {exc}") from None
    return annotations


class ObjectMeta(Strict):
    name: Name
    project: Project = DEFAULT_PROJECT
    uid: str | None = None
    labels: Labels = Field(default_factory=dict)
    annotations: Annotated[dict[str, str], AfterValidator(_telemetry_annotations)] = Field(default_factory=dict)
    resourceVersion: str | None = None
    generation: int | None = None
    creationTimestamp: str | None = None
    deletionTimestamp: str | None = None
    finalizers: list[str] = Field(default_factory=list)
    ownerReferences: list[OwnerReference] = Field(default_factory=list)


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Severity(StrEnum):
    """How bad a False condition is; Ready carries the reason of the worst one."""

    INFO = "Info"
    WARNING = "Warning"
    ERROR = "Error"


class Condition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str
    status: ConditionStatus
    reason: str = ""
    message: str = ""
    severity: Severity | None = None
    lastTransitionTime: str | None = None
    observedGeneration: int | None = None


class Status(BaseModel):
    """Observed state. Controllers extend it per kind; unknown fields are kept (forward compatible)."""

    model_config = ConfigDict(extra="allow")

    phase: str | None = None
    observedGeneration: int | None = None
    conditions: list[Condition] = Field(default_factory=list)


def dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json", exclude_none=True, by_alias=True)
