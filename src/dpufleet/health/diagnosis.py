"""From evidence to a diagnosis: pure functions, exactly the table of docs/faults.md.

Each rule needs a *current* symptom (the agent silent, the boot stuck, the power off, a
report the host agent still makes) and reads the BMC's log only for the why: a log entry
alone never makes a DPU unhealthy, so an old "Kernel panic" does not haunt a DPU that has
recovered. For a silent agent only entries written after its last heartbeat count.

The tricky pairs:
- os-hang vs agent-partition: both show PowerState On, BootProgress OSRunning and a silent
  agent; only an OS hang leaves the BMC's "HostWatchdogTimer expired" entry.
- bmc-down vs power-loss: a BMC runs on auxiliary power, so a power loss leaves it answering
  PowerState Off; an unreachable BMC is the BMC's own failure (the agent still reports).
- power-loss vs host-power-cycle: both turn the DPU off; in a host power cycle the host
  agent goes silent with it, and the DPU walks back to OSRunning by itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from ..api.kinds import FailureClass
from ..drivers.redfish.events import LogEntry
from .evidence import BMCView, EvidenceItem, Observation

# Substrings (lower case) of BMC log messages, per cause. Redfish leaves the wording to vendors;
# these are the phrases of docs/faults.md and their common variants.
PANIC = ("kernel panic", "panic", "operating system crash", "operatingsystemcrash")
WATCHDOG = ("hostwatchdogtimer", "watchdog timeout", "devicewatchdogtimeout", "watchdog timer expired")
NIC_FATAL = ("nic firmware", "firmware fatal", "nic fatal")
AC_LOST = ("ac lost", "power lost", "ac power loss", "input power lost", "loss of input power", "lossofinputpower")
PCIE = ("pcie uncorrectable", "uncorrectable pcie", "pcie fatal", "aer uncorrectable", "pcieuncorrectableerror")
MEMORY = ("memory", "dimm", "dram")
MEMORY_BAD = ("fail", "absent", "missing", "error", "not present", "uncorrectable")
FLASH = ("golden", "recovery image", "recovery mode", "boot failed", "bootfailed", "corrupt")
MEMORY_INIT = "MemoryInitializationStarted"
OS_RUNNING = "OSRunning"
BAD_HEALTH = ("Critical", "Warning")


@dataclass(frozen=True)
class Diagnosis:
    failure_class: FailureClass
    message: str
    evidence: list[EvidenceItem] = field(default_factory=list)
    transient: bool = False  # booting or otherwise on its way: keep what was diagnosed before

    @property
    def healthy(self) -> bool:
        return self.failure_class == FailureClass.HEALTHY and not self.transient

    @property
    def reason(self) -> str:
        return "Booting" if self.transient else str(self.failure_class)


def _has(text: str, needles: Iterable[str]) -> bool:
    low = text.lower()
    return any(n in low for n in needles)


def _ev(source: str, signal: str, value: object) -> EvidenceItem:
    return EvidenceItem(source=source, signal=signal, value=str(value))


def relevant_logs(obs: Observation, since_heartbeat: bool) -> list[LogEntry]:
    """Entries inside the log window, after the last reset/recovery and, when asked, after the last heartbeat."""
    if obs.bmc is None:
        return []
    floor = obs.at - timedelta(seconds=obs.log_window_seconds)
    if obs.logs_after is not None:
        floor = max(floor, obs.logs_after)
    if since_heartbeat and obs.agent.last_heartbeat is not None:
        floor = max(floor, obs.agent.last_heartbeat - timedelta(seconds=2))
    return [e for e in obs.bmc.logs if e.created is None or e.created >= floor]


def _find(logs: list[LogEntry], needles: Iterable[str], also: Iterable[str] = ()) -> LogEntry | None:
    """The newest entry whose message or MessageId names the cause (a BMC's own resets excluded)."""
    also = tuple(also)
    for entry in reversed(logs):
        text = f"{entry.message} {entry.message_id}"
        if "manager" in entry.message_id.lower():
            continue  # the BMC's own watchdog resets say nothing about the DPU
        if _has(text, needles) and (not also or _has(text, also)):
            return entry
    return None


def _log_ev(entry: LogEntry) -> EvidenceItem:
    when = entry.created.isoformat() if entry.created else "?"
    return _ev(entry.source, "log entry", f"{entry.message!r} at {when}")


def _stuck(obs: Observation) -> bool:
    bmc = obs.bmc
    if bmc is None or bmc.boot_progress_since is None:
        return False
    return (obs.at - bmc.boot_progress_since).total_seconds() >= obs.boot_stuck_seconds


def diagnose(obs: Observation) -> Diagnosis:
    """The failure class the evidence shows (Healthy when none), with the evidence it rests on."""
    agent, bmc, host = obs.agent, obs.bmc, obs.host
    ev: list[EvidenceItem] = []
    silent = agent.silent is True
    if agent.silent is not None:
        age = f"{agent.heartbeat_age:.0f}s ago" if agent.heartbeat_age is not None else "never"
        ev.append(_ev("agent", "last heartbeat", age + (" (silent)" if silent else "")))
    host_silent = host is not None and host.silent is True
    if host is not None and host.silent is not None:
        ev.append(_ev(f"host-agent/{host.name}", "reports", "silent" if host_silent else "arriving"))

    if bmc is not None and (not bmc.reachable or bmc.hung):
        ev.append(_ev("redfish", "reachable", "hung (503)" if bmc.hung else f"no: {bmc.error}".rstrip(": ")))
        extra = (
            "; the agent is silent too, so the DPU may be down as well (its BMC cannot tell)"
            if silent
            else "; the DPU's agent still reports"
            if agent.silent is False
            else ""
        )
        what = "answers only 503 (hung)" if bmc.hung else "is unreachable"
        return Diagnosis(FailureClass.BMC_DOWN, f"the DPU's BMC {what}{extra}", ev)

    if bmc is None:
        return _agent_only(obs, ev)

    ev.append(_ev("redfish", "PowerState", bmc.power_state))
    ev.append(_ev("redfish", "BootProgress", bmc.boot_progress_oem or bmc.boot_progress))
    if bmc.health:
        ev.append(_ev("redfish", "Status.Health", bmc.health))
    logs_any = relevant_logs(obs, since_heartbeat=False)
    logs_silent = relevant_logs(obs, since_heartbeat=True) if silent else logs_any

    # Power: the BMC (on auxiliary power) says the DPU is off.
    if bmc.power_state == "Off" or (bmc.power_state == "PoweringOn" and host_silent):
        if host_silent:
            return Diagnosis(
                FailureClass.HOST_POWER_CYCLE,
                "the DPU lost slot power together with its host (the host agent is silent too)",
                ev,
            )
        since = bmc.boot_progress_since
        off_for = (obs.at - since).total_seconds() if since is not None else None
        if host is not None and host.silent is False and off_for is not None and off_for < obs.power_off_grace_seconds:
            # its host may have lost power with it (a host power cycle cuts slot power): the host agent's
            # silence, which takes its window to show, tells the two apart
            return Diagnosis(
                FailureClass.HEALTHY,
                f"powered off {off_for:.0f}s ago while its host agent still reports: a power loss or its host's "
                "power cycle (told apart when the host agent's silence shows)",
                ev,
                transient=True,
            )
        ac = _find(logs_any, AC_LOST)
        if ac is not None:
            ev.append(_log_ev(ac))
        if host is not None and host.link_down:
            ev.append(_ev(f"host-agent/{host.name}", "PCIe link", "down (surprise down)"))
        return Diagnosis(FailureClass.POWER_LOSS, "the BMC reports PowerState Off: the DPU has no power", ev)

    # Memory: POST fails.
    bad_dimms = [m for m in bmc.memory if m.health == "Critical" or m.state == "Absent"]
    mem_log = _find(logs_any, MEMORY, MEMORY_BAD)
    at_mem_init = bmc.boot_progress == MEMORY_INIT and (_stuck(obs) or silent)
    if bad_dimms or at_mem_init or (mem_log is not None and bmc.boot_progress != OS_RUNNING):
        for m in bad_dimms:
            ev.append(_ev("redfish", f"Memory {m.id}", f"State {m.state}, Health {m.health}"))
        if mem_log is not None:
            ev.append(_log_ev(mem_log))
        return Diagnosis(
            FailureClass.MEMORY_FAILURE,
            "POST fails at memory initialization" if at_mem_init else "a memory device failed",
            ev,
        )

    # Flash: the boot from the written image failed (the golden image may have booted since).
    flash_log = _find(logs_any, FLASH)
    oem_failed = bmc.boot_progress == "OEM" and _has(bmc.boot_progress_oem or "", (*FLASH, "slotbootfailed"))
    if oem_failed or flash_log is not None:
        if flash_log is not None:
            ev.append(_log_ev(flash_log))
        return Diagnosis(FailureClass.CORRUPTED_FLASH, "the DPU's OS image failed to boot (corrupted flash)", ev)

    # Kernel panic: a panic entry with a current symptom.
    panic = _find(logs_silent, PANIC)
    booting = bmc.boot_progress != OS_RUNNING
    if panic is not None and (silent or booting or bmc.health == "Critical"):
        ev.append(_log_ev(panic))
        how = f"boot stuck at {bmc.boot_progress}" if booting and _stuck(obs) else "reboot loop or hang after panic"
        return Diagnosis(FailureClass.KERNEL_CRASH, f"the DPU's kernel panicked ({how})", ev)

    # PCIe: the host agent reports uncorrectable AER errors on the DPU's functions (or the BMC logs one).
    pcie_log = _find(logs_any, PCIE)
    if (host is not None and host.aer_uncorrectable) or (pcie_log is not None and bmc.health in BAD_HEALTH):
        if host is not None and host.aer_uncorrectable:
            ev.append(_ev(f"host-agent/{host.name}", "AER uncorrectable", ", ".join(host.aer_uncorrectable)))
        if pcie_log is not None:
            ev.append(_log_ev(pcie_log))
        return Diagnosis(FailureClass.PCIE_ERROR, "uncorrectable PCIe errors on the DPU's link", ev)

    # NIC firmware: fatal error logged while the NICs (or their host functions) are down.
    nic_log = _find(logs_any, NIC_FATAL)
    functions_gone = host is not None and host.functions_present is False and not host_silent
    if nic_log is not None and (agent.data_nics_down or functions_gone or bmc.health in BAD_HEALTH or silent):
        ev.append(_log_ev(nic_log))
        if agent.data_nics_down:
            ev.append(_ev("agent", "data NICs down", ", ".join(agent.data_nics_down)))
        if functions_gone:
            ev.append(_ev(f"host-agent/{host.name if host else '?'}", "PCI functions", "gone"))
        return Diagnosis(FailureClass.NIC_FIRMWARE_CRASH, "the NIC firmware crashed", ev)

    # The BMC says the OS is not running (it reports BootProgress): the DPU is booting, whatever the
    # agent's last heartbeat says (it may predate the reset by less than the silence window).
    if booting and bmc.boot_progress:
        if silent and _stuck(obs):
            return Diagnosis(
                FailureClass.KERNEL_CRASH, f"the boot hangs at {bmc.boot_progress} and the agent is silent", ev
            )
        if silent and host_silent:
            return Diagnosis(FailureClass.HOST_POWER_CYCLE, "the DPU reboots with its host", ev)
        return Diagnosis(FailureClass.HEALTHY, f"booting ({bmc.boot_progress})", ev, transient=True)
    if silent:
        up_since = bmc.boot_progress_since
        starting = up_since is not None and (obs.at - up_since).total_seconds() < obs.agent_start_seconds
        if starting and up_since is not None and (agent.last_heartbeat is None or agent.last_heartbeat < up_since):
            return Diagnosis(FailureClass.HEALTHY, "the OS is up; its agent is starting", ev, transient=True)
        watchdog = _find(logs_silent, WATCHDOG)
        if watchdog is not None:
            ev.append(_log_ev(watchdog))
            return Diagnosis(
                FailureClass.OS_HANG, "the OS hangs: the agent is silent and the BMC's OS watchdog expired", ev
            )
        return Diagnosis(
            FailureClass.AGENT_UNREACHABLE,
            "the agent is silent while the BMC shows the OS running and no watchdog expiry (agent or its network)",
            ev,
        )
    return _agent_only(obs, ev)


def _agent_only(obs: Observation, ev: list[EvidenceItem]) -> Diagnosis:
    agent = obs.agent
    if agent.silent is True:
        return Diagnosis(FailureClass.AGENT_UNREACHABLE, "the agent is silent and the DPU has no BMC to ask", ev)
    if agent.root_used_percent is not None and agent.root_used_percent >= obs.disk_full_percent:
        ev.append(_ev("agent", "root filesystem used", f"{agent.root_used_percent:.0f}%"))
        return Diagnosis(FailureClass.DISK_FULL, f"the root filesystem is {agent.root_used_percent:.0f}% full", ev)
    if agent.clock_skew_seconds is not None and abs(agent.clock_skew_seconds) > obs.max_clock_skew_seconds:
        ev.append(_ev("agent", "clock skew", f"{agent.clock_skew_seconds:+.1f}s"))
        return Diagnosis(
            FailureClass.CLOCK_SKEW,
            f"the DPU's clock is {agent.clock_skew_seconds:+.1f}s off the control plane's "
            f"(allowed {obs.max_clock_skew_seconds:g}s)",
            ev,
        )
    return Diagnosis(FailureClass.HEALTHY, "every signal is as expected", ev)


@dataclass(frozen=True)
class HostDiagnosis:
    failure_class: FailureClass
    message: str
    evidence: list[EvidenceItem] = field(default_factory=list)


def dpu_power_for_host(bmc: BMCView | None, host_last_seen: datetime | None) -> str | None:
    """A DPU's power state as evidence about its host: "Off" when it lost power since the host went quiet.

    A slot power cycle is short (seconds) and the DPU boots again on its own, so by the time the
    host agent counts as silent the DPU is usually On again; what remains is that its BMC's last
    boot-progress change is newer than the host's last report: it restarted while the host was down.
    (A BMC clock more than BMC_TIME_SLACK behind makes that a HostReset, which changes nothing for
    the DPU.)
    """
    if bmc is None or not bmc.reachable:
        return None
    if bmc.power_state in ("Off", "PoweringOn"):
        return "Off"
    if (
        host_last_seen is not None
        and bmc.boot_progress_since is not None
        and bmc.boot_progress_since >= host_last_seen - BMC_TIME_SLACK
    ):
        return "Off"
    return bmc.power_state


# Redfish timestamps have whole seconds, and a BMC's clock is not the control plane's: a DPU boot that
# started this close before the host's last report counts as after it.
BMC_TIME_SLACK = timedelta(seconds=2)


def diagnose_host(
    host_silent_seconds: float | None,
    dpu_power_states: list[str | None],
    host_down_after: float = 120.0,
    dpu_names: list[str] | None = None,
) -> HostDiagnosis:
    """A host's own condition from its agent's silence and what its DPUs' BMCs show.

    A soft reset leaves the DPUs running (the boot policy: a host reboot does not reset its
    DPU); a power cycle takes their slot power too; a host silent for longer than a reboot is down.
    `dpu_power_states` are as `dpu_power_for_host` gives them (None: not known).
    """
    if host_silent_seconds is None:
        return HostDiagnosis(FailureClass.HEALTHY, "the host agent reports", [_ev("host-agent", "reports", "arriving")])
    names = dpu_names or [f"dpu {i}" for i in range(len(dpu_power_states))]
    ev = [_ev("host-agent", "reports", f"silent for {host_silent_seconds:.0f}s")]
    ev.extend(
        _ev(f"redfish/{n}", "power", state or "unknown") for n, state in zip(names, dpu_power_states, strict=False)
    )
    if any(state in ("Off", "PoweringOn") for state in dpu_power_states):
        return HostDiagnosis(FailureClass.HOST_POWER_CYCLE, "the host and its DPUs lost power together", ev)
    if host_silent_seconds >= host_down_after:
        return HostDiagnosis(
            FailureClass.HOST_DOWN, f"the host agent has been silent for {host_silent_seconds:.0f}s", ev
        )
    return HostDiagnosis(FailureClass.HOST_RESET, "the host agent is silent while its DPUs run (a host reset?)", ev)


def parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        from datetime import UTC

        parsed = parsed.replace(tzinfo=UTC)
    return parsed
