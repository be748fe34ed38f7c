"""The resource kinds and their typed specs and statuses.

Each kind is a pydantic model registered in `REGISTRY` with its plural, short
names and the columns `dpufleet get` prints. Specs refuse unknown fields;
statuses keep unknown fields so an older server never drops what a newer
controller wrote. Later capabilities extend these specs in place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..crypto.signing import ManifestRefused, PublisherClass, load_public_key, parse_signed_manifest
from .meta import Name, ObjectMeta, Project, Status, Strict
from .selectors import LabelSelector


class Resource(Strict):
    """A document: apiVersion, kind, metadata, spec, status."""

    apiVersion: Literal["dpufleet.io/v1alpha1"] = "dpufleet.io/v1alpha1"
    kind: str
    metadata: ObjectMeta


# --- Host -------------------------------------------------------------------------------------------------


class HostPolicy(StrEnum):
    """What happens to the host before a disruptive DPU operation."""

    NONE = "none"
    TAINT = "taint"
    DRAIN = "drain"
    HOOK = "hook"


class BootOrder(StrEnum):
    """Who boots first when a host and its DPUs both reset (the issue's boot policy)."""

    DPU_FIRST = "dpu-first"  # the DPU runs again before the host is reset (the host finds its NIC)
    HOST_FIRST = "host-first"
    INDEPENDENT = "independent"  # both reset at once; neither waits for the other


class HostSpec(Strict):
    hostname: str | None = None
    bmcRef: Name | None = Field(default=None, description="BMC of the host server itself, if managed")
    rack: str | None = None
    hostPolicy: HostPolicy = HostPolicy.NONE
    hookURL: str | None = Field(default=None, description="called before disruptive work when hostPolicy=hook")
    lessee: Project | None = Field(
        default=None,
        description="project that may use this (as tenant) while metadata.project keeps owning it; "
        "set by an operator or the cloud service (lease-change)",
    )
    bootOrder: BootOrder = Field(
        default=BootOrder.DPU_FIRST,
        description="who boots first when both reset: dpu-first (default), host-first, independent",
    )
    parallelDPUResets: bool = Field(default=False, description="reset all DPUs of the host together, not in turn")
    powerURL: str | None = Field(
        default=None,
        description="the host power driver's endpoint (http/https), e.g. the emulator's "
        "http://127.0.0.1:PORT/sim/v1/hosts/host-000; without it host resets fail 'not configured'",
    )
    powerCredentialsRef: Name | None = Field(
        default=None, description="Credential whose password is the power endpoint's bearer token"
    )
    bootTimeoutSeconds: float = Field(default=600.0, gt=0, le=86400, description="how long a boot may take")
    waitForDPUsReady: bool = Field(
        default=False,
        description="when a DPU and this host reset in order, a DPU counts as up only once its agent reports "
        "again (not at OSRunning): the host starts when its DPUs are Ready to serve it",
    )

    @field_validator("powerURL")
    @classmethod
    def _power_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} must be an http:// or https:// URL")
        return value.rstrip("/") if value else value


class PCIFunction(BaseModel):
    model_config = ConfigDict(extra="allow")
    bdf: str
    vendorId: str
    deviceId: str
    dpu: str | None = None


class HostStatus(Status):
    dpus: list[str] = Field(default_factory=list)
    pciFunctions: list[PCIFunction] = Field(default_factory=list)
    lastSeen: str | None = None


class Host(Resource):
    kind: Literal["Host"] = "Host"
    spec: HostSpec = Field(default_factory=HostSpec)
    status: HostStatus = Field(default_factory=HostStatus)


# --- BMC --------------------------------------------------------------------------------------------------


class BMCSpec(Strict):
    address: str = Field(description="Redfish service URL, e.g. https://198.51.100.7 or http://127.0.0.1:8443/bmc/b1")
    credentialsRef: Name | None = Field(default=None, description="name of the credentials holding user/password")
    verifyTLS: bool = True
    role: Literal["dpu", "host"] = "dpu"

    @field_validator("address")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} must be an http:// or https:// URL")
        return value.rstrip("/")


class BMCStatus(Status):
    reachable: bool | None = None
    adopted: bool | None = None
    product: str | None = None
    dpus: list[str] = Field(default_factory=list)
    serialNumbers: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    vendor: str | None = None
    model: str | None = None
    firmwareVersion: str | None = None
    lastSeen: str | None = None


