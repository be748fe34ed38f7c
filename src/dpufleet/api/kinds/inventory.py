"""What the fleet is made of: hosts, their BMCs and DPUs, and the Discoveries that find them;
with the DPU's provisioning phases, the vocabulary every domain reads a DPU with."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..meta import Name, Project, Status, Strict
from .base import Resource
from .registry import _PHASE, _READY, _REASON, Column, KindInfo, register

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
    bmcRef: Name | None = Field(
        default=None,
        description="BMC object of the host server itself (Redfish, with its Credential): host power, "
        "restarts, boot override and hardware info go through it",
    )
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
        description="a host power endpoint (http/https) for hosts without a Redfish BMC; spec.bmcRef wins. "
        "The emulator's /sim/v1 URLs are refused (HostPowerMigrate): use spec.bmcRef",
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


class HostConsole(BaseModel):
    """A console the host's BMC offers: serial (SSH, IPMI SOL, Telnet), graphical (KVM) or a shell."""

    kind: str
    enabled: bool | None = None
    connectTypes: list[str] = Field(default_factory=list)
    ports: dict[str, int] = Field(default_factory=dict, description="port per protocol, where the BMC says")
    source: str = Field(default="", description="the Redfish resource that reported it")


class HostHardware(BaseModel):
    """What the host's own BMC reports of its hardware (strings trimmed; None where it reports nothing or
    only zero, which is not a fact)."""

    serialNumber: str | None = None
    cpuModel: str | None = None
    cpuCount: int | None = None
    memoryGiB: float | None = None
    consoles: list[HostConsole] = Field(
        default_factory=list, description="the consoles its BMC offers (its ComputerSystem's and its manager's)"
    )
    virtualMedia: str | None = Field(default=None, description="its BMC's VirtualMedia collection (@odata.id)")
    system: str | None = Field(default=None, description="the host's ComputerSystem on its BMC (@odata.id)")
    bmc: str | None = Field(default=None, description="the BMC object it was read through")
    observedAt: str | None = None


class HostStatus(Status):
    dpus: list[str] = Field(default_factory=list)
    hardware: HostHardware | None = Field(default=None, description="read through spec.bmcRef's Redfish service")
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


class Recognition(BaseModel):
    """Why dpufleet takes this device for a DPU, and for which model (inventory/recognition.py)."""

    model_config = ConfigDict(extra="allow")
    rule: str = Field(description="the rule that matched: system-type, card-chassis, firmware-inventory")
    model: str = Field(description="the catalog model, or generic for a model no catalog entry names")
    matchedBy: str | None = Field(default=None, description="how the catalog model matched: part-number, ...")
    evidence: list[Evidence] = Field(default_factory=list)
    unknown: list[str] = Field(
        default_factory=list, description="figures the device reported that are not facts (0 cores), read as unknown"
    )


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


class FlavorState(BaseModel):
    """What the DPU's agent reports of its flavor on the running OS (agent/flavor.py)."""

    model_config = ConfigDict(extra="allow")
    name: str | None = None
    resourceVersion: str | None = Field(default=None, description="the DPUFlavor's version the agent applied")
    applied: bool = False
    problems: list[str] = Field(default_factory=list)
    pendingReboot: list[str] = Field(default_factory=list, description="written for the next boot")
    at: str | None = None


class DPUStatus(Status):
    host: str | None = None
    bmc: str | None = None
    evidence: list[Evidence] = Field(default_factory=list)
    recognition: Recognition | None = None
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
    allocatable: dict[str, Any] = Field(
        default_factory=dict, description="capacity minus the flavor's reservation (the scheduler writes it)"
    )
    allocated: dict[str, Any] = Field(default_factory=dict, description="what placed service instances take")
    allocationVersion: int | None = Field(
        default=None, description="the resourceVersion of the DPUAllocation that allocated was read from"
    )
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
    flavorState: FlavorState | None = Field(
        default=None, description="the flavor as the DPU's agent finds it on its OS"
    )
    provisioning: ProvisioningStatus | None = None


class DPU(Resource):
    kind: Literal["DPU"] = "DPU"
    spec: DPUSpec = Field(default_factory=DPUSpec)
    status: DPUStatus = Field(default_factory=DPUStatus)


# The DPU's provisioning phases: every domain reads a DPU with them, provisioning writes them.


class Phase(StrEnum):
    DISCOVERED = "Discovered"
    AVAILABLE = "Available"
    PREPARING_HOST = "PreparingHost"
    STAGING_IMAGE = "StagingImage"
    INSTALLING = "Installing"
    REBOOTING = "Rebooting"
    CONFIGURING = "Configuring"
    READY = "Ready"
    HELD = "Held"
    VALIDATION_FAILED = "ValidationFailed"
    PREPARING_HOST_FAILED = "PreparingHostFailed"
    STAGING_FAILED = "StagingImageFailed"
    INSTALL_FAILED = "InstallFailed"
    REBOOT_FAILED = "RebootFailed"
    CONFIGURE_FAILED = "ConfigureFailed"


# The step each working phase carries out, as the condition that reports it, and where it fails to.
STEP_CONDITION: dict[Phase, str] = {
    Phase.AVAILABLE: "Validated",
    Phase.PREPARING_HOST: "HostPrepared",
    Phase.STAGING_IMAGE: "ImageStaged",
    Phase.INSTALLING: "Installed",
    Phase.REBOOTING: "Rebooted",
    Phase.CONFIGURING: "Configured",
}
FAILED_PHASE: dict[Phase, Phase] = {
    Phase.AVAILABLE: Phase.VALIDATION_FAILED,
    Phase.PREPARING_HOST: Phase.PREPARING_HOST_FAILED,
    Phase.STAGING_IMAGE: Phase.STAGING_FAILED,
    Phase.INSTALLING: Phase.INSTALL_FAILED,
    Phase.REBOOTING: Phase.REBOOT_FAILED,
    Phase.CONFIGURING: Phase.CONFIGURE_FAILED,
}
FAILED_PHASES = frozenset(FAILED_PHASE.values())
WORKING_PHASES = frozenset(STEP_CONDITION) - {Phase.AVAILABLE}
# Where a DPU may start (again) when its spec asks for an image it does not run.
IDLE_PHASES = frozenset({None, "", Phase.DISCOVERED, Phase.AVAILABLE, Phase.READY})
# Phases where the device itself is busy writing or booting: abort would leave it half-written.
NO_ABORT = frozenset({Phase.INSTALLING, Phase.REBOOTING})
PROVISIONING_STEPS = ["Inventoried", *STEP_CONDITION.values()]


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


register(
    KindInfo(
        "Host",
        "hosts",
        Host,
        ("host",),
        (Column("HOSTNAME", "spec.hostname"), _PHASE, Column("DPUS", "status.dpus"), _REASON),
    )
)

register(
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
    )
)

register(
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
    )
)

register(
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
    )
)
