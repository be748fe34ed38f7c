"""What the health controller knows about one DPU at one moment, gathered from real signals only.

Every field comes from a protocol dpufleet speaks: the DPU's BMC over Redfish, the agent's
reports (as stored in DPU status), the host agent's reports (Host status) and Redfish events
the BMC pushed. Nothing here reads the emulator's internals (docs/faults.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from pydantic import BaseModel

from ..drivers.redfish.events import LogEntry


class EvidenceItem(BaseModel):
    """One observation a diagnosis rests on, as shown by `describe dpu` (source: redfish, agent, ...)."""

    source: str
    signal: str
    value: str


@dataclass(frozen=True)
class MemoryDevice:
    id: str
    state: str | None
    health: str | None


@dataclass
class BMCView:
    """What the BMC answered (or that it did not)."""

    reachable: bool
    hung: bool = False  # it answers, but only 503 ("service unavailable") while it should work
    error: str = ""
    power_state: str | None = None
    boot_progress: str | None = None
    boot_progress_oem: str | None = None
    boot_progress_since: datetime | None = None
    health: str | None = None
    memory: list[MemoryDevice] = field(default_factory=list)
    logs: list[LogEntry] = field(default_factory=list)
    os_firmware_version: str | None = None


@dataclass
class AgentView:
    """The DPU agent as its reports show it. `silent` None: it never reported (nothing to miss)."""

    silent: bool | None
    last_heartbeat: datetime | None = None
    heartbeat_age: float | None = None
    data_nics_down: list[str] = field(default_factory=list)
    root_used_percent: float | None = None
    clock_skew_seconds: float | None = None


@dataclass
class HostView:
    """The host agent of the DPU's host, if the DPU sits in a known host."""

    name: str
    silent: bool | None
    silent_seconds: float | None = None
    functions_present: bool | None = None  # does the host still enumerate the DPU's PCI functions?
    aer_uncorrectable: list[str] = field(default_factory=list)  # BDFs with uncorrectable AER errors
    link_down: bool = False
    last_seen: datetime | None = None  # the host agent's last stored report


@dataclass
class Observation:
    """Everything known about a DPU at `at`; input of `diagnose`."""

    at: datetime
    bmc: BMCView | None  # None: the DPU has no BMC known to dpufleet
    agent: AgentView
    host: HostView | None = None
    boot_stuck_seconds: float = 120.0
    log_window_seconds: float = 600.0
    disk_full_percent: float = 98.0
    max_clock_skew_seconds: float = 5.0
    agent_start_seconds: float = 60.0  # after the OS is up, the agent gets this long to report again
    logs_after: datetime | None = None  # entries before this (the last reset, the last recovery) are history
    power_off_grace_seconds: float = 0.0  # Off while the host agent reports: this long before it is a power loss
