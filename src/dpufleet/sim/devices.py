"""Plain, typed state of emulated hosts and DPUs, and the factory that makes a DPU of a profile.

Everything the emulator shows (OS files, Redfish resources) is rendered from
these objects, so a fault injector flips one field here and every view of the
device agrees.
"""

from __future__ import annotations

import enum
import random
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from dpufleet.sim.profiles import VendorProfile
from dpufleet.vendors import HostPciSpec

# PCIe bus numbers of the slots where hosts carry DPUs.
SLOT_BUSES: tuple[int, ...] = (0x17, 0x31, 0x4B, 0x65, 0x98, 0xB1, 0xCA, 0xE3)


class PowerState(enum.StrEnum):
    """Redfish Resource.PowerState values the emulator moves through."""

    ON = "On"
    OFF = "Off"
    POWERING_ON = "PoweringOn"
    POWERING_OFF = "PoweringOff"


@dataclass
class SimNic:
    name: str
    mac: str
    speed_mbps: int
    mtu: int = 1500
    operstate: str = "up"


@dataclass(frozen=True)
class HostPciFunction:
    """One PCI function of a DPU as its host enumerates it."""

    bdf: str
    spec: HostPciSpec
    dpu_id: str


@dataclass
class SimDPU:
    """One emulated DPU: its identity, its OS's view and its BMC-visible state."""

    id: str
    profile: VendorProfile
    serial: str
    uuid: str
    hostname: str
    host_id: str | None
    slot: int
    host_bus: int
    nics: list[SimNic]
    bmc_mac: str
    bmc_serial: str
    firmware: dict[str, str]
    power_state: PowerState = PowerState.ON
    boot_progress: str = "OSRunning"
    boot_progress_time: str = "1970-01-01T00:00:00+00:00"
    boot_override_target: str = "None"
    boot_override_enabled: str = "Disabled"
    boot_override_mode: str = "UEFI"
    boot_progress_oem: str | None = None  # BootProgress.OemLastState while LastState is OEM
    http_boot_uri: str | None = None  # Boot.HttpBootUri: what UEFI HTTP boot fetches
    virtual_media_image: str | None = None  # Managers/<id>/VirtualMedia/CD
    virtual_media_inserted: bool = False
    secure_boot_enabled: bool = True
    temperature_celsius: float = 50.0  # at rest: what power state and boot leave (the BMC's sensors add load)
    power_watts: float = 60.0
    load: float = 0.0  # the workload on its cores and accelerators, 0 to 1 (`dpufleet sim load`)
    cpu_stuck: bool = False  # a soft lockup spins a core at full power until the watchdog or a reset
    osroot: Path | None = None
    boot_count: int = 0
    # What faults change (dpufleet.sim.faults); every view renders from these.
    health: str = "OK"  # the system's Status.Health
    os_alive: bool = True  # the OS runs and its agent can report: False while off, booting, hung or panicked
    memory_state: str = "Enabled"  # Memory/DRAM0 Status.State
    memory_health: str = "OK"
    network_partitioned: bool = False  # the agent's reports do not reach the control plane
    clock_offset_seconds: float = 0.0  # the DPU OS clock minus true time
    post_codes: list[tuple[int, str, str]] = field(default_factory=list)  # (boot, code, description), newest last

    def sensor_load(self) -> float:
        """The load the BMC's sensors see: none while off, all of it while a core is stuck."""
        if self.power_state == PowerState.OFF:
            return 0.0
        return 1.0 if self.cpu_stuck else self.load

    def host_functions(self) -> list[HostPciFunction]:
        """The PCI functions the host sees for this DPU (one bus per DPU slot)."""
        functions: list[HostPciFunction] = []
        fn = 0
        for spec in self.profile.host_pci:
            for _ in range(spec.functions):
                bdf = f"0000:{self.host_bus:02x}:00.{fn}"
                functions.append(HostPciFunction(bdf=bdf, spec=spec, dpu_id=self.id))
                fn += 1
        return functions

    @property
    def data_nics(self) -> list[SimNic]:
        port_names = {p.name for p in self.profile.ports}
        return [nic for nic in self.nics if nic.name in port_names]


@dataclass(frozen=True)
class HostModel:
    vendor: str
    product: str
    cpu_model: str
    cpu_count: int
    memory_mib: int


HOST_MODELS: tuple[HostModel, ...] = (
    HostModel("Dell Inc.", "PowerEdge R760", "Intel(R) Xeon(R) Gold 6430", 64, 524288),
    HostModel("Supermicro", "SYS-221H-TNR", "Intel(R) Xeon(R) Platinum 8468", 96, 1048576),
    HostModel("HPE", "ProLiant DL385 Gen11", "AMD EPYC 9454 48-Core Processor", 96, 786432),
    HostModel("Lenovo", "ThinkSystem SR650 V3", "Intel(R) Xeon(R) Gold 6448Y", 64, 524288),
)


@dataclass
class SimHost:
    """A server carrying one or more DPUs in its PCIe slots."""

    id: str
    serial: str
    uuid: str
    model: HostModel
    dpus: list[SimDPU] = field(default_factory=list)
    osroot: Path | None = None
    os_alive: bool = True  # the host OS runs and its agent can report
    powered: bool = True  # off after its BMC's ForceOff/GracefulShutdown, until its BMC's On
    boot_count: int = 0  # completed reboots (a reset or power cycle that came back up)
    booted_at: float = field(default_factory=time.time)  # when its OS last came up (BootProgress.LastStateTime)


class MacAllocator:
    """Hands out unique MAC addresses per OUI, from a seed-chosen starting point."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._next: dict[str, int] = {}

    def allocate(self, oui: str) -> str:
        if oui not in self._next:
            self._next[oui] = self._rng.randrange(0x010000, 0x800000)
        value = self._next[oui]
        if value > 0xFFFFFF:
            raise RuntimeError(f"MAC space of OUI {oui} exhausted")
        self._next[oui] = value + 1
        return f"{oui}:{value >> 16:02x}:{(value >> 8) & 0xFF:02x}:{value & 0xFF:02x}"


def new_uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def make_dpu(
    profile: VendorProfile,
    *,
    serial: str,
    dpu_id: str,
    host_id: str | None,
    slot: int,
    rng: random.Random,
    macs: MacAllocator,
) -> SimDPU:
    """A DPU of ``profile`` with factory firmware, its NICs' MACs and identity."""
    nics = [SimNic(p.name, macs.allocate(profile.mac_oui), p.speed_gbps * 1000) for p in profile.ports]
    nics.append(SimNic(profile.management_interface, macs.allocate(profile.mac_oui), 1000))
    return SimDPU(
        id=dpu_id,
        profile=profile,
        serial=serial,
        uuid=new_uuid(rng),
        hostname=dpu_id,
        host_id=host_id,
        slot=slot,
        host_bus=SLOT_BUSES[slot % len(SLOT_BUSES)],
        nics=nics,
        bmc_mac=macs.allocate(profile.bmc.mac_oui),
        bmc_serial=serial,
        firmware=dict(profile.factory_firmware),
        temperature_celsius=profile.thermal.idle_celsius,
        power_watts=profile.thermal.idle_watts,
    )
