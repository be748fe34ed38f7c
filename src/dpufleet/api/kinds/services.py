"""Services on DPUs: DPUService (what to run, where, with what) and DPUAllocation (what a DPU holds).

A DPUService names its artifact, its configuration apart from the artifact, the resources of one
instance, which DPUs it is compatible with and how its instances are placed. The scheduler
(`services/`) places instances onto DPUs and records each placement in the DPU's DPUAllocation (one
per DPU, named after it): the record is written with its resourceVersion as precondition, so two
schedulers never both take the last of a DPU's memory. An instance is *Scheduled* once its
allocation is committed; the DPU's runtime (agent/services.py) then pulls and starts it and reports
its phase into the DPUAllocation's status (Pulling, Starting, Running, Failed, Succeeded), which the
service's status shows per instance.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ..meta import Name, Status, Strict
from ..selectors import LabelSelector
from .base import Resource
from .fleet import DPUTemplate, RolloutStrategy, count_or_percent
from .images import ConfigFile, signed_manifest
from .registry import Column, KindInfo, register

_DIGEST = r"sha256:[0-9a-f]{64}"
_IMAGE_BY_DIGEST = re.compile(r"^[a-z0-9][a-z0-9._/:-]*@" + _DIGEST + "$")
_SHA256 = r"^[0-9a-f]{64}$"
_URL = r"^(https?|oci)://\S+$"
_MODULE_PARAM = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=\S*$")

# --- artifact --------------------------------------------------------------------------------------------------


class OCIImage(Strict):
    """An OCI image in the image repository, named by digest (a tag could change under the service)."""

    reference: str = Field(description="registry/repository@sha256:<64 hex>")

    @field_validator("reference")
    @classmethod
    def _by_digest(cls, value: str) -> str:
        if not _IMAGE_BY_DIGEST.match(value):
            raise ValueError(f"{value!r} must name the image by digest: <repository>@sha256:<64 hex digits>")
        return value


class DigestedURL(Strict):
    """An artifact fetched by URL (mirrored), checked against its sha256 before use."""

    url: str = Field(pattern=_URL)
    sha256: str = Field(pattern=_SHA256)


class KernelModule(DigestedURL):
    """A kernel module (admin-only: a tenant uses a DPU, it never reprograms it)."""

    name: Name
    needsReboot: bool = False


class Artifact(Strict):
    """Exactly one of: an OCI image by digest, an OCI archive, a native process bundle, a kernel module;
    and, optionally, the publisher's signed manifest of it (`dpufleet image sign --embed service.yaml`:
    one component named `artifact` with its sha256 and size), which services/trust.py checks before
    the service is placed and the DPU's runtime checks again before it runs it."""

    image: OCIImage | None = None
    ociArchive: DigestedURL | None = None
    bundle: DigestedURL | None = None
    kernelModule: KernelModule | None = None
    signedManifest: dict[str, Any] | None = Field(default=None, description="{manifest, signatures}")

    @field_validator("signedManifest")
    @classmethod
    def _signed_manifest(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return signed_manifest(value)

    def sha256(self) -> str:
        """The digest the artifact is named by (hex)."""
        if self.image is not None:
            return self.image.reference.rpartition("@sha256:")[2]
        named = self.ociArchive or self.bundle or self.kernelModule
        assert named is not None
        return named.sha256

    @model_validator(mode="after")
    def _exactly_one(self) -> Artifact:
        given = [name for name in ("image", "ociArchive", "bundle", "kernelModule") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                f"exactly one of image, ociArchive, bundle, kernelModule must be given (got {given or 'none'})"
            )
        return self


class ReloadHTTP(Strict):
    port: int = Field(ge=1, le=65535)
    path: str = Field(default="/-/reload", pattern=r"^/")


class ConfigReload(Strict):
    """How a running instance takes new config files without a restart: a signal, or an HTTP POST to it
    from inside its network namespace (2xx/3xx: reloaded)."""

    signal: Literal["HUP", "USR1", "USR2"] | None = None
    http: ReloadHTTP | None = None
    timeoutSeconds: int = Field(default=5, ge=1, le=60)

    @model_validator(mode="after")
    def _one_way(self) -> ConfigReload:
        given = [name for name in ("signal", "http") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"exactly one of signal, http must be given (got {given or 'none'})")
        return self


class ServiceConfig(Strict):
    """Configuration kept apart from the artifact: a config change does not change what is pulled."""

    files: list[ConfigFile] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    args: list[str] = Field(default_factory=list)
    reload: ConfigReload | None = Field(
        default=None,
        description="how new config files reach a running instance without a restart; absent: a change of "
        "the files restarts it",
    )


# --- resources, compatibility, placement ------------------------------------------------------------------------


DEFAULT_CPU_MILLICORES = 100


class ServiceResources(Strict):
    """What one instance takes from its DPU. Accelerators are named as in the DPU's capabilities."""

    cpuMillicores: int = Field(default=DEFAULT_CPU_MILLICORES, ge=1, le=1_000_000)
    pinnedCores: int = Field(
        default=0,
        ge=0,
        le=1024,
        description="whole cores for this instance alone (a cpuset the scheduler picks on the DPU); 0: it shares "
        "the cores no instance has pinned, within cpuMillicores",
    )
    memoryMiB: int = Field(default=64, ge=1)
    hugepagesMiB: int = Field(default=0, ge=0)
    storageMiB: int = Field(default=0, ge=0)
    accelerators: list[str] = Field(default_factory=list, description="kinds or names, e.g. crypto, regex")

    @model_validator(mode="after")
    def _pinned_or_shared(self) -> ServiceResources:
        # (the stored spec carries the default share: that one, or the pinned cores' own figure, is not a share)
        if self.pinnedCores and self.cpuMillicores not in (DEFAULT_CPU_MILLICORES, self.pinnedCores * 1000):
            raise ValueError("cpuMillicores: not with pinnedCores (an instance with pinned cores has them whole)")
        return self

    @property
    def charged_millicores(self) -> int:
        """What the instance takes of the DPU's CPU: its pinned cores whole, else its share."""
        return self.pinnedCores * 1000 if self.pinnedCores else self.cpuMillicores


class ServiceCompatibility(Strict):
    """Which DPUs can run it. Patterns are shell-style (`MBF2H*`); an empty list allows any."""

    vendors: list[str] = Field(default_factory=list)
    models: list[str] = Field(default_factory=list)
    partNumbers: list[str] = Field(default_factory=list)
    capabilities: list[str] = Field(
        default_factory=list, description="capability keys the DPU must report (e.g. maxVFs, os)"
    )
    os: list[str] = Field(
        default_factory=list, description="the DPU's OS as its agent reports it (e.g. 'Ubuntu 22.04*', 'Rocky*')"
    )
    kernels: list[str] = Field(default_factory=list, description="the DPU's kernel release (e.g. '5.15.*', '6.*')")
    offloads: list[str] = Field(
        default_factory=list,
        description="what the DPU must offload in hardware: an accelerator's algorithm or kind from its "
        "capabilities (e.g. AES-GCM-256, NVMe-oF-TCP, 'RoCE*', compression); patterns, matched without case",
    )


PlacementMode = Literal["EveryDPU", "Replicas", "DPUs"]


class Placement(Strict):
    """EveryDPU: one instance on each matching DPU (a DaemonSet). Replicas: N instances on distinct DPUs,
    spread across hosts (at most maxPerHost on one host). DPUs: one on each DPU listed."""

    mode: PlacementMode = "Replicas"
    replicas: int | None = Field(default=None, ge=0, le=100_000)
    dpus: list[Name] = Field(default_factory=list)
    selector: LabelSelector = Field(default_factory=LabelSelector)
    maxPerHost: int | None = Field(default=None, ge=1, description="Replicas: at most this many on one host")
    affinity: list[Name] = Field(default_factory=list, description="only on DPUs that hold these services")
    antiAffinity: list[Name] = Field(default_factory=list, description="never on a DPU that holds these services")
    exclude: list[Name] = Field(
        default_factory=list, description="never on these DPUs; an instance there moves (`dpufleet service move`)"
    )
    prefer: list[Name] = Field(default_factory=list, description="these DPUs first, when they fit")
    runsOn: Literal["DPU", "Host"] = Field(
        default="DPU",
        description="where each placed instance runs: on its DPU, or on the host that carries the DPU (its host "
        "agent); changing it moves every instance, started at the new place before it stops at the old",
    )

    @model_validator(mode="after")
    def _mode_fields(self) -> Placement:
        if self.mode == "Replicas" and self.replicas is None:
            raise ValueError("replicas: required when mode is Replicas")
        if self.mode != "Replicas" and self.replicas is not None:
            raise ValueError(f"replicas: only with mode Replicas (mode is {self.mode})")
        if self.mode == "DPUs" and not self.dpus:
            raise ValueError("dpus: list the DPUs when mode is DPUs")
        if self.mode != "DPUs" and self.dpus:
            raise ValueError(f"dpus: only with mode DPUs (mode is {self.mode})")
        return self


class Dependency(Strict):
    """A service that must be scheduled first: on the same DPU (SameDPU) or anywhere in the fleet."""

    service: Name
    scope: Literal["SameDPU", "Anywhere"] = "SameDPU"


# --- probes (the DPU's runtime runs them: exec in the instance, tcp/http in its network namespace) ----------


class HTTPProbe(Strict):
    path: str = Field(default="/", pattern=r"^/")
    port: int = Field(ge=1, le=65535)


class TCPProbe(Strict):
    port: int = Field(ge=1, le=65535)


class Probe(Strict):
    exec: list[str] | None = Field(default=None, min_length=1)
    http: HTTPProbe | None = None
    tcp: TCPProbe | None = None
    periodSeconds: int = Field(default=10, ge=1)
    timeoutSeconds: int = Field(default=1, ge=1)
    failureThreshold: int = Field(default=3, ge=1)

    @model_validator(mode="after")
    def _one_action(self) -> Probe:
        given = [name for name in ("exec", "http", "tcp") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"exactly one of exec, http, tcp must be given (got {given or 'none'})")
        return self


class Probes(Strict):
    liveness: Probe | None = None
    readiness: Probe | None = None


# --- state handoff (agent/services.py runs it) --------------------------------------------------------------


class StateHandoff(Strict):
    """A stateful service's upgrade without a gap: the DPU's runtime holds the service's listening sockets
    (`listen`, passed to every instance as fds 3.. with LISTEN_FDS, systemd's socket activation), so a
    connection waits in the socket's queue while one instance hands over to the next, never refused.

    The sequence on a DPU (agent/services.py): `POST /drain` to the running instance (it stops taking
    connections, finishes those it has), `GET /state` (its state, at most maxStateMiB), the new instance
    started with that state in the file `$DPUFLEET_STATE_FILE`, ready, then the old one stopped. Both
    requests go over the instance's own control socket, `$DPUFLEET_HANDOFF_DIR/control.sock` (HTTP over
    a Unix socket). A step that fails puts the old instance back to work (`POST /resume`) and keeps it:
    the upgrade sees no ready instance at the new revision and rolls back as it would for any failure."""

    listen: list[int] = Field(min_length=1, max_length=8, description="TCP ports the runtime holds open")
    maxStateMiB: int = Field(default=16, ge=1, le=1024)
    timeoutSeconds: int = Field(default=30, ge=1, le=600, description="each step, and the new instance's start")
    settleSeconds: int = Field(
        default=2,
        ge=0,
        le=300,
        description="the new instance stays Running and ready this long before the old one stops; one that "
        "fails sooner gives the work back to the old one, whose state is what it handed over",
    )

    @field_validator("listen")
    @classmethod
    def _ports(cls, ports: list[int]) -> list[int]:
        bad = [p for p in ports if not 1 <= p <= 65535]
        if bad:
            raise ValueError(f"ports must be 1..65535 (got {bad})")
        if len(set(ports)) != len(ports):
            raise ValueError("a port listed more than once")
        return ports


# --- upgrades (services/upgrade.py rolls them) ----------------------------------------------------------------


class UpgradeStrategy(Strict):
    """How a change that restarts instances (artifact, args, env, resources, probes) or reloads them
    (config files) reaches the DPUs: a few at a time, each gated on readiness, rolled back on failure."""

    maxUnavailable: int | str = Field(
        default="25%", description="instances upgrading at once: a count (>= 1) or a percentage (at least 1)"
    )
    maxFailures: int | str = Field(
        default=1, description="failed instances (count or percentage) that stop the upgrade: rollback or halt"
    )
    minReadySeconds: int = Field(
        default=5, ge=0, le=3600, description="an upgraded instance counts once Running and ready this long"
    )
    progressDeadlineSeconds: int = Field(
        default=300, ge=1, le=86_400, description="an instance not ready this long after its upgrade began failed"
    )
    autoRollback: bool = Field(default=True, description="put every instance back on the previous revision")
    paused: bool = Field(
        default=False, description="start upgrading no more instances; those upgrading finish (Paused)"
    )

    @field_validator("maxUnavailable", "maxFailures")
    @classmethod
    def _limit(cls, value: int | str) -> int | str:
        return count_or_percent(value, 1)


class DisruptionBudget(Strict):
    """How many of the service's instances may be unavailable (not Running and ready) when a drain would
    take one away: a drain waits until the others are ready again. Upgrades have their own limit."""

    maxUnavailable: int | str = Field(description="a count (>= 0) or a percentage of the service's instances")

    @field_validator("maxUnavailable")
    @classmethod
    def _limit(cls, value: int | str) -> int | str:
        return count_or_percent(value, 0)


# --- DPUService ---------------------------------------------------------------------------------------------


class DPUServiceSpec(Strict):
    artifact: Artifact
    config: ServiceConfig = Field(default_factory=ServiceConfig)
    resources: ServiceResources = Field(default_factory=ServiceResources)
    compatibility: ServiceCompatibility = Field(default_factory=ServiceCompatibility)
    placement: Placement
    dependsOn: list[Dependency] = Field(default_factory=list)
    priority: int = Field(default=0, ge=0, le=1_000_000, description="higher is placed first")
    restartPolicy: Literal["Always", "OnFailure", "Never"] = "Always"
    privileged: bool = Field(default=False, description="admin-only: host networking, all capabilities")
    probes: Probes = Field(default_factory=Probes)
    upgrade: UpgradeStrategy = Field(default_factory=UpgradeStrategy)
    disruptionBudget: DisruptionBudget | None = Field(default=None, description="what a drain may take at once")
    handoff: StateHandoff | None = Field(
        default=None, description="a stateful service: each upgrade hands the state over, on the same sockets"
    )

    @model_validator(mode="after")
    def _fits_artifact(self) -> DPUServiceSpec:
        if self.handoff is not None and self.privileged:
            raise ValueError("handoff: not for a privileged service (it has the host's network, not its own)")
        if self.artifact.kernelModule is not None:
            given = [
                name
                for name, value in (
                    ("handoff", self.handoff),
                    ("config.files", self.config.files),
                    ("config.env", self.config.env),
                    ("config.reload", self.config.reload),
                    ("probes.liveness", self.probes.liveness),
                    ("probes.readiness", self.probes.readiness),
                )
                if value
            ]
            if given:
                raise ValueError(
                    f"{', '.join(given)}: not for a kernel module (its config.args are its parameters, name=value)"
                )
            bad = [a for a in self.config.args if not _MODULE_PARAM.match(a)]
            if bad:
                raise ValueError(f"config.args: a kernel module's parameters are name=value (got {bad})")
        return self

    @field_validator("dependsOn")
    @classmethod
    def _distinct(cls, deps: list[Dependency]) -> list[Dependency]:
        names = [d.service for d in deps]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"{', '.join(twice)} listed more than once")
        return deps


