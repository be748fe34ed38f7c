"""Health: the failure classes a diagnosis names and the RemediationPolicy that answers them."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import Field, field_validator

from ..meta import Status, Strict
from ..selectors import LabelSelector
from .base import Resource
from .registry import Column, KindInfo, register

# --- RemediationPolicy (health) ---------------------------------------------------------------------------


class FailureClass(StrEnum):
    """The diagnoses of docs/faults.md; each is the `Healthy` condition's reason."""

    HEALTHY = "Healthy"
    OS_HANG = "OSHang"
    KERNEL_CRASH = "KernelCrash"
    NIC_FIRMWARE_CRASH = "NICFirmwareCrash"
    POWER_LOSS = "PowerLoss"
    HOST_RESET = "HostReset"
    HOST_POWER_CYCLE = "HostPowerCycle"
    HOST_DOWN = "HostDown"
    BMC_DOWN = "BMCDown"
    PCIE_ERROR = "PCIeError"
    CORRUPTED_FLASH = "CorruptedFlash"
    MEMORY_FAILURE = "MemoryFailure"
    AGENT_UNREACHABLE = "AgentUnreachable"
    DISK_FULL = "DiskFull"
    CLOCK_SKEW = "ClockSkew"


# The classes a RemediationPolicy rule may name (every diagnosis but Healthy).
FAILURE_CLASSES = tuple(c.value for c in FailureClass if c is not FailureClass.HEALTHY)
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


register(
    KindInfo(
        "RemediationPolicy",
        "remediationpolicies",
        RemediationPolicy,
        ("remediationpolicy", "rempol"),
        (Column("RULES", "spec.rules[*].failureClass"),),
    )
)


def _s(action: RemediationAction, after: float = 0.0, per_hour: int | None = None) -> RemediationStep:
    return RemediationStep(action=action, after=after, maxPerHour=per_hour)


# The built-in policy: docs/faults.md, "first actions (default policy)". It applies to DPUs no
# RemediationPolicy selects, and to the classes a policy does not list.
DEFAULT_RULES: dict[str, list[RemediationStep]] = {
    FailureClass.KERNEL_CRASH: [
        _s(RemediationAction.WAIT, 0),
        _s(RemediationAction.POWER_CYCLE, 60, 2),
        _s(RemediationAction.REFLASH, 300, 1),
        _s(RemediationAction.QUARANTINE, 1800),
        _s(RemediationAction.ALERT, 0),
    ],
    FailureClass.OS_HANG: [
        _s(RemediationAction.REBOOT, 0, 2),
        _s(RemediationAction.POWER_CYCLE, 120, 2),
        _s(RemediationAction.QUARANTINE, 300),
        _s(RemediationAction.ALERT, 0),
    ],
    FailureClass.NIC_FIRMWARE_CRASH: [
        _s(RemediationAction.REBOOT, 0, 2),
        _s(RemediationAction.POWER_CYCLE, 120, 2),
        _s(RemediationAction.QUARANTINE, 300),
    ],
    FailureClass.POWER_LOSS: [
        _s(RemediationAction.POWER_ON, 0, 3),
        _s(RemediationAction.HOST_POWER_CYCLE, 180, 1),
        _s(RemediationAction.QUARANTINE, 300),
    ],
    FailureClass.HOST_RESET: [],
    FailureClass.HOST_POWER_CYCLE: [_s(RemediationAction.WAIT, 0), _s(RemediationAction.POWER_ON, 300, 2)],
    FailureClass.HOST_DOWN: [_s(RemediationAction.ALERT, 0)],
    FailureClass.BMC_DOWN: [
        _s(RemediationAction.WAIT, 0),
        _s(RemediationAction.ALERT, 60),
        _s(RemediationAction.BMC_RESET, 60, 1),
    ],
    FailureClass.PCIE_ERROR: [
        _s(RemediationAction.HOST_POWER_CYCLE, 0, 1),
        _s(RemediationAction.QUARANTINE, 600),
        _s(RemediationAction.ALERT, 0),
    ],
    FailureClass.CORRUPTED_FLASH: [
        _s(RemediationAction.REFLASH, 0, 1),
        _s(RemediationAction.QUARANTINE, 1800),
        _s(RemediationAction.ALERT, 0),
    ],
    FailureClass.MEMORY_FAILURE: [_s(RemediationAction.QUARANTINE, 0), _s(RemediationAction.ALERT, 0)],
    FailureClass.AGENT_UNREACHABLE: [
        _s(RemediationAction.WAIT, 0),
        _s(RemediationAction.RESTART_AGENT, 30, 2),
        _s(RemediationAction.ALERT, 60),
    ],
    FailureClass.DISK_FULL: [_s(RemediationAction.ALERT, 0)],
    FailureClass.CLOCK_SKEW: [_s(RemediationAction.ALERT, 0)],
}
DEFAULT_POLICY_NAME = "built-in"


def default_spec() -> RemediationPolicySpec:
    return RemediationPolicySpec(
        rules=[RemediationRule(failureClass=str(cls), actions=steps) for cls, steps in DEFAULT_RULES.items()]
    )
