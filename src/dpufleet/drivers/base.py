"""Driver interfaces: small abstract classes, one per concern, as in Ironic.

Each has validate() (can this driver work with this device, with these
credentials?) and a few verbs. Implementations are chosen by name: a Redfish
one for every BMC, an agent one for in-band work, vendor overrides where a
vendor differs.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from enum import StrEnum


class PowerInterface(abc.ABC):
    @abc.abstractmethod
    async def validate(self) -> None:
        """Raise if the device cannot be controlled (unreachable, wrong credentials)."""

    @abc.abstractmethod
    async def get_power_state(self) -> str:
        """On, Off, PoweringOn, PoweringOff, or Unknown."""

    @abc.abstractmethod
    async def reset(self, reset_type: str) -> None:
        """Redfish reset types: On, ForceOff, GracefulShutdown, GracefulRestart, ForceRestart, PowerCycle..."""


class InstallState(StrEnum):
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


@dataclass(frozen=True)
class InstallRequest:
    """One component to write: where the device fetches it and which firmware slot it replaces."""

    image_url: str  # signed, short-lived; the file name ends <target>-<version>.<ext>
    target: str  # firmware inventory id (DPU_OS, DPU_NIC, ...)
    version: str
    sha256: str


@dataclass(frozen=True)
class InstallProgress:
    state: InstallState
    percent: int | None = None
    message: str = ""
    reason: str | None = None  # when FAILED: why, as a condition reason (DigestMismatch, ...); None: InstallTaskFailed


class InstallInterface(abc.ABC):
    """Writes an image to a DPU. Each verb is idempotent or resumable from what it returned,
    which the caller persists (a task URI): a restarted controller polls, it does not re-flash."""

    name: str
    needs_bmc: bool = True  # False: works with no (reachable) BMC -- it reaches the DPU another way
    boots_during_install: bool = False  # True: a SUCCEEDED install already runs the new image (no reset needed)

    async def running_versions(self) -> dict[str, str] | None:
        """Firmware id -> the version the DPU runs, as this path sees it; None: ask the BMC (the default).
        Raise InstallNotReady while the DPU has not reported since it booted the new image."""
        return None

    @abc.abstractmethod
    async def validate(self, target: str) -> None:
        """Raise if this path cannot install to `target` on this device (no update service, not updateable)."""

    @abc.abstractmethod
    async def install(self, request: InstallRequest) -> str:
        """Start writing; return a handle (task URI) to poll. Raise InstallBusy if another install runs."""

    @abc.abstractmethod
    async def find_started(self, request: InstallRequest, since: str) -> str | None:
        """A handle of an install of this request started at or after `since` (an ISO time), if the
        device knows one: after a crash between sending the request and recording its handle."""

    @abc.abstractmethod
    async def poll(self, handle: str) -> InstallProgress:
        """Where the install stands."""

    @abc.abstractmethod
    async def activate(self) -> None:
        """Boot into what was written (a reset); the caller waits for the reboot."""


class InstallBusy(Exception):
    """The device is already installing something."""


class InstallNotReady(Exception):
    """What the path needs to answer has not been reported yet: ask again later."""
