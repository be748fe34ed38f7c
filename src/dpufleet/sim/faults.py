"""Fault injection: make an emulated DPU (or its host, or its BMC) fail the way hardware does.

Each :class:`FaultKind` changes only device state the emulator already renders -- Redfish
resources, the SEL and POST codes, the OS root files the agents read, whether an agent
can report -- so the control plane sees exactly what docs/faults.md lists, through the
same protocols as on real hardware. Durations are emulated seconds: a fault's own
timings (the OS watchdog, a panic's reboot delay, a host's reboot) are scaled by the
fleet's ``time_scale``; ``duration`` is in real seconds (it is what the operator asks for).

Everything runs on the event loop serving the fleet; :func:`inject` and :func:`clear`
may be called from any thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from dpufleet.sim import osroot
from dpufleet.sim.bmc import SYSTEM_ID, SimBMC
from dpufleet.sim.devices import PowerState, SimDPU, SimHost
from dpufleet.sim.fleet import Fleet
from dpufleet.sim.osroot import bump_aer, refresh_dpu_firmware_files, refresh_dpu_nic_files, write_dpu_filesystems


class FaultKind(enum.StrEnum):
    KERNEL_CRASH = "kernel-crash"
    OS_HANG = "os-hang"
    NIC_CRASH = "nic-crash"
    POWER_LOSS = "power-loss"
    HOST_SOFT_RESET = "host-soft-reset"
    HOST_POWER_CYCLE = "host-power-cycle"
    HOST_CRASH = "host-crash"
    BMC_CRASH = "bmc-crash"
    PCIE_AER = "pcie-aer"
    CORRUPTED_FLASH = "corrupted-flash"
    DIMM_FAILURE = "dimm-failure"
    AGENT_PARTITION = "agent-partition"
    DISK_FULL = "disk-full"
    CLOCK_SKEW = "clock-skew"


# What the DPU's kernel writes to its system log as a fault strikes (the words a real kernel uses)
SYSLOG_LINES: dict[FaultKind, tuple[str, str]] = {
    FaultKind.KERNEL_CRASH: ("kernel", "Kernel panic - not syncing: Fatal exception in interrupt"),
    FaultKind.OS_HANG: ("kernel", "watchdog: BUG: soft lockup - CPU#0 stuck for 23s! [kworker/0:1:112]"),
    FaultKind.NIC_CRASH: ("kernel", "0000:03:00.0: NIC firmware fatal error, device's health compromised"),
    FaultKind.PCIE_AER: ("kernel", "pcieport 0000:00:00.0: AER: Corrected error received: 0000:03:00.0"),
    FaultKind.DIMM_FAILURE: ("kernel", "EDAC MC0: 1 UE memory read error on DIMM_A0 (channel:0 slot:0)"),
    FaultKind.DISK_FULL: ("systemd-journald[312]", "Failed to write entry, ignoring: No space left on device"),
}


class FaultError(ValueError):
    """A fault request that cannot be honoured (unknown DPU or kind)."""


# Emulated seconds (scaled by time_scale).
PANIC_REBOOT_SECONDS = 10.0  # kernel.panic=10: the kernel reboots this long after a panic
OS_WATCHDOG_SECONDS = 30.0  # the BMC's watchdog on the DPU OS
HOST_REBOOT_SECONDS = 90.0  # a host soft reset without an explicit duration
HOST_POWER_CYCLE_SECONDS = 120.0  # the host is down this long in a power cycle without a duration
SLOT_POWER_OFF_SECONDS = 5.0  # how long a host power cycle leaves its slots unpowered
CLOCK_SKEW_SECONDS = 300.0  # how far a skewed DPU clock is ahead (real seconds, not scaled)
POST_CODE_MEMORY_FAILED = "0x55"  # AMI/Aptio: memory not installed / initialisation failed

_HEALTH = {"OK": 0, "Warning": 1, "Critical": 2}
# Faults a reset of the DPU cures (a reboot un-hangs an OS and reloads NIC firmware).
_CURED_BY_RESET = {FaultKind.OS_HANG, FaultKind.NIC_CRASH}


@dataclass
class ActiveFault:
    dpu_id: str
    kind: FaultKind
    duration: float | None
    started: str
    started_mono: float
    state: dict[str, Any] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        remaining = None
        if self.duration is not None:
            remaining = round(max(self.duration - (time.monotonic() - self.started_mono), 0.0), 3)
        return {
            "dpu": self.dpu_id,
            "kind": str(self.kind),
            "duration": self.duration,
            "remaining": remaining,
            "started": self.started,
            "phase": self.state.get("phase"),
        }


class FaultInjector:
    """The fleet's active faults and the boot hooks that make them persist across resets."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.active: dict[tuple[str, FaultKind], ActiveFault] = {}
        self.history: list[dict[str, Any]] = []
        self._host_boots: set[asyncio.Task[None]] = set()  # hosts booting after a power on (kept referenced)
        for bmc in fleet.bmcs.values():
            bmc.boot_hooks = self

    # -- naming ----------------------------------------------------------------------------------------

    def resolve(self, name: str) -> SimDPU:
        """A DPU by sim id (host-000-dpu-0), serial, or dpufleet object name (dpu-<serial>)."""
        wanted = name.strip().lower()
        for dpu in self.fleet.dpus:
            if wanted in (dpu.id.lower(), dpu.serial.lower(), f"dpu-{dpu.serial.lower()}"):
                return dpu
        raise FaultError(f"no emulated DPU is named {name!r} (use its sim id, serial or dpu-<serial>)")

    def bmc(self, dpu: SimDPU) -> SimBMC:
        return self.fleet.bmcs[dpu.id]

    def host(self, dpu: SimDPU) -> SimHost | None:
        return next((h for h in self.fleet.hosts if h.id == dpu.host_id), None)

    def faults_of(self, dpu: SimDPU) -> list[ActiveFault]:
        return [f for (dpu_id, _), f in self.active.items() if dpu_id == dpu.id]

    def has(self, dpu: SimDPU, kind: FaultKind) -> ActiveFault | None:
        return self.active.get((dpu.id, kind))

    def listing(self) -> list[dict[str, Any]]:
        return [f.describe() for f in self.active.values()]

    # -- inject and clear ------------------------------------------------------------------------------

    def inject(self, name: str, kind: FaultKind | str, duration: float | None = None) -> ActiveFault:
        try:
            kind = FaultKind(kind)
        except ValueError:
            raise FaultError(f"unknown fault kind {kind!r}; kinds: {', '.join(k.value for k in FaultKind)}") from None
        if duration is not None and duration <= 0:
            raise FaultError("duration must be positive")
        dpu = self.resolve(name)
        existing = self.active.get((dpu.id, kind))
        if existing is not None:
            self._end(existing, cured=False)
        fault = ActiveFault(dpu.id, kind, duration, datetime.now(UTC).isoformat(timespec="seconds"), time.monotonic())
        self.active[(dpu.id, kind)] = fault
        line = SYSLOG_LINES.get(kind)
        if line is not None and dpu.os_alive:  # what the DPU's own kernel logs as the fault strikes
            osroot.syslog(dpu, *line)
        getattr(self, "_start_" + kind.name.lower())(dpu, fault)
        if duration is not None:
            fault.tasks.append(asyncio.get_running_loop().create_task(self._expire(fault, duration)))
        self._refresh_health(dpu)
        return fault

    def clear(self, name: str, kind: FaultKind | str | None = None) -> list[ActiveFault]:
        dpu = self.resolve(name)
        kinds = [FaultKind(kind)] if kind is not None else [k for (d, k) in list(self.active) if d == dpu.id]
        cleared = []
        for k in kinds:
            fault = self.active.get((dpu.id, k))
            if fault is not None:
                self._end(fault, cured=False)
                cleared.append(fault)
        return cleared

    def clear_all(self) -> None:
        for fault in list(self.active.values()):
            self._end(fault, cured=False)

    async def _expire(self, fault: ActiveFault, duration: float) -> None:
        await asyncio.sleep(duration)
        if self.active.get((fault.dpu_id, fault.kind)) is fault:
            self._end(fault, cured=False, expired=True)

    def _end(self, fault: ActiveFault, *, cured: bool, expired: bool = False) -> None:
        """Remove a fault and undo what it did; ``cured``: a reset of the DPU ended it."""
        if self.active.get((fault.dpu_id, fault.kind)) is not fault:
            return
        del self.active[(fault.dpu_id, fault.kind)]
        current = asyncio.current_task() if _loop_running() else None
        for task in fault.tasks:
            if task is not current:
                task.cancel()
        dpu = next(d for d in self.fleet.dpus if d.id == fault.dpu_id)
        getattr(self, "_stop_" + fault.kind.name.lower())(dpu, fault, cured)
        how = "cured by a reset" if cured else "expired" if expired else "cleared"
        self.history.append({**fault.describe(), "ended": datetime.now(UTC).isoformat(timespec="seconds"), "how": how})
        del self.history[:-1000]
        self._refresh_health(dpu)

    # -- health ----------------------------------------------------------------------------------------

    def _fault_health(self, fault: ActiveFault) -> str:
        if fault.kind in (FaultKind.KERNEL_CRASH, FaultKind.DIMM_FAILURE):
            return "Critical"
        if fault.kind in (FaultKind.NIC_CRASH, FaultKind.PCIE_AER):
            return "Warning"
        if fault.kind is FaultKind.CORRUPTED_FLASH and fault.state.get("phase") == "golden":
            return "Warning"
        return "OK"

    def _refresh_health(self, dpu: SimDPU) -> None:
        health = max((self._fault_health(f) for f in self.faults_of(dpu)), key=_HEALTH.__getitem__, default="OK")
        if health != dpu.health:
            dpu.health = health
            self.bmc(dpu).log(f"ResourceStatusChanged{health}", SYSTEM_ID, health)

    # -- boot hooks (SimBMC calls these during its power sequences) ------------------------------------

    def on_power_off(self, bmc: SimBMC) -> None:
        for fault in self.faults_of(bmc.dpu):
            if fault.kind in _CURED_BY_RESET:
                self._end(fault, cured=True)

    def on_power_on(self, bmc: SimBMC) -> None:
        power = self.has(bmc.dpu, FaultKind.POWER_LOSS)
        if power is not None:  # someone powered it on: the power is back
            self._end(power, cured=True)
        flash = self.has(bmc.dpu, FaultKind.CORRUPTED_FLASH)
        if flash is not None and flash.state.get("phase") == "pending":
            flash.state["phase"] = "armed"  # this reset reads the corrupt flash

    async def post(self, bmc: SimBMC) -> bool:
        if self.has(bmc.dpu, FaultKind.DIMM_FAILURE) is None:
            return True
        bmc.post_code(POST_CODE_MEMORY_FAILED, "ERROR: memory initialization failed (DIMM DRAM0 not usable)")
        bmc.dpu.power_state = PowerState.ON  # powered, but POST hangs: BootProgress stays MemoryInitializationStarted
        return False

    async def os_boot(self, bmc: SimBMC) -> bool:
        dpu = bmc.dpu
        flash = self.has(dpu, FaultKind.CORRUPTED_FLASH)
        if flash is not None and flash.state.get("phase") == "armed":
            await self._boot_golden(bmc, flash)
        if self.has(dpu, FaultKind.KERNEL_CRASH) is not None:
            dpu.power_state = PowerState.ON
            self._panic(bmc)
            await asyncio.sleep(bmc.timings.scaled(PANIC_REBOOT_SECONDS))
            bmc.reset_system("ForceRestart")  # the kernel reboots itself; the loop goes on while the fault lasts
            return False
        return True

    # -- the faults ------------------------------------------------------------------------------------

    def _panic(self, bmc: SimBMC) -> None:
        bmc.dpu.os_alive = False
        bmc.log("OperatingSystemCrash")

    def _start_kernel_crash(self, dpu: SimDPU, fault: ActiveFault) -> None:
        bmc = self.bmc(dpu)
        if dpu.power_state != PowerState.ON or not dpu.os_alive:
            return  # not running: the next boot panics (os_boot)
        fault.state["phase"] = "panicked"
        self._panic(bmc)

        async def reboot_after_panic() -> None:
            await asyncio.sleep(bmc.timings.scaled(PANIC_REBOOT_SECONDS))
            bmc.reset_system("ForceRestart")

        bmc.cancel_power_job()
        bmc.set_power_job(reboot_after_panic())

    def _stop_kernel_crash(self, dpu: SimDPU, fault: ActiveFault, cured: bool) -> None:
        pass  # the loop's next boot comes up

    def _start_os_hang(self, dpu: SimDPU, fault: ActiveFault) -> None:
        bmc = self.bmc(dpu)
        dpu.os_alive = False
        dpu.cpu_stuck = dpu.power_state == PowerState.ON  # the locked-up core spins: the SoC heats

        async def watchdog() -> None:
            await asyncio.sleep(bmc.timings.scaled(OS_WATCHDOG_SECONDS))
            if self.has(dpu, FaultKind.OS_HANG) is fault:
                fault.state["phase"] = "watchdog-expired"
                bmc.log("DeviceWatchdogTimeout", SYSTEM_ID)

        fault.tasks.append(asyncio.get_running_loop().create_task(watchdog()))

    def _stop_os_hang(self, dpu: SimDPU, fault: ActiveFault, cured: bool) -> None:
        dpu.cpu_stuck = False
        if not cured and dpu.power_state == PowerState.ON and dpu.boot_progress == "OSRunning":
            dpu.os_alive = True

    def _start_nic_crash(self, dpu: SimDPU, fault: ActiveFault) -> None:
        bmc = self.bmc(dpu)
        for nic in dpu.data_nics:
            nic.operstate = "down"
        refresh_dpu_nic_files(dpu)
        bmc.log("ResourceErrorsDetected", "NetworkInterfaces", "NIC firmware fatal error")
        host = self.host(dpu)
        if host is not None and host.osroot is not None:  # the NIC's PCI functions drop off the host's bus
            stash = host.osroot / "run/dpufleet-sim/removed-pci"
            removed = []
            for function in dpu.host_functions():
                if function.spec.role != "nic":
                    continue
                src = host.osroot / "sys/bus/pci/devices" / function.bdf
                if src.exists():
                    stash.mkdir(parents=True, exist_ok=True)
                    shutil.move(str(src), str(stash / function.bdf))
                    osroot.touched(host.osroot)
                    removed.append(function.bdf)
            fault.state["removed"] = removed

    def _stop_nic_crash(self, dpu: SimDPU, fault: ActiveFault, cured: bool) -> None:
        host = self.host(dpu)
        if host is not None and host.osroot is not None:
            stash = host.osroot / "run/dpufleet-sim/removed-pci"
            for bdf in fault.state.get("removed", []):
                src = stash / bdf
                if src.exists():
                    shutil.move(str(src), str(host.osroot / "sys/bus/pci/devices" / bdf))
                    osroot.touched(host.osroot)
        if not cured and dpu.power_state == PowerState.ON and dpu.boot_progress == "OSRunning":
            for nic in dpu.data_nics:
                nic.operstate = "up"
            refresh_dpu_nic_files(dpu)

    def _lose_power(self, dpu: SimDPU, where: str) -> None:
        bmc = self.bmc(dpu)
        bmc.log("LossOfInputPower", where, origin=f"Chassis/{_chassis_id()}")
        bmc.cut_power(f"{dpu.id} system")
        host = self.host(dpu)
        if host is not None and host.osroot is not None:  # the host sees the link go: AER surprise down
            for function in dpu.host_functions():
                bump_aer(host.osroot, function.bdf, "aer_dev_fatal", "SDES")

    def _start_power_loss(self, dpu: SimDPU, fault: ActiveFault) -> None:
        self._lose_power(dpu, "DPU card slot power")

    def _stop_power_loss(self, dpu: SimDPU, fault: ActiveFault, cured: bool) -> None:
        bmc = self.bmc(dpu)
        bmc.log("LineInputPowerRestored", "DPU card slot power", origin=f"Chassis/{_chassis_id()}")
        if not cured and dpu.power_state == PowerState.OFF:  # power back: the power restore policy is AlwaysOn
            bmc.reset_system("On")

    def _host_down(self, dpu: SimDPU, fault: ActiveFault, seconds: float) -> None:
        host = self.host(dpu)
        if host is None:
            raise FaultError(f"{dpu.id} has no host")
        host.os_alive = False
        if fault.duration is None:  # a reset or power cycle ends by itself
            fault.duration = seconds
            fault.tasks.append(asyncio.get_running_loop().create_task(self._expire(fault, seconds)))

    def _host_up(self, dpu: SimDPU) -> None:
        host = self.host(dpu)
        if (
            host is not None
            and host.powered
            and not any(
                f.kind in (FaultKind.HOST_CRASH, FaultKind.HOST_SOFT_RESET, FaultKind.HOST_POWER_CYCLE)
                for d in host.dpus
                for f in self.faults_of(d)
            )
        ):
            if not host.os_alive:
                host.boot_count += 1
                host.booted_at = time.time()
            host.os_alive = True

    def _start_host_soft_reset(self, dpu: SimDPU, fault: ActiveFault) -> None:
        self._host_down(dpu, fault, self.bmc(dpu).timings.scaled(HOST_REBOOT_SECONDS))

    def _stop_host_soft_reset(self, dpu: SimDPU, fault: ActiveFault, cured: bool) -> None:
        self._host_up(dpu)

    def _start_host_power_cycle(self, dpu: SimDPU, fault: ActiveFault) -> None:
        host = self.host(dpu)
        self._host_down(dpu, fault, self.bmc(dpu).timings.scaled(HOST_POWER_CYCLE_SECONDS))
        assert host is not None
        for card in host.dpus:  # every slot of the host loses power, then gets it back
            self._lose_power(card, "host PCIe slot power")
            bmc = self.bmc(card)

            async def restore(bmc: SimBMC = bmc) -> None:
                await asyncio.sleep(bmc.timings.scaled(SLOT_POWER_OFF_SECONDS))
                bmc.log("LineInputPowerRestored", "host PCIe slot power", origin=f"Chassis/{_chassis_id()}")
                bmc.reset_system("On")

            fault.tasks.append(asyncio.get_running_loop().create_task(restore()))

    def _stop_host_power_cycle(self, dpu: SimDPU, fault: ActiveFault, cured: bool) -> None:
        self._host_up(dpu)

    # -- host power through the host's BMC (an operator's action, not a fault) ------------------------------

    def power_off_host(self, host: SimHost) -> None:
        """The host's BMC powers it off: its OS stops and every PCIe slot loses power until power_on_host."""
        if not host.powered:
            return
        host.powered = False
        host.os_alive = False
        for card in host.dpus:
            self._lose_power(card, "host PCIe slot power")

    def power_on_host(self, host: SimHost) -> None:
        """The host's BMC powers it on: the slots get power back (each DPU boots) and the host's OS boots,
        which takes a host reboot's time."""
        if host.powered:
            return
        host.powered = True
        for card in host.dpus:
            bmc = self.bmc(card)
            bmc.log("LineInputPowerRestored", "host PCIe slot power", origin=f"Chassis/{_chassis_id()}")
            bmc.reset_system("On")
        if not host.dpus:
            return
        first, seconds = host.dpus[0], self.bmc(host.dpus[0]).timings.scaled(HOST_REBOOT_SECONDS)

        async def boot() -> None:
            await asyncio.sleep(seconds)
            if host.powered:
                self._host_up(first)

        task = asyncio.get_running_loop().create_task(boot())
        self._host_boots.add(task)
        task.add_done_callback(self._host_boots.discard)

    def _start_host_crash(self, dpu: SimDPU, fault: ActiveFault) -> None:
        host = self.host(dpu)
        if host is None:
            raise FaultError(f"{dpu.id} has no host")
        host.os_alive = False

    def _stop_host_crash(self, dpu: SimDPU, fault: ActiveFault, cured: bool) -> None:
        self._host_up(dpu)

    def _start_bmc_crash(self, dpu: SimDPU, fault: ActiveFault) -> None:
        bmc = self.bmc(dpu)
        bmc.crashed = True
        bmc.sessions.clear()
        server = self.fleet.server
        if server is not None and dpu.id in server.per_bmc:
            fault.tasks.append(asyncio.get_running_loop().create_task(server.close_bmc_port(dpu.id)))

    def _stop_bmc_crash(self, dpu: SimDPU, fault: ActiveFault, cured: bool) -> None:
        bmc = self.bmc(dpu)
        bmc.crashed = False
        bmc.sessions.clear()  # it rebooted: every session is gone
        bmc.log("ManagerResetWatchdogTimer", "BMC", "ForceRestart", origin="Managers/BMC")
        server = self.fleet.server
        if server is not None and dpu.id in server.per_bmc:
            _keep(asyncio.get_running_loop().create_task(server.reopen_bmc_port(dpu.id)))

    def _start_pcie_aer(self, dpu: SimDPU, fault: ActiveFault) -> None:
        functions = dpu.host_functions()
        bdf = functions[0].bdf if functions else "unknown"
        fault.state["bdf"] = bdf
        self.bmc(dpu).log("PCIeUncorrectableError", bdf, origin=f"Chassis/{_chassis_id()}")
        host = self.host(dpu)
        if host is not None and host.osroot is not None and functions:
            bump_aer(host.osroot, bdf, "aer_dev_fatal", "MalfTLP")

    def _stop_pcie_aer(self, dpu: SimDPU, fault: ActiveFault, cured: bool) -> None:
        pass  # AER counters are cumulative, as in the kernel

    def _start_corrupted_flash(self, dpu: SimDPU, fault: ActiveFault) -> None:
        fault.state["phase"] = "pending"  # takes effect at the next reset

    def _stop_corrupted_flash(self, dpu: SimDPU, fault: ActiveFault, cured: bool) -> None:
        pass  # the golden image stays until the DPU is re-flashed

    async def _boot_golden(self, bmc: SimBMC, fault: ActiveFault) -> None:
        dpu = bmc.dpu
        os_fw = dpu.profile.firmware_of_kind("os")
        bmc.set_boot_progress("OEM", "BootFailed: the OS image in flash failed verification")
        bmc.log("DeviceBootTimeout", SYSTEM_ID)
        await asyncio.sleep(bmc.timings.scaled(bmc.timings.installer_watchdog_seconds))
        golden = golden_version(dpu)
        fault.state["phase"] = "golden"
        fault.state["golden"] = golden
        if os_fw is not None:
            dpu.firmware[os_fw.id] = golden
            refresh_dpu_firmware_files(dpu)
        bmc.log("DeviceInRecovery", SYSTEM_ID, f"a corrupt OS image in flash; booting the golden image {golden}")
        self._refresh_health(dpu)
        bmc.set_boot_progress("OSBootStarted")

    def _start_dimm_failure(self, dpu: SimDPU, fault: ActiveFault) -> None:
        bmc = self.bmc(dpu)
        dpu.memory_state = "Absent"
        dpu.memory_health = "Critical"
        bmc.log("MemoryUncorrectableError", "DRAM0", origin=f"Systems/{SYSTEM_ID}/Memory/DRAM0")
        dpu.os_alive = False
        if dpu.power_state != PowerState.OFF:  # the machine check resets the DPU; POST then fails
            bmc.reset_system("ForceRestart")

    def _stop_dimm_failure(self, dpu: SimDPU, fault: ActiveFault, cured: bool) -> None:
        dpu.memory_state = "Enabled"
        dpu.memory_health = "OK"
        if dpu.power_state == PowerState.ON and dpu.boot_progress == "MemoryInitializationStarted":
            self.bmc(dpu).reset_system("ForceRestart")  # the memory is back: the next POST passes

    def _start_agent_partition(self, dpu: SimDPU, fault: ActiveFault) -> None:
        dpu.network_partitioned = True

    def _stop_agent_partition(self, dpu: SimDPU, fault: ActiveFault, cured: bool) -> None:
        dpu.network_partitioned = False

    def _start_disk_full(self, dpu: SimDPU, fault: ActiveFault) -> None:
        write_dpu_filesystems(dpu, full=True)

    def _stop_disk_full(self, dpu: SimDPU, fault: ActiveFault, cured: bool) -> None:
        write_dpu_filesystems(dpu, full=False)

    def _start_clock_skew(self, dpu: SimDPU, fault: ActiveFault) -> None:
        dpu.clock_offset_seconds = CLOCK_SKEW_SECONDS

    def _stop_clock_skew(self, dpu: SimDPU, fault: ActiveFault, cured: bool) -> None:
        dpu.clock_offset_seconds = 0.0


