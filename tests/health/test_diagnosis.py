"""Every failure class of docs/faults.md from synthetic evidence, and the pairs that look alike."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dpufleet.api.kinds import FailureClass, RemediationAction, RemediationStep, default_spec
from dpufleet.drivers.redfish.events import LogEntry
from dpufleet.health.controller import HealthConfig
from dpufleet.health.diagnosis import diagnose, diagnose_host
from dpufleet.health.evidence import AgentView, BMCView, HostView, MemoryDevice, Observation
from dpufleet.health.policy import Episode, HistoryEntry, plan

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
LAST_BEAT = NOW - timedelta(seconds=60)


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def bmc(**kw: object) -> BMCView:
    base: dict[str, object] = dict(
        reachable=True, power_state="On", boot_progress="OSRunning", boot_progress_since=ago(3600), health="OK"
    )
    base.update(kw)
    return BMCView(**base)  # type: ignore[arg-type]


def log(message: str, seconds_ago: float = 10) -> LogEntry:
    return LogEntry(ago(seconds_ago), message)


SILENT = AgentView(silent=True, last_heartbeat=LAST_BEAT, heartbeat_age=60)
ALIVE = AgentView(silent=False, last_heartbeat=ago(2), heartbeat_age=2)


def obs(b: BMCView | None, agent: AgentView = ALIVE, host: HostView | None = None) -> Observation:
    return Observation(at=NOW, bmc=b, agent=agent, host=host)


CASES = {
    "os-hang": (obs(bmc(logs=[log("HostWatchdogTimer expired")]), SILENT), FailureClass.OS_HANG),
    "agent-partition": (obs(bmc(), SILENT), FailureClass.AGENT_UNREACHABLE),
    "kernel-crash": (
        obs(bmc(boot_progress="OSBootStarted", health="Critical", logs=[log("Kernel panic - not syncing")]), SILENT),
        FailureClass.KERNEL_CRASH,
    ),
    "nic-crash": (
        obs(bmc(health="Critical", logs=[log("NIC firmware fatal error")]), AgentView(False, ago(2), 2, ["p0", "p1"])),
        FailureClass.NIC_FIRMWARE_CRASH,
    ),
    "power-loss": (
        obs(bmc(power_state="Off", boot_progress="None", logs=[log("AC lost")]), SILENT, HostView("h", silent=False)),
        FailureClass.POWER_LOSS,
    ),
    "host-power-cycle": (
        obs(bmc(power_state="Off", boot_progress="None"), SILENT, HostView("h", silent=True)),
        FailureClass.HOST_POWER_CYCLE,
    ),
    "bmc-crash": (obs(BMCView(reachable=False, error="connection refused")), FailureClass.BMC_DOWN),
    "bmc-hung": (obs(BMCView(reachable=True, hung=True)), FailureClass.BMC_DOWN),
    "pcie-aer": (
        obs(
            bmc(logs=[log("PCIe uncorrectable error")]), ALIVE, HostView("h", False, aer_uncorrectable=["0000:3b:00.0"])
        ),
        FailureClass.PCIE_ERROR,
    ),
    "corrupted-flash": (
        obs(bmc(boot_progress="OEM", boot_progress_oem="BootFailed: DPU_OS slot A", health="Warning"), SILENT),
        FailureClass.CORRUPTED_FLASH,
    ),
    "dimm-failure": (
        obs(
            bmc(
                boot_progress="MemoryInitializationStarted",
                health="Critical",
                memory=[MemoryDevice("DIMM0", "Absent", "Critical")],
            ),
            SILENT,
        ),
        FailureClass.MEMORY_FAILURE,
    ),
    "disk-full": (obs(bmc(), AgentView(False, ago(2), 2, root_used_percent=100.0)), FailureClass.DISK_FULL),
    "clock-skew": (obs(bmc(), AgentView(False, ago(2), 2, clock_skew_seconds=-42.0)), FailureClass.CLOCK_SKEW),
    "healthy": (obs(bmc()), FailureClass.HEALTHY),
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_each_fault_is_diagnosed(kind: str) -> None:
    observation, expected = CASES[kind]
    result = diagnose(observation)
    assert result.failure_class == expected, result
    assert result.evidence  # always says what it rests on


def test_os_hang_needs_a_watchdog_entry_after_the_last_heartbeat() -> None:
    stale = obs(bmc(logs=[log("HostWatchdogTimer expired", seconds_ago=300)]), SILENT)
    assert diagnose(stale).failure_class == FailureClass.AGENT_UNREACHABLE


def test_bmc_down_vs_power_loss() -> None:
    assert diagnose(obs(BMCView(reachable=False), SILENT)).failure_class == FailureClass.BMC_DOWN
    assert "may be down as well" in diagnose(obs(BMCView(reachable=False), SILENT)).message
    assert diagnose(obs(bmc(power_state="Off"), SILENT)).failure_class == FailureClass.POWER_LOSS


def test_an_old_panic_does_not_haunt_a_recovered_dpu() -> None:
    assert diagnose(obs(bmc(logs=[log("Kernel panic")]))).failure_class == FailureClass.HEALTHY
    after_reset = Observation(
        at=NOW,
        bmc=bmc(boot_progress="OSBootStarted", boot_progress_since=ago(1), logs=[log("Kernel panic", 30)]),
        agent=SILENT,
        logs_after=ago(20),
    )
    assert diagnose(after_reset).transient  # booting after the reset: not the old panic


def test_a_booting_dpu_is_transient() -> None:
    result = diagnose(obs(bmc(boot_progress="OSBootStarted", boot_progress_since=ago(1)), SILENT))
    assert result.transient and not result.healthy


def test_host_classes() -> None:
    assert diagnose_host(None, ["On"]).failure_class == FailureClass.HEALTHY
    assert diagnose_host(20, ["On"]).failure_class == FailureClass.HOST_RESET
    assert diagnose_host(600, ["On"]).failure_class == FailureClass.HOST_DOWN
    assert diagnose_host(20, ["Off"]).failure_class == FailureClass.HOST_POWER_CYCLE


def test_rate_limit_escalates() -> None:
    steps = [
        RemediationStep(action=RemediationAction.REBOOT, maxPerHour=2),
        RemediationStep(action=RemediationAction.POWER_CYCLE, after=30),
    ]
    history = [
        HistoryEntry(
            time=(NOW - timedelta(minutes=m)).isoformat(), failureClass="OSHang", action="reboot", result="Succeeded"
        )
        for m in (10, 40)
    ]
    episode = Episode(failureClass="OSHang", since=NOW.isoformat())
    first = plan(steps, episode, history, NOW)
    assert first.step is None and first.wait_seconds == 30 and first.skipped[0][1].action == "reboot"
    assert plan(steps, episode, history[:1], NOW).step == steps[0]
    assert plan(steps, episode, history, NOW + timedelta(seconds=31)).step == steps[1]


def test_default_policy_covers_every_class() -> None:
    classes = {r.failureClass for r in default_spec().rules}
    assert classes == {str(c) for c in FailureClass} - {"Healthy"}


def test_a_dpu_its_bmc_shows_booting_is_never_healthy_even_with_a_fresh_heartbeat() -> None:
    """Right after a reset the agent's last heartbeat is still within the silence window: the BMC's
    BootProgress decides. (A kernel-crash loop was once declared recovered in that window.)"""
    for stage in ("SystemHardwareInitializationComplete", "OSBootStarted", "MemoryInitializationStarted"):
        result = diagnose(obs(bmc(power_state="PoweringOn", boot_progress=stage, boot_progress_since=ago(1))))
        assert result.transient and not result.healthy, (stage, result)
    assert diagnose(obs(bmc(boot_progress=None))).healthy, "a BMC without BootProgress is judged on the rest"


def test_a_dpu_off_while_its_host_reports_is_a_power_loss_only_after_the_hosts_silence_window() -> None:
    def off(seconds: float, host_silent: bool) -> Observation:
        b = bmc(power_state="Off", boot_progress="None", boot_progress_since=ago(seconds), logs=[log("AC lost", 1)])
        o = obs(b, SILENT, HostView("h", silent=host_silent))
        o.power_off_grace_seconds = 30.0
        return o

    early = diagnose(off(5, host_silent=False))
    assert early.transient and not early.healthy, "could still be its host's power cycle"
    assert diagnose(off(45, host_silent=False)).failure_class == FailureClass.POWER_LOSS
    assert diagnose(off(5, host_silent=True)).failure_class == FailureClass.HOST_POWER_CYCLE
    no_host = Observation(
        at=NOW, bmc=bmc(power_state="Off", boot_progress="None"), agent=SILENT, power_off_grace_seconds=30
    )
    assert diagnose(no_host).failure_class == FailureClass.POWER_LOSS, "nothing to wait for without a known host"


def test_the_poll_budget_spaces_visits_out_only_past_a_thousand_dpus() -> None:
    config = HealthConfig()  # 10 s, at most 100 BMC visits a second
    assert config.poll_interval(1) == config.poll_interval(1000) == 10.0
    assert config.poll_interval(10_000) == 100.0, "10,000 DPUs at 100 visits a second"
    assert HealthConfig(poll_seconds=2.0, max_polls_per_second=50).poll_interval(200) == 4.0