class InstanceStatus(Strict):
    """One instance as the scheduler sees it: where it is and why it is where it is (or nowhere)."""

    name: str
    dpu: Name | None = None
    host: str | None = None
    runsOn: Literal["DPU", "Host"] | None = Field(
        default=None, description="where it runs now (during a move: the old place until the new is ready)"
    )
    phase: Literal["Pending", "Scheduled", "Pulling", "Starting", "Running", "Degraded", "Failed", "Succeeded"] = Field(
        default="Pending", description="Degraded: running, but its readiness probe fails since it was ready"
    )
    ready: bool | None = None
    restarts: int | None = None
    revision: str | None = Field(default=None, description="what the DPU runs (the service's is its current one)")
    reason: str | None = None


UpgradePhase = Literal["Complete", "Progressing", "Waiting", "Paused", "RolledBack", "Halted"]


class UpgradeInFlight(Strict):
    startedAt: str
    readySince: str | None = None


class UpgradeFailure(Strict):
    dpu: str
    reason: str


class UpgradeStatus(Strict):
    """Where the service's instances are between its current revision and the one its spec asks for.

    A revision is `<restart digest>.<config digest>` (services/desired.py). `template` is what the
    current revision runs, `updateTemplate` what the update revision runs (the spec changes before the
    controller has seen it, and before the fleet follows): the DPUs in `held`, and those that
    `failed`, run the first, the others the second."""

    phase: UpgradePhase = "Complete"
    currentRevision: str
    updateRevision: str
    template: dict[str, Any] = Field(default_factory=dict, description="what the current revision runs")
    updateTemplate: dict[str, Any] = Field(default_factory=dict, description="what the update revision runs")
    held: list[str] = Field(default_factory=list, description="DPUs still on the current revision")
    inFlight: dict[str, UpgradeInFlight] = Field(default_factory=dict, description="DPUs being upgraded")
    updated: list[str] = Field(default_factory=list, description="DPUs that run the update revision, ready")
    failed: list[UpgradeFailure] = Field(default_factory=list, description="back on the current revision")
    rolledBackRevision: str | None = None
    previousRevision: str | None = Field(default=None, description="the revision before the last completed upgrade")
    previousTemplate: dict[str, Any] | None = Field(default=None, description="what it ran: `dpufleet service undo`")
    startedAt: str | None = None
    message: str | None = None


