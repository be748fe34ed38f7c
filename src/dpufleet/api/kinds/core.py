"""Tenancy and bookkeeping: Projects, Publishers, Credentials and Events."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ...crypto.signing import PublisherClass, load_public_key
from ..meta import Status, Strict
from .base import Resource
from .registry import Column, KindInfo, register

# --- Credential -------------------------------------------------------------------------------------------


class CredentialSpec(Strict):
    """A username and a secret (BMC password, token). The secret is never returned by the API."""

    username: str = Field(min_length=1)
    password: str | None = Field(default=None, description="write-only: reads show passwordSet instead")
    passwordSet: bool | None = Field(default=None, description="read-only: whether a password is stored")


class Credential(Resource):
    kind: Literal["Credential"] = "Credential"
    spec: CredentialSpec
    status: Status = Field(default_factory=Status)


# --- Event ------------------------------------------------------------------------------------------------


class ObjectReference(Strict):
    kind: str
    name: str
    project: str = "default"
    uid: str | None = None


class Event(Resource):
    """Something that happened to an object; repeated events are folded into one with a count."""

    kind: Literal["Event"] = "Event"
    involvedObject: ObjectReference
    type: Literal["Normal", "Warning"] = "Normal"
    reason: str
    message: str = ""
    count: int = Field(default=1, ge=1)
    firstTimestamp: str | None = None
    lastTimestamp: str | None = None
    source: str = ""


# --- Project ----------------------------------------------------------------------------------------------


DEFAULT_PUBLISHER_CLASSES = [PublisherClass.VENDOR, PublisherClass.OFFICIAL]
# How a service's instances are sandboxed on the DPU (agent/services.py shape_config): standard (its own
# namespaces, a read-only root, a seccomp filter, 8 capabilities) or restricted (that, and no capability at all,
# the unprivileged user 65534, at most 64 processes, nothing executable in /tmp and /run).
SandboxProfile = Literal["standard", "restricted"]
UNSIGNED = "unsigned"  # serviceSandboxes' key for an artifact with no signed manifest


class DriftPolicy(StrEnum):
    """What happens to a DPU whose firmware was changed outside dpufleet (through its BMC) to versions
    the update policy does not adopt (fleet/drift.py)."""

    REPORT = "report"  # condition Drifted and a Warning event; spec.image is kept, nothing is written
    REVERT = "revert"  # the same, and provisioning installs spec.image again


class ProjectSpec(Strict):
    description: str = ""
    allowedPublisherClasses: list[PublisherClass] = Field(
        default_factory=lambda: list(DEFAULT_PUBLISHER_CLASSES),
        description="publisher classes whose signed images this project's DPUs may install",
    )
    requireSignedImages: bool = Field(default=False, description="refuse, at staging, images without a signed manifest")
    requireSignedServices: bool = Field(
        default=False, description="refuse, before placing them, services whose artifact carries no signed manifest"
    )
    privilegedServiceClasses: list[PublisherClass] = Field(
        default_factory=lambda: [PublisherClass.VENDOR],
        description="publisher classes whose signed services may run privileged or load a kernel module here "
        "(unsigned ones never do)",
    )
    serviceSandboxes: dict[str, SandboxProfile] = Field(
        default_factory=dict,
        description="the sandbox a service's instances get, by its artifact's publisher class (vendor, official, "
        "third-party, private) or `unsigned`; a class not named gets standard",
    )
    driftPolicy: DriftPolicy = Field(
        default=DriftPolicy.REPORT,
        description="a DPU changed through its BMC to versions no accepted image runs: report it, or revert "
        "it to spec.image",
    )

    @field_validator("serviceSandboxes")
    @classmethod
    def _sandbox_classes(cls, value: dict[str, str]) -> dict[str, str]:
        known = [c.value for c in PublisherClass] + [UNSIGNED]
        for key in value:
            if key not in known:
                raise ValueError(f"{key!r} is not a publisher class or {UNSIGNED!r} (one of {', '.join(known)})")
        return value


# --- Publisher --------------------------------------------------------------------------------------------


class PublisherSpec(Strict):
    """A publisher whose ed25519 key signs image manifests (metadata.name is the publisher's name)."""

    publisherClass: PublisherClass
    publicKey: str = Field(min_length=1, max_length=4096, description="ed25519 public key: PEM, or base64 of 32 bytes")

    @field_validator("publicKey")
    @classmethod
    def _key(cls, value: str) -> str:
        load_public_key(value)  # ValueError names the problem
        return value


class Publisher(Resource):
    """Trust: a key that speaks for a publisher of a class. Only admins write these."""

    kind: Literal["Publisher"] = "Publisher"
    spec: PublisherSpec
    status: Status = Field(default_factory=Status)


class ProjectResource(Resource):
    """A project: who owns and leases what. It lives in itself (metadata.project == metadata.name),
    so a role in the project is what lets one read it. Only admins create or delete projects."""

    kind: Literal["Project"] = "Project"
    spec: ProjectSpec = Field(default_factory=ProjectSpec)
    status: Status = Field(default_factory=Status)

    @model_validator(mode="after")
    def _lives_in_itself(self) -> ProjectResource:
        if self.metadata.project != self.metadata.name:
            raise ValueError(
                f"a Project lives in itself: metadata.project must be {self.metadata.name!r} "
                f"(it is {self.metadata.project!r})"
            )
        return self


register(
    KindInfo(
        "Credential",
        "credentials",
        Credential,
        ("credential", "cred", "creds"),
        (Column("USERNAME", "spec.username"), Column("PASSWORD-SET", "spec.passwordSet")),
        secret_fields=("password",),
    )
)

register(
    KindInfo(
        "Project",
        "projects",
        ProjectResource,
        ("project", "proj"),
        (Column("DESCRIPTION", "spec.description"),),
    )
)

register(
    KindInfo(
        "Publisher",
        "publishers",
        Publisher,
        ("publisher", "pub"),
        (Column("CLASS", "spec.publisherClass"),),
    )
)

register(
    KindInfo(
        "Event",
        "events",
        Event,
        ("event", "ev"),
        (
            Column("TYPE", "type"),
            Column("REASON", "reason"),
            Column("OBJECT", "involvedObject.name"),
            Column("COUNT", "count"),
            Column("LAST SEEN", "lastTimestamp"),
            Column("MESSAGE", "message"),
        ),
        has_status=False,
        extra_fields=(
            "involvedObject",
            "type",
            "reason",
            "message",
            "count",
            "firstTimestamp",
            "lastTimestamp",
            "source",
        ),
    )
)