class BMC(Resource):
    kind: Literal["BMC"] = "BMC"
    spec: BMCSpec
    status: BMCStatus = Field(default_factory=BMCStatus)


# --- DPU --------------------------------------------------------------------------------------------------


class DPUSpec(Strict):
    hostRef: Name | None = None
    bmcRef: Name | None = None
    serialNumber: str | None = None
    image: Name | None = Field(default=None, description="desired Image")
    flavor: Name | None = Field(default=None, description="desired DPUFlavor")
    hostPolicy: HostPolicy | None = Field(default=None, description="overrides the host's policy")
    held: bool = Field(default=False, description="hands-off maintenance: controllers take no action")
    unschedulable: bool = False
    installPath: str | None = Field(
        default=None,
        description="install driver to use (redfish-update, http-boot); default: the first the model supports",
    )
    lessee: Project | None = Field(
        default=None,
        description="project that may use this (as tenant) while metadata.project keeps owning it; "
        "set by an operator or the cloud service (lease-change)",
    )


class FirmwareComponent(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    version: str
    updateable: bool = True


class Evidence(BaseModel):
    """Why dpufleet believes a fact (a pairing, an identity): where it was seen and what was seen."""

    model_config = ConfigDict(extra="allow")
    source: str  # bmc/<name>, host-agent/<host>, agent
    kind: str  # serial, pci-vpd-serial, mac
    value: str
    detail: str | None = None


class AgentStatus(BaseModel):
    model_config = ConfigDict(extra="allow")
    version: str | None = None
    lastHeartbeat: str | None = None
    lastInventory: str | None = None
    os: str | None = None
    kernel: str | None = None


class ProvisioningStatus(BaseModel):
    """Where provisioning of one DPU stands, persisted so a restarted controller resumes it.

    Every field a phase needs to resume (the BMC task it is polling, the boot it is waiting
    for) lives here, typed: nothing the state machine depends on is kept only in memory.
    """

    model_config = ConfigDict(extra="allow")
    phase: str | None = None
    image: str | None = Field(default=None, description="the Image being installed")
    imageVersion: str | None = None
    flavor: str | None = None
    generation: int | None = Field(default=None, description="the spec generation being provisioned")
    installPath: str | None = None
    target: str | None = Field(default=None, description="firmware inventory id the image is installed to")
    attempt: int = 0
    startedAt: str | None = None
    phaseStartedAt: str | None = None
    retryAt: str | None = Field(default=None, description="after a failed attempt: when the step runs again")
    installIssuedAt: str | None = Field(default=None, description="written before the install request is sent")
    taskURI: str | None = None
    componentsDone: list[str] = Field(default_factory=list)
    plan: list[dict[str, Any]] | None = Field(
        default=None, description="the update plan's steps (install, reboot-dpu, reset-host), fixed at validation"
    )
    planStep: int = Field(default=0, description="index of the plan step in progress")
    powerAction: str | None = Field(default=None, description="the PowerAction a reset-host step created")
    resetIssuedAt: str | None = None
    resetsSent: int = Field(default=0, description="resets sent for this reboot (a lost one is sent once more)")
    baselineBootTime: str | None = None
    baselineBootState: str | None = None
    sawDown: bool = False
    hostPrepared: bool = False
    drainRequestedAt: str | None = None
    failedPhase: str | None = Field(default=None, description="the step a *Failed phase failed in")
    reason: str | None = None
    message: str | None = None
    heldFrom: str | None = Field(default=None, description="the phase to resume when the hold is released")
    handledRetry: str | None = None
    handledAbort: str | None = None
    abortedGeneration: int | None = None
    manifestSequence: int | None = Field(
        default=None, description="sequence of the image's signed manifest, verified at staging"
    )


class DPUStatus(Status):
    host: str | None = None
    bmc: str | None = None
    evidence: list[Evidence] = Field(default_factory=list)
    agent: AgentStatus | None = None
    powerState: str | None = None
    bootProgress: str | None = None
    vendor: str | None = None
    model: str | None = None
    partNumber: str | None = None
    serialNumber: str | None = None
    bmcSystem: str | None = Field(
        default=None, description="the DPU's ComputerSystem on its BMC (Redfish @odata.id), as the last crawl found it"
    )
    firmware: list[FirmwareComponent] = Field(default_factory=list)
    capabilities: dict[str, Any] = Field(default_factory=dict)
    allocated: dict[str, Any] = Field(default_factory=dict)
    remaining: dict[str, Any] = Field(default_factory=dict)
    updateHistory: list[dict[str, Any]] = Field(
        default_factory=list, description="component version changes: time, component, from, to, source"
    )
    health: str | None = None
    lastSeen: str | None = None
    installedImage: str | None = None
    installedSequence: int | None = Field(
        default=None, description="the signed manifest sequence of the installed image (rollback protection)"
    )
    appliedFlavor: str | None = None
    provisioning: ProvisioningStatus | None = None


class DPU(Resource):
    kind: Literal["DPU"] = "DPU"
    spec: DPUSpec = Field(default_factory=DPUSpec)
    status: DPUStatus = Field(default_factory=DPUStatus)


# --- Image ------------------------------------------------------------------------------------------------


class ComponentType(StrEnum):
    OS = "os"
    NIC_FIRMWARE = "nic-firmware"
    BMC_FIRMWARE = "bmc-firmware"
    UEFI = "uefi"
    ATF = "atf"
    FPGA_BITSTREAM = "fpga-bitstream"
    AGENT = "agent"
    OTHER = "other"


class UpdateImpact(StrEnum):
    """What installing a component does to the DPU and its host."""

    LIVE = "live"  # no reset: agent, services, firmware with in-service update
    DPU_RESET = "dpu-reset"  # the DPU reboots; the host stays up without the DPU's functions meanwhile
    HOST_RESET = "host-reset"  # the host must reboot or power-cycle


class ComponentRequirement(Strict):
    component: str
    minVersion: str | None = None
    maxVersion: str | None = None


class ImageComponent(Strict):
    name: str = Field(description="the firmware inventory id it replaces, e.g. DPU_OS, DPU_NIC, BMC_Firmware")
    type: ComponentType
    version: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int | None = Field(default=None, ge=0)
    url: str | None = None
    impact: UpdateImpact = UpdateImpact.DPU_RESET
    requires: list[ComponentRequirement] = Field(default_factory=list)
    conflicts: list[ComponentRequirement] = Field(default_factory=list)
    after: list[str] = Field(default_factory=list, description="components updated before this one")


class Compatibility(Strict):
    vendors: list[str] = Field(default_factory=list)
    models: list[str] = Field(default_factory=list)
    partNumbers: list[str] = Field(default_factory=list)


class ImageSpec(Strict):
    version: str
    components: list[ImageComponent] = Field(min_length=1)
    compatibility: Compatibility = Field(default_factory=Compatibility)
    signedManifest: dict[str, Any] | None = Field(
        default=None,
        description="the publisher's signed manifest (`dpufleet image sign`): {manifest, signatures}; verified "
        "at staging against the trusted Publishers, the components' sha256 and the DPU",
    )

    @field_validator("signedManifest")
    @classmethod
    def _signed_manifest(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            try:
                parse_signed_manifest(json.dumps(value))
            except ManifestRefused as exc:
                raise ValueError(f"not a signed manifest: {exc.message}") from None
        return value


class ImageComponentStatus(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    sha256: str
    available: bool = False
    size: int | None = None
    verifiedAt: str | None = None
    error: str | None = None


class ImageStatus(Status):
    components: list[ImageComponentStatus] = Field(default_factory=list)


class Image(Resource):
    kind: Literal["Image"] = "Image"
    spec: ImageSpec
    status: ImageStatus = Field(default_factory=ImageStatus)


# --- DPUFlavor --------------------------------------------------------------------------------------------


class ConfigFile(Strict):
    path: str = Field(pattern=r"^/")
    content: str
    mode: str = Field(default="0644", pattern=r"^0?[0-7]{3,4}$")
    operation: Literal["override", "append"] = "override"


class Hugepages(Strict):
    pageSize: Literal["2Mi", "1Gi", "512Mi", "64Ki"] = "2Mi"
    count: int = Field(ge=0)


class ReservedResources(Strict):
    cpus: int = Field(default=0, ge=0)
    memoryMiB: int = Field(default=0, ge=0)


class DPUFlavorSpec(Strict):
    kernelParameters: list[str] = Field(default_factory=list)
    sysctl: dict[str, str] = Field(default_factory=dict)
    configFiles: list[ConfigFile] = Field(default_factory=list)
    firmwareParameters: dict[str, str | int | bool] = Field(default_factory=dict)
    reservedResources: ReservedResources = Field(default_factory=ReservedResources)
    hugepages: list[Hugepages] = Field(default_factory=list)


class DPUFlavor(Resource):
    kind: Literal["DPUFlavor"] = "DPUFlavor"
    spec: DPUFlavorSpec = Field(default_factory=DPUFlavorSpec)
    status: Status = Field(default_factory=Status)


# --- DPUSet -----------------------------------------------------------------------------------------------


class StrategyType(StrEnum):
    ROLLING_UPDATE = "RollingUpdate"
    CANARY = "Canary"
    ON_DELETE = "OnDelete"


def _count_or_percent(value: int | str, minimum: int) -> int | str:
    if isinstance(value, int):
        if value < minimum:
            raise ValueError(f"must be at least {minimum}")
        return value
    if not value.endswith("%") or not value[:-1].isdigit() or not 0 < int(value[:-1]) <= 100:
        raise ValueError(f"{value!r} must be a count (>= {minimum}) or a percentage such as '25%'")
    return value


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: list[Weekday] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


class MaintenanceWindow(Strict):
    """When updates may start: days of the week and a daily time range, in UTC."""

    days: list[Weekday] = Field(default_factory=lambda: list(WEEKDAYS))
    start: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$", description="HH:MM, UTC")
    end: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$", description="HH:MM, UTC; before start: past midnight")


class RolloutStrategy(Strict):
    type: StrategyType = StrategyType.ROLLING_UPDATE
    maxUnavailable: int | str = Field(default=1, description="a count (>= 1) or a percentage of the set's DPUs")
    maxUnavailablePerHost: int | None = Field(
        default=1, ge=1, description="never more than this many DPUs of one host at once (None: no cap)"
    )
    maxFailures: int | str | None = Field(
        default=None, description="halt the rollout after this many failed DPUs (count or percentage)"
    )
    canary: int | None = Field(default=None, ge=1, description="Canary: update this many first, then wait")
    windows: list[MaintenanceWindow] = Field(
        default_factory=list, description="updates start only inside one of these (none: any time)"
    )

    @field_validator("maxFailures")
    @classmethod
    def _max_failures(cls, value: int | str | None) -> int | str | None:
        return None if value is None else _count_or_percent(value, 1)

    @field_validator("maxUnavailable")
    @classmethod
    def _max_unavailable(cls, value: int | str) -> int | str:
        if isinstance(value, int):
            if value < 1:
                raise ValueError("must be at least 1")
            return value
        if not value.endswith("%") or not value[:-1].isdigit() or not 0 < int(value[:-1]) <= 100:
            raise ValueError(f"{value!r} must be a count (>= 1) or a percentage such as '25%'")
        return value


class DPUTemplate(Strict):
    image: Name | None = None
    flavor: Name | None = None


class DPUSetSpec(Strict):
    selector: LabelSelector = Field(default_factory=LabelSelector)
    template: DPUTemplate = Field(default_factory=DPUTemplate)
    strategy: RolloutStrategy = Field(default_factory=RolloutStrategy)
    paused: bool = False
    aborted: bool = Field(
        default=False,
        description="stop the rollout: no more DPUs start, those not yet writing get their running image back, "
        "those writing finish (a flash is never interrupted); `dpufleet rollout resume` clears it",
    )


class DPUSetStatus(Status):
    dpus: int = 0
    updated: int = 0
    ready: int = 0
    unavailable: int = 0
    failed: int = 0
    maxUnavailable: int = 0
    failedDPUs: list[str] = Field(default_factory=list)
    currentTemplate: dict[str, Any] = Field(default_factory=dict)
    previousTemplate: dict[str, Any] = Field(default_factory=dict)


class DPUSet(Resource):
    kind: Literal["DPUSet"] = "DPUSet"
    spec: DPUSetSpec = Field(default_factory=DPUSetSpec)
    status: DPUSetStatus = Field(default_factory=DPUSetStatus)


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


# --- Discovery --------------------------------------------------------------------------------------------


class Scheme(StrEnum):
    HTTPS = "https"
    HTTP = "http"


class AdoptionPolicy(StrEnum):
    ALL = "All"
    EXPECTED = "Expected"


class DiscoverySpec(Strict):
    """Where to look for BMCs and agents, and which devices to adopt."""

    endpoints: list[str] = Field(default_factory=list, description="Redfish service URLs to probe as they are")
    cidrs: list[str] = Field(default_factory=list, description="address ranges to scan, e.g. 198.51.100.0/28")
    ports: list[int] = Field(default_factory=lambda: [443])
    schemes: list[Scheme] = Field(default_factory=lambda: [Scheme.HTTPS])
    mdns: bool = Field(default=False, description="browse mDNS for _redfish._tcp and _dpufleet-agent._tcp")
    mdnsInterfaces: list[str] = Field(default_factory=list, description="addresses to browse on (default: all)")
    credentialsRef: Name | None = None
    verifyTLS: bool = False
    adoption: AdoptionPolicy = AdoptionPolicy.ALL
    expectedSerials: list[str] = Field(default_factory=list)
    intervalSeconds: int = Field(default=600, ge=10)
    concurrency: int = Field(default=128, ge=1, le=4096)
    probeTimeoutSeconds: float = Field(default=5.0, gt=0, le=120)

    @field_validator("cidrs")
    @classmethod
    def _cidrs(cls, values: list[str]) -> list[str]:
        import ipaddress

        for value in values:
            try:
                net = ipaddress.ip_network(value, strict=False)
            except ValueError as exc:
                raise ValueError(f"{value!r} is not a CIDR range: {exc}") from None
            if net.num_addresses > 65536:
                raise ValueError(f"{value!r} has {net.num_addresses} addresses; split it (at most 65536 per range)")
        return values

    @field_validator("ports")
    @classmethod
    def _ports(cls, values: list[int]) -> list[int]:
        for port in values:
            if not 0 < port < 65536:
                raise ValueError(f"port {port} is out of range 1-65535")
        return values

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, values: list[str]) -> list[str]:
        for value in values:
            if not value.startswith(("http://", "https://")):
                raise ValueError(f"{value!r} must be an http:// or https:// URL")
        return [v.rstrip("/") for v in values]


class DiscoveryStatus(Status):
    lastScanStarted: str | None = None
    lastScanFinished: str | None = None
    probed: int = 0
    redfishFound: int = 0
    agentsFound: int = 0
    unreachable: int = 0
    notRedfish: int = 0
    errors: list[str] = Field(default_factory=list)


class Discovery(Resource):
    kind: Literal["Discovery"] = "Discovery"
    spec: DiscoverySpec = Field(default_factory=DiscoverySpec)
    status: DiscoveryStatus = Field(default_factory=DiscoveryStatus)


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
    driftPolicy: DriftPolicy = Field(
        default=DriftPolicy.REPORT,
        description="a DPU changed through its BMC to versions no accepted image runs: report it, or revert "
        "it to spec.image",
    )


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


# --- the registry -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """A table column: header and a dotted path into the document."""

    header: str
    path: str
    wide_only: bool = False


@dataclass(frozen=True)
class KindInfo:
    kind: str
    plural: str
    model: type[Resource]
    short_names: tuple[str, ...] = ()
    columns: tuple[Column, ...] = ()
    has_status: bool = True
    extra_fields: tuple[str, ...] = field(default=())
    # spec fields holding secrets: stored encrypted apart from the document, which
    # shows `<field>Set: true` instead; no read path can return them
    secret_fields: tuple[str, ...] = ()

    @property
    def singular(self) -> str:
        return self.kind.lower()


_PHASE = Column("PHASE", "status.phase")
_READY = Column("READY", "status.conditions[Ready].status")
_REASON = Column("REASON", "status.conditions[Ready].reason", wide_only=True)

REGISTRY: dict[str, KindInfo] = {
    info.kind: info
    for info in (
        KindInfo(
            "Host",
            "hosts",
            Host,
            ("host",),
            (Column("HOSTNAME", "spec.hostname"), _PHASE, Column("DPUS", "status.dpus"), _REASON),
        ),
        KindInfo(
            "BMC",
            "bmcs",
            BMC,
            ("bmc",),
            (
                Column("ADDRESS", "spec.address"),
                Column("REACHABLE", "status.reachable"),
                Column("VENDOR", "status.vendor"),
                Column("DPUS", "status.dpus"),
                Column("ADOPTED", "status.adopted", wide_only=True),
                Column("FIRMWARE", "status.firmwareVersion", wide_only=True),
                _READY,
                _REASON,
            ),
        ),
        KindInfo(
            "DPU",
            "dpus",
            DPU,
            ("dpu",),
            (
                Column("HOST", "status.host"),
                Column("VENDOR", "status.vendor"),
                Column("MODEL", "status.model"),
                _PHASE,
                _READY,
                Column("SERIAL", "status.serialNumber", wide_only=True),
                Column("P/N", "status.partNumber", wide_only=True),
                Column("BMC", "status.bmc", wide_only=True),
                Column("CORES", "status.capabilities.cpu.cores", wide_only=True),
                Column("MEMORY", "status.capabilities.memoryGiB", wide_only=True),
                Column("PORTS", "status.capabilities.ports[*].speedGbps", wide_only=True),
                Column("ACCEL", "status.capabilities.accelerators[*].kind", wide_only=True),
                Column("OS", "status.agent.os", wide_only=True),
                Column("HEALTH", "status.health", wide_only=True),
                Column("LAST SEEN", "status.lastSeen", wide_only=True),
                Column("DRIFTED", "status.conditions[Drifted].status", wide_only=True),
                _REASON,
            ),
        ),
        KindInfo(
            "Image",
            "images",
            Image,
            ("image", "img"),
            (Column("VERSION", "spec.version"), Column("COMPONENTS", "spec.components[*].name"), _PHASE),
        ),
        KindInfo(
            "DPUFlavor",
            "dpuflavors",
            DPUFlavor,
            ("dpuflavor", "flavor", "flavors"),
            (Column("HUGEPAGES", "spec.hugepages[*].count"), Column("KERNEL-PARAMS", "spec.kernelParameters")),
        ),
        KindInfo(
            "DPUSet",
            "dpusets",
            DPUSet,
            ("dpuset", "ds"),
            (
                Column("IMAGE", "spec.template.image"),
                Column("STRATEGY", "spec.strategy.type"),
                Column("DPUS", "status.dpus"),
                Column("UPDATED", "status.updated"),
                Column("READY", "status.ready"),
            ),
        ),
        KindInfo(
            "Credential",
            "credentials",
            Credential,
            ("credential", "cred", "creds"),
            (Column("USERNAME", "spec.username"), Column("PASSWORD-SET", "spec.passwordSet")),
            secret_fields=("password",),
        ),
        KindInfo(
            "Discovery",
            "discoveries",
            Discovery,
            ("discovery", "disc"),
            (
                _PHASE,
                Column("PROBED", "status.probed"),
                Column("REDFISH", "status.redfishFound"),
                Column("UNREACHABLE", "status.unreachable"),
                Column("LAST SCAN", "status.lastScanFinished"),
                _READY,
            ),
        ),
        KindInfo(
            "Project",
            "projects",
            ProjectResource,
            ("project", "proj"),
            (Column("DESCRIPTION", "spec.description"),),
        ),
        KindInfo(
            "Publisher",
            "publishers",
            Publisher,
            ("publisher", "pub"),
            (Column("CLASS", "spec.publisherClass"),),
        ),
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
        ),
    )
}

_BY_NAME: dict[str, KindInfo] = {}
for _info in REGISTRY.values():
    for _alias in (_info.kind.lower(), _info.plural, *_info.short_names):
        _BY_NAME[_alias] = _info


class UnknownKind(LookupError):
    def __init__(self, name: str) -> None:
        known = ", ".join(sorted(info.plural for info in REGISTRY.values()))
        super().__init__(f"unknown kind {name!r}; known kinds: {known}")


def lookup(name: str) -> KindInfo:
    """Find a kind by its name, plural or short name, case-insensitively."""
    info = REGISTRY.get(name) or _BY_NAME.get(name.lower())
    if info is None:
        raise UnknownKind(name)
    return info


# --- RemediationPolicy (health) ---------------------------------------------------------------------------

# The diagnoses of docs/faults.md (dpufleet.health.evidence.FailureClass), named here so the kind validates.
FAILURE_CLASSES = (
    "OSHang",
    "KernelCrash",
    "NICFirmwareCrash",
    "PowerLoss",
    "HostReset",
    "HostPowerCycle",
    "HostDown",
    "BMCDown",
    "PCIeError",
    "CorruptedFlash",
    "MemoryFailure",
    "AgentUnreachable",
    "DiskFull",
    "ClockSkew",
)
_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_seconds(value: Any) -> float:
    """A duration as seconds: a number, or a string such as 30s, 5m, 1h."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string such as 30s, 5m, 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        unit = _DURATION_UNITS.get(text[-1])
        try:
            seconds = float(text[:-1]) * unit if unit else float(text)
        except ValueError:
            raise ValueError(f"{value!r}: use seconds or a number with s, m or h (30s, 5m, 1h)") from None
    else:
        raise ValueError("a duration is a number of seconds or a string such as 30s, 5m, 1h")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


class RemediationAction(StrEnum):
    WAIT = "wait"
    RESTART_AGENT = "restart-agent"
    REBOOT = "reboot"
    POWER_CYCLE = "power-cycle"
    POWER_ON = "power-on"
    BMC_RESET = "bmc-reset"
    HOST_POWER_CYCLE = "host-power-cycle"
    REFLASH = "reflash"
    QUARANTINE = "quarantine"
    ALERT = "alert"


class RemediationStep(Strict):
    action: RemediationAction
    after: float = Field(default=0.0, description="seconds (or 30s, 5m, 1h) after the previous step, or the diagnosis")
    maxPerHour: int | None = Field(default=None, ge=0, description="past it the step is skipped (escalation)")

    @field_validator("after", mode="before")
    @classmethod
    def _seconds(cls, value: Any) -> float:
        return parse_seconds(value)


class RemediationRule(Strict):
    failureClass: str
    actions: list[RemediationStep] = Field(default_factory=list)

    @field_validator("failureClass")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in FAILURE_CLASSES:
            raise ValueError(f"{value!r} is not a failure class; known: {', '.join(FAILURE_CLASSES)}")
        return value


class HealthDetection(Strict):
    """Detection settings; unset fields keep the controller's defaults."""

    pollSeconds: float | None = Field(default=None, gt=0)
    heartbeatSeconds: float | None = Field(default=None, gt=0)
    allowedMisses: int | None = Field(default=None, ge=1)


class RemediationPolicySpec(Strict):
    selector: LabelSelector = Field(default_factory=LabelSelector)
    rules: list[RemediationRule] = Field(default_factory=list, description="classes not listed use the default")
    detection: HealthDetection = Field(default_factory=HealthDetection)


class RemediationPolicy(Resource):
    kind: Literal["RemediationPolicy"] = "RemediationPolicy"
    spec: RemediationPolicySpec = Field(default_factory=RemediationPolicySpec)
    status: Status = Field(default_factory=Status)


REGISTRY["RemediationPolicy"] = KindInfo(
    "RemediationPolicy",
    "remediationpolicies",
    RemediationPolicy,
    ("remediationpolicy", "rempol"),
    (Column("RULES", "spec.rules[*].failureClass"),),
)
for _alias in ("remediationpolicy", "remediationpolicies", "rempol"):
    _BY_NAME[_alias] = REGISTRY["RemediationPolicy"]


# --- PowerAction (controlled resets) ----------------------------------------------------------------------


class PowerMode(StrEnum):
    DPU_ONLY = "dpu-only"
    HOST_ONLY = "host-only"
    BOTH = "both"
    ALL_DPUS_OF_HOST = "all-dpus-of-host"


class ResetType(StrEnum):
    FORCE_RESTART = "ForceRestart"
    GRACEFUL_RESTART = "GracefulRestart"
    POWER_CYCLE = "PowerCycle"
    FORCE_OFF = "ForceOff"
    ON = "On"


# What each mode does to the host, declared before anything is done (status.hostImpact).
HOST_IMPACT: dict[PowerMode, str] = {
    PowerMode.DPU_ONLY: "dpu-only: the host stays up without the DPU's functions (network, storage, "
    "offloads) for the reboot",
    PowerMode.HOST_ONLY: "host-only: the host reboots; its DPUs keep running and are not reset",
    PowerMode.BOTH: "both: the DPU and the host reboot, in the host's boot order; the host is down "
    "for its reboot and without the DPU's functions for the DPU's",
    PowerMode.ALL_DPUS_OF_HOST: "all-dpus-of-host: the host stays up without any of its DPUs' functions "
    "while they reboot (in turn, or together with parallelDPUResets)",
}


class PowerTarget(Strict):
    kind: Literal["DPU", "Host"]
    name: Name


class PowerActionSpec(Strict):
    target: PowerTarget
    mode: PowerMode = PowerMode.DPU_ONLY
    resetType: ResetType = ResetType.FORCE_RESTART
    stepTimeoutSeconds: float | None = Field(
        default=None, gt=0, le=86400, description="each step's timeout (default: the host's bootTimeoutSeconds)"
    )

    @model_validator(mode="after")
    def _target_fits_mode(self) -> PowerActionSpec:
        if self.mode == PowerMode.DPU_ONLY and self.target.kind != "DPU":
            raise ValueError("mode dpu-only targets a DPU (target.kind: DPU)")
        return self


class PowerStep(BaseModel):
    """One step of a power action: what is done, when, and how it ended."""

    model_config = ConfigDict(extra="allow")
    what: str
    action: Literal["reset-dpu", "wait-dpu", "reset-host", "wait-host"]
    target: str
    result: Literal["Pending", "Running", "Succeeded", "Failed"] = "Pending"
    when: str | None = Field(default=None, description="when the step started")
    finished: str | None = None
    message: str | None = None
    baseline: str | None = Field(default=None, description="boot time (DPU) or boot count (host) before the reset")


class PowerActionStatus(Status):
    hostImpact: str | None = None
    host: str | None = None
    stepTimeoutSeconds: float | None = Field(default=None, description="each step's timeout, as planned")
    steps: list[PowerStep] = Field(default_factory=list)
    reason: str | None = None
    message: str | None = None
    startedAt: str | None = None
    finishedAt: str | None = None


class PowerAction(Resource):
    kind: Literal["PowerAction"] = "PowerAction"
    spec: PowerActionSpec
    status: PowerActionStatus = Field(default_factory=PowerActionStatus)


REGISTRY["PowerAction"] = KindInfo(
    "PowerAction",
    "poweractions",
    PowerAction,
    ("poweraction", "pa"),
    (
        Column("TARGET", "spec.target.name"),
        Column("MODE", "spec.mode"),
        Column("TYPE", "spec.resetType"),
        _PHASE,
        Column("REASON", "status.reason", wide_only=True),
    ),
)
for _alias in ("poweraction", "poweractions", "pa"):
    _BY_NAME[_alias] = REGISTRY["PowerAction"]


# --- UpdateRequest ----------------------------------------------------------------------------------------


class UpdateSource(StrEnum):
    """Who asked for an update. Set by the server from the caller's identity, never by the caller."""

    CONTROL_PLANE = "control-plane"  # an operator or automation through the API
    HOST = "host"  # the DPU's host, through its host agent
    AGENT = "agent"  # the DPU's own agent, which found a newer approved image
    BMC = "bmc"  # an update pushed to the BMC directly (Redfish), seen by the BMC controller


class UpdateRequestSpec(Strict):
    """A request to update one DPU to an image. It passes the same policy whoever asked: signature and
    compatibility of the image, the DPU's DPUSet (paused, aborted, its template, its maxUnavailable),
    maintenance windows; then the DPU's spec.image is set and provisioning does the rest."""

    dpu: str = Field(min_length=1, description="the DPU to update")
    image: str = Field(min_length=1, description="the Image to update it to")
    flavor: str | None = Field(default=None, description="the DPUFlavor to apply with it (default: keep the DPU's)")
    source: UpdateSource = UpdateSource.CONTROL_PLANE
    reason: str = Field(default="", max_length=500)


class UpdateRequestStatus(Status):
    reason: str | None = None
    message: str | None = None
    decidedAt: str | None = None
    generation: int | None = Field(default=None, description="the DPU's spec generation the request set")
    finishedAt: str | None = None


class UpdateRequest(Resource):
    kind: Literal["UpdateRequest"] = "UpdateRequest"
    spec: UpdateRequestSpec
    status: UpdateRequestStatus = Field(default_factory=UpdateRequestStatus)


REGISTRY["UpdateRequest"] = KindInfo(
    "UpdateRequest",
    "updaterequests",
    UpdateRequest,
    ("updaterequest", "ur"),
    (
        Column("DPU", "spec.dpu"),
        Column("IMAGE", "spec.image"),
        Column("SOURCE", "spec.source"),
        _PHASE,
        Column("REASON", "status.reason"),
    ),
)
for _alias in ("updaterequest", "updaterequests", "ur"):
    _BY_NAME[_alias] = REGISTRY["UpdateRequest"]