class DPUServiceStatus(Status):
    runsOn: Literal["DPU", "Host"] | None = Field(default=None, description="placement.runsOn as the controller saw it")
    runsOnSince: str | None = Field(default=None, description="when that began (a move: reports before it are old)")
    desired: int = 0
    scheduled: int = 0
    running: int = Field(default=0, description="instances their DPUs run at the service's current revision")
    ready: int = Field(default=0, description="running instances whose readiness probe passes (or that have none)")
    instances: list[InstanceStatus] = Field(default_factory=list)
    pendingReason: str | None = Field(
        default=None, description="why instances are pending, in numbers: '0/1,000 DPUs fit: ...'"
    )
    upgrade: UpgradeStatus | None = None


class DPUService(Resource):
    kind: Literal["DPUService"] = "DPUService"
    spec: DPUServiceSpec
    status: DPUServiceStatus = Field(default_factory=DPUServiceStatus)

    @model_validator(mode="after")
    def _not_itself(self) -> DPUService:
        name = self.metadata.name
        if any(d.service == name for d in self.spec.dependsOn):
            raise ValueError(f"spec.dependsOn: service {name!r} cannot depend on itself")
        return self


register(
    KindInfo(
        "DPUService",
        "dpuservices",
        DPUService,
        ("dpuservice", "dsvc", "svc"),
        (
            Column("MODE", "spec.placement.mode"),
            Column("DESIRED", "status.desired"),
            Column("SCHEDULED", "status.scheduled"),
            Column("RUNNING", "status.running"),
            Column("READY", "status.ready"),
            Column("UPGRADE", "status.upgrade.phase", wide_only=True),
            Column("PENDING-REASON", "status.pendingReason", wide_only=True),
        ),
    )
)


