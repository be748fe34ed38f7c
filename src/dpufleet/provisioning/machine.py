"""The provisioning phases, what each handler may answer, and the context handlers work with.

One handler per phase (provisioning/phases/<phase>.py): `handle()` looks at the DPU and its
persisted progress and answers Next (move on), Wait (call again later) or raises StepFailed.
The controller does everything common: reservations, timeouts, retries with backoff, the
failed phases, conditions, events and metrics.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..api.kinds import (
    Phase,
    ProvisioningStatus,
)
from ..api.meta import isotime, now, seconds_since
from ..drivers.base import InstallInterface
from ..drivers.redfish.client import RedfishClient
from ..images.repository import ImageRepository
from ..store.store import Store


@dataclass
class Timeouts:
    """Every wait is bounded. Seconds; tests shrink them."""

    validating: float = 60.0
    preparing_host: float = 900.0
    staging: float = 1800.0
    installing: float = 1800.0
    rebooting: float = 900.0
    configuring: float = 300.0
    hook_request: float = 10.0

    def of(self, phase: Phase) -> float:
        return {
            Phase.AVAILABLE: self.validating,
            Phase.PREPARING_HOST: self.preparing_host,
            Phase.STAGING_IMAGE: self.staging,
            Phase.INSTALLING: self.installing,
            Phase.REBOOTING: self.rebooting,
            Phase.CONFIGURING: self.configuring,
        }[phase]


@dataclass
class ProvisioningConfig:
    timeouts: Timeouts = field(default_factory=Timeouts)
    poll_seconds: float = 3.0  # DPF polls install status every 3 s
    max_attempts: int = 3  # per step, before it waits in its failed phase
    retry_base_seconds: float = 10.0
    retry_cap_seconds: float = 600.0
    reservation_ttl: float = 900.0
    url_ttl: float = 3600.0
    # a BMC shows a reset within seconds; a DPU still up on the same boot this long after the
    # reset was recorded never got it (the control plane died between recording and sending)
    reset_grace_seconds: float = 15.0
    # DPUs this controller provisions at once (as Ironic's max concurrent deploys): more wait their
    # turn in the order they asked, untouched, and start as others finish. Ten thousand DPUs in
    # flight at once would each be polled and woken while almost none progressed.
    max_in_flight: int = 256

    @classmethod
    def from_env(cls) -> ProvisioningConfig:
        """Defaults, with the poll and retry pauses from the environment when set (benchmarks and
        tests with instant emulated hardware): DPUFLEET_PROVISIONING_POLL_SECONDS,
        DPUFLEET_PROVISIONING_RETRY_SECONDS, DPUFLEET_PROVISIONING_MAX_IN_FLIGHT."""
        config = cls()
        poll = os.environ.get("DPUFLEET_PROVISIONING_POLL_SECONDS")
        if poll:
            config.poll_seconds = float(poll)
        in_flight = os.environ.get("DPUFLEET_PROVISIONING_MAX_IN_FLIGHT")
        if in_flight:
            config.max_in_flight = max(1, int(in_flight))
        retry = os.environ.get("DPUFLEET_PROVISIONING_RETRY_SECONDS")
        if retry:
            config.retry_base_seconds = float(retry)
            config.retry_cap_seconds = max(float(retry) * 8, float(retry))
        return config

    def retry_delay(self, attempt: int) -> float:
        return float(min(self.retry_cap_seconds, self.retry_base_seconds * 2 ** max(0, attempt - 1)))


@dataclass(frozen=True)
class Next:
    phase: Phase
    message: str = ""


@dataclass(frozen=True)
class Wait:
    seconds: float
    message: str = ""


Outcome = Next | Wait


class StepFailed(Exception):
    """The step did not succeed. Retryable failures are tried again (backoff, up to a limit)."""

    def __init__(self, reason: str, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retryable = retryable


DriverFactory = Callable[[str], Awaitable[InstallInterface]]


@dataclass
class StepContext:
    """What a handler sees: the DPU as read at the start of this pass, its progress (to update),
    and the means to act. `save()` persists progress before a side effect (write-ahead)."""

    store: Store
    dpu: dict[str, Any]
    progress: ProvisioningStatus
    config: ProvisioningConfig
    repository: ImageRepository | None
    redfish: Callable[[], Awaitable[tuple[RedfishClient, str]]]  # the BMC client and the DPU system path
    install_driver: DriverFactory
    save: Callable[[], Awaitable[None]]
    record: Callable[[str, str, bool], Awaitable[None]]  # reason, message, warning
    status_updates: dict[str, Any] = field(default_factory=dict)  # top-level status fields to write with the outcome
    # Transitions made in this pass but not yet written: a pass that goes through several phases at once
    # writes them together with its next write (a save before a side effect, or the pass's end).
    held: list[Callable[[dict[str, Any]], None]] = field(default_factory=list)
    held_events: list[tuple[str, str, bool]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.dpu["metadata"]["name"])

    @property
    def project(self) -> str:
        return str(self.dpu["metadata"]["project"])

    @property
    def image_name(self) -> str:
        """The image being installed (the spec may change meanwhile; that starts over afterwards)."""
        return str(self.progress.image)

    @property
    def spec(self) -> dict[str, Any]:
        return dict(self.dpu.get("spec") or {})

    @property
    def status(self) -> dict[str, Any]:
        return dict(self.dpu.get("status") or {})

    async def get(self, kind: str, name: str) -> dict[str, Any]:
        return await self.store.call(self.store.get, kind, name, self.project)

    def seconds_in_phase(self) -> float:
        return seconds_since(self.progress.phaseStartedAt)


def stamp() -> str:
    return isotime(now())


class PhaseHandler(abc.ABC):
    """What happens while a DPU is in one phase."""

    phase: ClassVar[Phase]

    @abc.abstractmethod
    async def handle(self, ctx: StepContext) -> Outcome:
        """Look, act (idempotently, resumably), and say what comes next."""

    def reset(self, progress: ProvisioningStatus) -> None:  # noqa: B027 - most steps keep no progress
        """Forget this step's progress before it is tried again (a retry starts the step over)."""
