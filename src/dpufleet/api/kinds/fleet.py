"""Changing the fleet: DPUSets (rollouts), PowerActions (controlled resets), UpdateRequests."""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..meta import Name, Status, Strict
from ..selectors import LabelSelector
from .base import Resource
from .registry import _PHASE, Column, KindInfo, register

# --- DPUSet -----------------------------------------------------------------------------------------------


class StrategyType(StrEnum):
    ROLLING_UPDATE = "RollingUpdate"
    CANARY = "Canary"
    ON_DELETE = "OnDelete"


def count_or_percent(value: int | str, minimum: int) -> int | str:
    """Validate a limit given as a count (at least `minimum`) or a percentage such as '25%'."""
    if isinstance(value, int):
        if value < minimum:
            raise ValueError(f"must be at least {minimum}")
        return value
    if not value.endswith("%") or not value[:-1].isdigit() or not 0 < int(value[:-1]) <= 100:
        raise ValueError(f"{value!r} must be a count (>= {minimum}) or a percentage such as '25%'")
    return value


def resolve_limit(value: int | str, total: int, minimum: int = 1) -> int:
    """A count, or a percentage of `total` rounded down and at least `minimum`."""
    if isinstance(value, int):
        return value
    return max(minimum, math.floor(total * int(value[:-1]) / 100))


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
        return None if value is None else count_or_percent(value, 1)

    @field_validator("maxUnavailable")
    @classmethod
    def _max_unavailable(cls, value: int | str) -> int | str:
        return count_or_percent(value, 1)


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


register(
    KindInfo(
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
)


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


register(
    KindInfo(
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
)


register(
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
    )
)