# --- DPUDeployment -----------------------------------------------------------------------------------------

DEPLOYMENT_LABEL = "dpufleet.io/deployment"


class DeploymentDPUSet(Strict):
    """The DPU OS image and flavor of the bundle, rolled out first (a DPUSet the deployment owns)."""

    template: DPUTemplate
    strategy: RolloutStrategy = Field(default_factory=RolloutStrategy)


class DPUDeploymentSpec(Strict):
    """A versioned bundle: the DPUs' OS/flavor and the services they run, deployed to the selected DPUs.

    Each service is a DPUService spec without `placement`: it runs on every selected DPU (EveryDPU), as
    DPUService `<deployment>-<service>`; `dependsOn` names other services of the bundle by their names
    here. A change rolls the OS first (the DPUSet's rollout), then the services (their upgrades, in
    dependency order). `paused` holds the whole bundle where it is; each change is a revision kept in
    `status.history`, which `dpufleet deployment undo` writes back."""

    selector: LabelSelector = Field(default_factory=LabelSelector)
    dpuSet: DeploymentDPUSet | None = None
    services: dict[Name, dict[str, Any]] = Field(min_length=1)
    paused: bool = Field(
        default=False,
        description="no DPU starts an OS update and no instance an upgrade; those under way finish",
    )

    @field_validator("services")
    @classmethod
    def _services(cls, services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, spec in services.items():
            if not isinstance(spec, dict):
                raise ValueError(f"{name}: a DPUService spec (artifact, config, resources, ...)")
            if "placement" in spec:
                raise ValueError(f"{name}.placement: a deployment's service runs on every selected DPU")
            try:
                DPUServiceSpec.model_validate({**spec, "placement": {"mode": "EveryDPU"}})
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
            unknown = [d.get("service") for d in spec.get("dependsOn") or [] if d.get("service") == name]
            if unknown:
                raise ValueError(f"{name}.dependsOn: a service cannot depend on itself")
        return services


class DeploymentRevision(Strict):
    """One revision of a bundle: its spec (without `paused`) as first seen by the controller."""

    revision: int = Field(ge=1)
    digest: str
    spec: dict[str, Any]
    seenAt: str


class DPUDeploymentStatus(Status):
    revision: int | None = Field(default=None, description="the revision the spec is (status.history)")
    history: list[DeploymentRevision] = Field(
        default_factory=list, description="the last revisions, oldest first (`dpufleet deployment history`)"
    )
    dpuSet: dict[str, Any] = Field(default_factory=dict, description="the owned DPUSet's phase and counts")
    services: dict[str, dict[str, Any]] = Field(default_factory=dict, description="each service's counts")
    servicesReady: str | None = Field(default=None, description="'2/3': services running on every selected DPU")


class DPUDeployment(Resource):
    kind: Literal["DPUDeployment"] = "DPUDeployment"
    spec: DPUDeploymentSpec
    status: DPUDeploymentStatus = Field(default_factory=DPUDeploymentStatus)


register(
    KindInfo(
        "DPUDeployment",
        "dpudeployments",
        DPUDeployment,
        ("dpudeployment", "dpudeploy"),
        (
            Column("PHASE", "status.phase"),
            Column("OS", "status.dpuSet.phase"),
            Column("SERVICES", "status.servicesReady"),
            Column("REVISION", "status.revision"),
        ),
    )
)


# --- DPUAllocation -----------------------------------------------------------------------------------------


class Allocation(Strict):
    """One placed instance and what it takes from the DPU."""

    service: Name
    instance: str
    cpuMillicores: int = Field(ge=0)
    memoryMiB: int = Field(ge=0)
    hugepagesMiB: int = Field(default=0, ge=0)
    storageMiB: int = Field(default=0, ge=0)
    accelerators: list[str] = Field(default_factory=list)
    cores: list[int] = Field(default_factory=list, description="pinnedCores: the DPU's cores it has alone")
    priority: int = Field(default=0, ge=0, description="the service's priority when placed (what preemption weighs)")
    # a move between DPUs with a state handoff (services/controller.py `_state_moves`)
    stateTo: Name | None = Field(default=None, description="leaving: its state goes to this DPU's new instance")
    stateSince: str | None = Field(default=None, description="when that move began")
    stateFrom: Name | None = Field(default=None, description="new: it starts with the state of that DPU's instance")


class DPUAllocationSpec(Strict):
    """The instances placed on one DPU; written only with its resourceVersion as precondition."""

    dpu: Name
    instances: list[Allocation] = Field(default_factory=list)


class StateExport(Strict):
    """A move's first half, done: the state the leaving instance exported, stored in the control plane's
    repository for the instance that replaces it on another DPU."""

    to: Name = Field(description="the DPU whose new instance imports it")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)