def golden_version(dpu: SimDPU) -> str:
    """The OS version of the DPU's golden (factory) image."""
    os_fw = dpu.profile.firmware_of_kind("os")
    return dpu.profile.factory_firmware[os_fw.id] if os_fw is not None else "golden"


def _chassis_id() -> str:
    from dpufleet.sim.bmc import CHASSIS_ID

    return CHASSIS_ID


_background: set[asyncio.Task[None]] = set()


def _keep(task: asyncio.Task[None]) -> None:
    _background.add(task)
    task.add_done_callback(_background.discard)


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def injector_for(target: Any) -> FaultInjector:
    """The FaultInjector of a Fleet (or of anything carrying one: SimRunning, FleetServer)."""
    fleet = target if isinstance(target, Fleet) else getattr(target, "fleet", None)
    if not isinstance(fleet, Fleet):
        raise TypeError(f"not a fleet: {type(target).__name__}")
    if fleet.faults is None:
        fleet.faults = FaultInjector(fleet)
    injector: FaultInjector = fleet.faults
    return injector


T = TypeVar("T")


def _on_loop(fleet: Fleet, call: Callable[[], T], timeout: float = 10.0) -> T:
    """Run ``call`` on the fleet's event loop (directly when already there)."""
    loop = fleet.loop
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if loop is None or running is loop:
        if running is None:
            raise RuntimeError("the fleet is not being served: fault injection needs its event loop")
        return call()
    future: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        try:
            future.set_result(call())
        except BaseException as exc:
            future.set_exception(exc)

    loop.call_soon_threadsafe(run)
    return future.result(timeout=timeout)


def inject(fleet_or_device: Any, dpu_id: str, kind: FaultKind | str, duration: float | None = None) -> dict[str, Any]:
    """Inject ``kind`` into DPU ``dpu_id`` (sim id, serial or dpu-<serial>); returns the fault's description."""
    injector = injector_for(fleet_or_device)
    return _on_loop(injector.fleet, lambda: injector.inject(dpu_id, kind, duration).describe())


def clear(fleet_or_device: Any, dpu_id: str, kind: FaultKind | str | None = None) -> list[dict[str, Any]]:
    """Clear one fault kind (or all) of a DPU; returns what was cleared."""
    injector = injector_for(fleet_or_device)
    return _on_loop(injector.fleet, lambda: [f.describe() for f in injector.clear(dpu_id, kind)])


def active(fleet_or_device: Any) -> list[dict[str, Any]]:
    injector = injector_for(fleet_or_device)
    return _on_loop(injector.fleet, injector.listing)


def host_root(dpu: SimDPU, fleet: Fleet) -> Path | None:
    host = next((h for h in fleet.hosts if h.id == dpu.host_id), None)
    return host.osroot if host else None
