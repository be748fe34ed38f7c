"""The agent protocol's service messages: what a DPU should run, and what its runtime made of it.

GET  /agent/v1/services          -> DesiredServices (the DPU the client certificate names)
POST /agent/v1/services/status   <- ServiceReport (one InstanceReport per instance, with its log tail)
POST /agent/v1/services/exec/ID  <- ExecResult (a command `DesiredServices.execs` asked for, run once)
PUT  /agent/v1/services/state/SERVICE?sha256=HEX  <- the state a moving instance exported (DesiredInstance.stateTo)

An instance's `revision` is a digest of everything that needs a new container when it changes (the
artifact, args, env, resources, privilege, and the config files unless the service declares how it
reloads them); `configRevision` covers the config files alone, which the runtime rewrites in place
and reloads (the declared signal, or an HTTP POST) without restarting the instance.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from .kinds.core import SandboxProfile
from .kinds.images import ConfigFile
from .kinds.services import Artifact, ConfigReload, InstanceReport, Probes, ServiceResources, StateHandoff

__all__ = [
    "DesiredInstance",
    "DesiredServices",
    "ExecRequest",
    "ExecResult",
    "InstanceLogs",
    "InstanceReport",
    "ServiceReport",
]
LOG_TAIL_LINES = 200
LOG_TAIL_BYTES = 32 * 1024
EXEC_OUTPUT_BYTES = 64 * 1024  # what `dpufleet service exec` shows of a command's output, at most
EXEC_TIMEOUT_MAX = 300


class DesiredInstance(BaseModel):
    service: str
    instance: str
    serviceUID: str | None = Field(
        default=None, description="the DPUService's uid: a service deleted and made again is another one"
    )
    revision: str
    configRevision: str
    artifact: Artifact
    files: list[ConfigFile] = Field(default_factory=list)
    reload: ConfigReload | None = Field(default=None, description="absent: new files come with a restart")
    env: dict[str, str] = Field(default_factory=dict)
    args: list[str] = Field(default_factory=list)
    resources: ServiceResources = Field(default_factory=ServiceResources)
    restartPolicy: Literal["Always", "OnFailure", "Never"] = "Always"
    privileged: bool = False
    sandbox: SandboxProfile = Field(
        default="standard",
        description="restricted: what the project's serviceSandboxes says for its publisher's class (Project spec)",
    )
    cores: list[int] = Field(default_factory=list, description="resources.pinnedCores: the cores it has alone")
    probes: Probes = Field(default_factory=Probes)
    handoff: StateHandoff | None = Field(default=None, description="upgraded by a state handoff (kinds/services.py)")
    after: list[str] = Field(default_factory=list, description="services of this DPU that must run first (SameDPU)")
    artifactURL: str | None = Field(
        default=None, description="an `image` artifact: where its OCI archive is, in the control plane's repository"
    )
    artifactError: str | None = Field(default=None, description="an `image` artifact the repository cannot offer")
    # A move between DPUs of a service with a state handoff (services/controller.py): the leaving instance
    # is told where its state goes, its replacement where it comes from and, once exported, where to fetch it
    stateTo: str | None = Field(default=None, description="drain, export the state for this DPU's new instance")
    stateFrom: str | None = Field(default=None, description="start with the state the instance there exports")
    stateSha256: str | None = Field(default=None, description="that state, exported: its digest")
    stateURL: str | None = Field(default=None, description="that state, in the control plane's repository")

    @property
    def runs(self) -> str:
        """What a running container is compared with: its revision, a sandbox other than standard and its pinned
        cores (a project's policy that changes the sandbox, or other cores, restarts the instance, though its
        revision is the same)."""
        runs = self.revision if self.sandbox == "standard" else f"{self.revision}+{self.sandbox}"
        return runs + (f"+cores={','.join(map(str, self.cores))}" if self.cores else "")


class ExecRequest(BaseModel):
    """A command to run once inside a service's instance on this DPU (`dpufleet service exec`)."""

    id: str = Field(min_length=1, max_length=64)
    service: str = Field(min_length=1, max_length=253)
    command: list[str] = Field(min_length=1, max_length=64)
    timeoutSeconds: float = Field(default=30.0, gt=0, le=EXEC_TIMEOUT_MAX)


class ExecResult(BaseModel):
    """What the command did: its exit status and output (stdout then stderr, cut at EXEC_OUTPUT_BYTES),
    or why it did not run (no such instance here, timed out)."""

    exitCode: int | None = None
    output: str = Field(default="", max_length=2 * EXEC_OUTPUT_BYTES)
    truncated: bool = False
    error: str | None = Field(default=None, max_length=2000)


class DesiredServices(BaseModel):
    dpu: str
    instances: list[DesiredInstance] = Field(default_factory=list)
    execs: list[ExecRequest] = Field(
        default_factory=list, description="commands to run once (never kept on the DPU's disk)"
    )


class InstanceLogs(BaseModel):
    """The last lines the instance wrote (stdout and stderr), at most LOG_TAIL_LINES / LOG_TAIL_BYTES."""

    service: str = Field(min_length=1, max_length=253)
    lines: list[str] = Field(default_factory=list, max_length=LOG_TAIL_LINES)


class ServiceReport(BaseModel):
    instances: list[InstanceReport] = Field(default_factory=list, max_length=10_000)
    logs: list[InstanceLogs] = Field(default_factory=list, max_length=10_000)