class InstanceReport(Strict):
    """One instance as a DPU's runtime reports it (agent/services.py), over the agent protocol."""

    service: Name
    instance: str = Field(min_length=1, max_length=600)
    revision: str = Field(max_length=128)
    configRevision: str | None = Field(default=None, max_length=128, description="the config files it runs with")
    phase: Literal["Pending", "Pulling", "Starting", "Running", "Degraded", "Failed", "Succeeded"]
    ready: bool = False
    restarts: int = Field(default=0, ge=0)
    exitCode: int | None = None
    reason: str | None = Field(default=None, max_length=2000)
    startedAt: str | None = Field(default=None, max_length=64)
    memoryBytes: int | None = Field(default=None, ge=0)
    memoryLimitBytes: int | None = Field(default=None, ge=0)
    cpuSeconds: float | None = Field(default=None, ge=0, description="CPU time its cgroup has used")
    stateExport: StateExport | None = Field(default=None, description="a move: the state it handed on, drained")
    awaitingState: bool = Field(default=False, description="a move: pulled, it starts once the state comes")


class RuntimeInstance(InstanceReport):
    """The report as stored in the DPUAllocation's status (services/reports.py), with when it came."""

    at: str | None = None


class DPUAllocationStatus(Status):
    instances: list[RuntimeInstance] = Field(default_factory=list, description="what the DPU's runtime runs")
    hostInstances: list[RuntimeInstance] = Field(
        default_factory=list, description="what the host agent runs for this DPU (placement.runsOn Host)"
    )


class DPUAllocation(Resource):
    kind: Literal["DPUAllocation"] = "DPUAllocation"
    spec: DPUAllocationSpec
    status: DPUAllocationStatus = Field(default_factory=DPUAllocationStatus)


register(
    KindInfo(
        "DPUAllocation",
        "dpuallocations",
        DPUAllocation,
        ("dpuallocation", "alloc"),
        (Column("DPU", "spec.dpu"), Column("INSTANCES", "spec.instances[*].instance")),
    )
)
