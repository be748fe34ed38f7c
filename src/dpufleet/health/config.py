"""The health controller's settings, and what of a DPU's health status a reader acts on."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..inventory import reports
from ..runtime.conditions import get_condition

CONDITION = "Healthy"


@dataclass(frozen=True)
class HealthConfig:
    poll_seconds: float = 10.0
    heartbeat_seconds: float = 10.0
    allowed_misses: int = 3
    heartbeat_write_seconds: float | None = None  # None: the report handler's throttle (inventory/reports.py)
    redfish_timeout: float = 5.0
    bmc_failures_before_down: int = 2  # consecutive failed polls before the BMC counts as down
    boot_stuck_seconds: float = 120.0
    log_window_seconds: float = 600.0
    host_silent_seconds: float | None = None  # None: as for the DPU agent
    host_down_seconds: float = 120.0  # a host silent longer than a reboot takes is HostDown
    disk_full_percent: float = 98.0
    max_clock_skew_seconds: float = 5.0
    agent_start_seconds: float = 60.0
    # An unchanged diagnosis is written again (checkedAt, the evidence's ages) at most this often: every
    # visit writing the DPU would cost a store write and a change-log entry per DPU per poll.
    refresh_seconds: float = 30.0
    credentials_seconds: float = 60.0  # a BMC's credentials are read again after this (at once after a failure)
    # A BMC that pushes its events (a live EventService subscription) is asked only for its system on most
    # polls: its log entries arrive by push, and its memory and logs are read in full when a pushed event
    # that is not OK arrives and at least this often (events delivered to another API server process, or
    # lost).
    full_look_seconds: float = 60.0
    # A budget of BMC visits a second: past max_polls_per_second x poll_seconds DPUs (1,000 with the
    # defaults), each DPU is visited less often, so that health never takes more than its share of the
    # control plane (at 10,000 DPUs, every 100 s; pushed events and agent reports still arrive at once).
    max_polls_per_second: float = 100.0
    # A BMC that pushes its events, of a DPU with no agent reporting, is visited this many times less
    # often: a pushed event that is not OK wakes its DPUs at once, so the poll only has to notice a
    # BMC that stopped answering (every 30 s with the defaults). A DPU whose agent reports keeps the
    # poll interval: the agent's silence is noticed on a visit.
    subscribed_poll_factor: float = 3.0

    def poll_interval(self, watched: int, pushing: bool = False) -> float:
        """Seconds between two visits of one DPU when `watched` DPUs are looked after; `pushing`: its BMC
        pushes its events and no agent reports from it."""
        interval = max(self.poll_seconds, watched / self.max_polls_per_second if self.max_polls_per_second else 0.0)
        return interval * max(1.0, self.subscribed_poll_factor) if pushing else interval

    def silent_after(self) -> float:
        """Seconds without a stored heartbeat before the agent counts as silent.

        The report handler stores a heartbeat at most every `heartbeat_write_seconds`, so a live
        agent's stored heartbeat can be that much plus one interval old; silence must be longer.
        """
        throttle = (
            reports.HEARTBEAT_WRITE_EVERY if self.heartbeat_write_seconds is None else self.heartbeat_write_seconds
        )
        return max(self.heartbeat_seconds * self.allowed_misses, throttle + self.heartbeat_seconds)


def material(status: dict[str, Any]) -> tuple[Any, ...]:
    """What of the health status matters to a reader: all but checkedAt and the heartbeat's age."""
    diagnosis = dict(status.get("diagnosis") or {})
    diagnosis.pop("checkedAt", None)
    diagnosis["evidence"] = [
        e for e in diagnosis.get("evidence") or [] if not (isinstance(e, dict) and e.get("signal") == "last heartbeat")
    ]
    condition = dict(get_condition(status, CONDITION) or {})
    condition["message"] = _HEARTBEAT_AGE.sub("", str(condition.get("message", "")))
    return diagnosis, condition, status.get("remediation")


_HEARTBEAT_AGE = re.compile(r"agent last heartbeat: [^;\]]*")
