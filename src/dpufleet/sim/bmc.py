"""State and behaviour of an emulated DPU BMC.

A :class:`SimBMC` owns its DPU's management-plane state (accounts, sessions,
tasks, the event log) and performs the slow things a BMC does -- power
transitions, firmware updates, its own reboot -- as asyncio tasks on the
serving event loop, never as blocking sleeps. The HTTP side lives in
:mod:`dpufleet.sim.redfish` (above this module: the BMC's state imports none of its views),
the network installer and the A/B slots in :mod:`dpufleet.sim.installer` (below it).
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlparse

from dpufleet.sim.clock import BmcTimings, Deadlines, utcnow_iso
from dpufleet.sim.devices import PowerState, SimDPU
from dpufleet.sim.installer import SlotBoot, boot_slots, run_installer, version_from_image
from dpufleet.sim.messages import RedfishError, message, message_id, render
from dpufleet.sim.osroot import boot_kernel, refresh_dpu_firmware_files, refresh_dpu_nic_files

SYSTEM_ID = "DPU"
MANAGER_ID = "BMC"
CHASSIS_ID = "Card1"

RESET_TYPES: tuple[str, ...] = (
    "On",
    "ForceOff",
    "GracefulShutdown",
    "GracefulRestart",
    "ForceRestart",
    "PowerCycle",
)
MANAGER_RESET_TYPES: tuple[str, ...] = ("GracefulRestart", "ForceRestart")
BOOT_TARGETS: tuple[str, ...] = ("None", "Pxe", "Cd", "UefiHttp", "UefiShell", "Hdd", "BiosSetup")
BOOT_ENABLED: tuple[str, ...] = ("Disabled", "Once", "Continuous")
ROLES: dict[str, tuple[str, ...]] = {
    "Administrator": ("Login", "ConfigureManager", "ConfigureUsers", "ConfigureSelf", "ConfigureComponents"),
    "Operator": ("Login", "ConfigureSelf", "ConfigureComponents"),
    "ReadOnly": ("Login", "ConfigureSelf"),
}


@dataclass(frozen=True)
class BmcLimits:
    """Request handling of the BMC's web server.

    ``latency_seconds`` is added to every request (a real BlueField-3 BMC
    averages 0.29 s); beyond ``max_concurrent`` in-flight requests the BMC
    answers 503, or queues the request when ``queue_when_busy``.
    """

    latency_seconds: float = 0.0
    max_concurrent: int | None = None
    queue_when_busy: bool = False
    max_sessions: int = 64
    session_timeout_seconds: int = 1800


@dataclass
class SimAccount:
    id: str
    username: str
    password: str
    role: str = "Administrator"
    enabled: bool = True


@dataclass
class SimSession:
    id: str
    token: str
    username: str
    created: str
    last_used: float


class TaskState(enum.StrEnum):
    NEW = "New"
    RUNNING = "Running"
    COMPLETED = "Completed"
    EXCEPTION = "Exception"


@dataclass
class SimTask:
    id: str
    name: str
    start_time: str
    state: TaskState = TaskState.NEW
    status: str = "OK"
    percent: int = 0
    end_time: str | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class SimLogEntry:
    id: str
    created: str
    severity: str
    message: str
    message_id: str
    message_args: list[str]


@dataclass
class SimSubscription:
    """An EventService subscription (EventDestination): where the BMC POSTs its events."""

    id: str
    destination: str
    context: str | None
    registry_prefixes: list[str]
    created: str
    delivered: int = 0
    failed: int = 0


EventSender = Callable[["SimBMC", SimSubscription, SimLogEntry, str], Coroutine[Any, Any, None]]


class BootHooks(Protocol):
    """What fault injection (dpufleet.sim.faults) adds to a power sequence."""

    def on_power_off(self, bmc: SimBMC) -> None: ...

    def on_power_on(self, bmc: SimBMC) -> None: ...

    async def post(self, bmc: SimBMC) -> bool:
        """Memory initialisation during POST; False: POST failed, the boot stops here."""
        ...

    async def os_boot(self, bmc: SimBMC) -> bool:
        """The OS is booting; False: it did not come up (this boot ends here)."""
        ...


@dataclass
class SimBMC:
    """One emulated BMC managing one DPU."""

    id: str
    dpu: SimDPU
    accounts: dict[str, SimAccount]
    uuid: str
    timings: BmcTimings = field(default_factory=BmcTimings)
    limits: BmcLimits = field(default_factory=BmcLimits)
    sessions: dict[str, SimSession] = field(default_factory=dict)
    tasks: dict[str, SimTask] = field(default_factory=dict)
    sel: list[SimLogEntry] = field(default_factory=list)
    unavailable_until: float = 0.0
    in_flight: int = 0
    requests_served: int = 0
    loop: asyncio.AbstractEventLoop | None = None  # the event loop serving this BMC (set by its Redfish app)
    requests_by_path: Counter[str] = field(default_factory=Counter)  # "GET /Systems/x": how often (benchmarks)
    # Fault injection hooks: a failing update target, a stuck power transition.
    fail_updates: bool = False
    corrupt_next_slot: bool = False  # the slot the next boot tries is found corrupt (a bad flash page)
    installer_failures: list[str] = field(default_factory=list)  # why network installs failed, newest last
    slot_boots: list[SlotBoot] = field(default_factory=list)  # outcomes of A/B boots, newest last
    crashed: bool = False  # the BMC itself is dead: its HTTP service answers nothing (fault bmc-crash)
    boot_hooks: BootHooks | None = None
    subscriptions: dict[str, SimSubscription] = field(default_factory=dict)
    # How an event reaches a subscriber: set by the EventService that took the subscription
    # (dpufleet.sim.redfish.events), so this state needs no HTTP client of its own.
    event_sender: EventSender | None = None
    events_sent: int = 0
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _power_job: asyncio.Task[None] | None = None
    _jobs: set[asyncio.Task[None]] = field(default_factory=set)
    _slots: asyncio.Semaphore | None = None

    @property
    def firmware_version(self) -> str:
        return self.dpu.firmware[self.dpu.profile.bmc.firmware_id]

    # -- accounts and sessions ------------------------------------------------

    def authenticate(self, username: str, password: str) -> SimAccount | None:
        for account in self.accounts.values():
            if (
                account.enabled
                and secrets.compare_digest(account.username, username)
                and secrets.compare_digest(account.password, password)
            ):
                return account
        return None

    def account_by_name(self, username: str) -> SimAccount | None:
        return next((a for a in self.accounts.values() if a.username == username), None)

    def open_session(self, account: SimAccount) -> SimSession:
        self.expire_sessions()
        if len(self.sessions) >= self.limits.max_sessions:
            raise RedfishError(503, "ServiceTemporarilyUnavailable", 30, headers={"Retry-After": "30"})
        session = SimSession(
            id=secrets.token_hex(8),
            token=secrets.token_urlsafe(24),
            username=account.username,
            created=utcnow_iso(),
            last_used=time.monotonic(),
        )
        self.sessions[session.id] = session
        return session

    def session_for_token(self, token: str) -> SimSession | None:
        self.expire_sessions()
        for session in self.sessions.values():
            if secrets.compare_digest(session.token, token):
                session.last_used = time.monotonic()
                return session
        return None

    def expire_sessions(self) -> None:
        deadline = time.monotonic() - self.limits.session_timeout_seconds
        for session_id in [s.id for s in self.sessions.values() if s.last_used < deadline]:
            del self.sessions[session_id]

    # -- event log ------------------------------------------------------------

    def log(self, key: str, *args: object, origin: str | None = None) -> SimLogEntry:
        """Append a SEL entry and send it as an event to the EventService's subscribers."""
        info = message(key, *args)
        entry = SimLogEntry(
            id=str(len(self.sel) + 1),
            created=utcnow_iso(),
            severity=info["MessageSeverity"],
            message=render(key, *args),
            message_id=message_id(key),
            message_args=[str(a) for a in args],
        )
        self.sel.append(entry)
        self.publish(entry, origin or f"Systems/{SYSTEM_ID}")
        return entry

    def post_code(self, code: str, description: str) -> None:
        """Record a POST code of the current boot (Systems/<id>/LogServices/PostCodes)."""
        self.dpu.post_codes.append((self.dpu.boot_count + 1, code, description))
        del self.dpu.post_codes[:-500]

    def publish(self, entry: SimLogEntry, origin: str) -> None:
        """POST the entry as a Redfish Event to every subscriber (fire and forget; a dead BMC sends nothing)."""
        if not self.subscriptions or self.crashed:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # logged from another thread (a test, a fault): sent from the BMC's own loop
            if self.loop is not None and not self.loop.is_closed():
                self.loop.call_soon_threadsafe(self.publish, entry, origin)
            return
        if self.event_sender is None:
            return
        for sub in list(self.subscriptions.values()):
            prefix = entry.message_id.split(".", 1)[0]
            if sub.registry_prefixes and prefix not in sub.registry_prefixes:
                continue
            self._spawn(self.event_sender(self, sub, entry, origin))

    # -- background jobs ------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        job = asyncio.get_running_loop().create_task(coro)
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)
        return job

    def set_limits(self, limits: BmcLimits) -> None:
        """Change latency/concurrency at run time (tests and fault injection)."""
        self.limits = limits
        self._slots = None

    def set_boot_progress(self, stage: str, oem: str | None = None) -> None:
        self.dpu.boot_progress = stage
        self.dpu.boot_progress_oem = oem if stage == "OEM" else None
        self.dpu.boot_progress_time = utcnow_iso()

    def request_slots(self) -> asyncio.Semaphore | None:
        if self.limits.max_concurrent is None:
            return None
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.limits.max_concurrent)
        return self._slots

    async def shutdown(self) -> None:
        """Cancel the BMC's background jobs (used when a fleet stops)."""
        jobs = list(self._jobs)
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)

    # -- power ----------------------------------------------------------------

    def reset_system(self, reset_type: str) -> None:
        """Start a ComputerSystem.Reset; the state changes over emulated time."""
        if reset_type not in RESET_TYPES:
            raise RedfishError(400, "ActionParameterValueNotInList", reset_type, "ResetType", "ComputerSystem.Reset")
        state = self.dpu.power_state
        if reset_type == "On" and state in (PowerState.ON, PowerState.POWERING_ON):
            return
        if reset_type in ("ForceOff", "GracefulShutdown") and state == PowerState.OFF:
            return
        if self._power_job is not None and not self._power_job.done():
            self._power_job.cancel()
        self._power_job = self._spawn(self._power_sequence(reset_type))

    async def _power_sequence(self, reset_type: str) -> None:
        dpu = self.dpu
        name = f"{self.dpu.id} system"
        if reset_type in ("ForceOff", "ForceRestart", "PowerCycle"):
            self._powered_off(name)
        elif reset_type in ("GracefulShutdown", "GracefulRestart") and dpu.power_state != PowerState.OFF:
            dpu.power_state = PowerState.POWERING_OFF
            self.log("ResourcePoweringOff", name)
            await asyncio.sleep(self.timings.scaled(self.timings.power_off_seconds))
            self._powered_off(name)
        if reset_type in ("ForceOff", "GracefulShutdown"):
            return
        if reset_type == "PowerCycle":
            await asyncio.sleep(self.timings.scaled(1.0))
        await self._power_on(name)

    def _powered_off(self, name: str) -> None:
        dpu = self.dpu
        dpu.power_state = PowerState.OFF
        dpu.os_alive = False
        self.set_boot_progress("None")
        dpu.power_watts = 0.0
        dpu.temperature_celsius = 30.0
        for nic in dpu.nics:
            nic.operstate = "down"
        refresh_dpu_nic_files(dpu)
        if self.boot_hooks is not None:
            self.boot_hooks.on_power_off(self)
        self.log("ResourcePoweredOff", name)

    def power_off_now(self, name: str) -> None:
        """The DPU is off at once (a hardware reset from another channel than this BMC, e.g. rshim)."""
        self._powered_off(name)

    async def boot_os(self, name: str) -> None:
        """Power on and boot as after a reset (run as the power job: see `set_power_job`)."""
        await self._power_on(name)

    def cancel_power_job(self) -> None:
        if self._power_job is not None and not self._power_job.done():
            self._power_job.cancel()
        self._power_job = None

    def set_power_job(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as the power sequence (a later reset cancels it)."""
        self.cancel_power_job()
        self._power_job = self._spawn(coro)

    def cut_power(self, name: str) -> None:
        """The DPU loses power at once (no graceful shutdown): any power sequence stops."""
        if self._power_job is not None and not self._power_job.done():
            self._power_job.cancel()
        self._power_job = None
        self._powered_off(name)

    async def _power_on(self, name: str) -> None:
        dpu = self.dpu
        dpu.power_state = PowerState.POWERING_ON
        dpu.os_alive = False
        dpu.power_watts = dpu.profile.thermal.idle_watts * 0.6
        if self.boot_hooks is not None:
            self.boot_hooks.on_power_on(self)
        self.log("ResourcePoweringOn", name)
        boot = self.timings.scaled(self.timings.power_on_seconds)
        clock = Deadlines(boot / 3)
        self.set_boot_progress("MemoryInitializationStarted")
        self.post_code("0x2B", "Memory initialization")
        if self.boot_hooks is not None and not await self.boot_hooks.post(self):
            return
        clock.restart()  # a hook may have held POST
        self.set_boot_progress("SystemHardwareInitializationComplete")
        self.post_code("0x4F", "DXE IPL started")
        await clock.next()
        source = self._network_boot_source()
        if source is not None:
            await run_installer(self, *source)
            clock.restart()
        self.set_boot_progress("SetupEntered")
        await clock.next()
        self.set_boot_progress("OSBootStarted")
        await clock.next()
        await self._boot_slot(boot)
        if self.boot_hooks is not None and not await self.boot_hooks.os_boot(self):
            return
        boot_kernel(dpu)  # the kernel's command line, /proc/sys and hugepages as a boot leaves them
        dpu.power_state = PowerState.ON
        self.set_boot_progress("OSRunning")
        dpu.boot_count += 1
        dpu.os_alive = True
        dpu.power_watts = dpu.profile.thermal.idle_watts
        dpu.temperature_celsius = dpu.profile.thermal.idle_celsius
        for nic in dpu.nics:
            nic.operstate = "up"
        refresh_dpu_nic_files(dpu)
        if dpu.boot_override_enabled == "Once":
            dpu.boot_override_enabled = "Disabled"
            dpu.boot_override_target = "None"
        self.log("ResourcePoweredOn", name)

    def _network_boot_source(self) -> tuple[str, str] | None:
        """(URI, source) when the one-time override boots an installer: UEFI HTTP or virtual media."""
        dpu = self.dpu
        if dpu.boot_override_enabled == "Disabled":
            return None
        if dpu.boot_override_target == "UefiHttp" and dpu.http_boot_uri:
            return dpu.http_boot_uri, "UefiHttp"
        if dpu.boot_override_target == "Cd" and dpu.virtual_media_inserted and dpu.virtual_media_image:
            return dpu.virtual_media_image, "Cd"
        return None

    async def _boot_slot(self, boot: float) -> None:
        """The bootloader tries the next A/B slot; a slot that does not boot costs a watchdog period."""
        outcome = boot_slots(self.dpu, corrupt_next=self.corrupt_next_slot, at=utcnow_iso())
        if outcome is None:
            return
        self.slot_boots.append(outcome)
        if outcome.ok:
            return
        self.set_boot_progress("OEM", f"SlotBootFailed: {outcome.reason}")
        await asyncio.sleep(self.timings.scaled(self.timings.installer_watchdog_seconds))
        self.set_boot_progress("OSBootStarted")
        await asyncio.sleep(boot / 3)

    # -- the BMC itself -------------------------------------------------------

    def reset_manager(self, reset_type: str) -> None:
        if reset_type not in MANAGER_RESET_TYPES:
            raise RedfishError(400, "ActionParameterValueNotInList", reset_type, "ResetType", "Manager.Reset")
        self.sessions.clear()
        self.unavailable_until = time.monotonic() + self.timings.scaled(self.timings.bmc_restart_seconds)

    def available(self) -> bool:
        return not self.crashed and time.monotonic() >= self.unavailable_until

    # -- firmware -------------------------------------------------------------

    def simple_update(self, image_uri: str, targets: list[str]) -> SimTask:
        """Start UpdateService.SimpleUpdate of ``targets`` (firmware ids) from ``image_uri``.

        The new version is read from the image file name: ``<id>-<version>.<ext>``
        or ``<version>.<ext>`` (e.g. ``DPU_NIC-32.44.1000.bin``).
        """
        parsed = urlparse(image_uri)
        if parsed.scheme not in ("http", "https", "ftp", "sftp", "nfs", "scp", "tftp") or not parsed.path:
            raise RedfishError(
                400, "ActionParameterValueFormatError", image_uri, "ImageURI", "UpdateService.SimpleUpdate"
            )
        for target in targets:
            spec = next((fw for fw in self.dpu.profile.firmware if fw.id == target), None)
            if spec is None or not spec.updateable:
                raise RedfishError(
                    400, "ActionParameterValueNotInList", target, "Targets", "UpdateService.SimpleUpdate"
                )
        busy = any(t.state in (TaskState.NEW, TaskState.RUNNING) for t in self.tasks.values())
        if busy:
            raise RedfishError(409, "ResourceInUse")
        task = SimTask(id=str(next(self._ids)), name=f"SimpleUpdate {image_uri}", start_time=utcnow_iso())
        self.tasks[task.id] = task
        self._spawn(self._run_update(task, image_uri, targets))
        return task

    def default_update_target(self) -> str:
        os_fw = self.dpu.profile.firmware_of_kind("os")
        return os_fw.id if os_fw else self.dpu.profile.firmware[0].id

    async def _run_update(self, task: SimTask, image_uri: str, targets: list[str]) -> None:
        task.state = TaskState.RUNNING
        task.messages.append(message("UpdateInProgress"))
        steps = 10
        clock = Deadlines(self.timings.scaled(self.timings.update_seconds) / steps)
        for step in range(1, steps + 1):
            await clock.next()
            task.percent = step * 100 // steps
            if step == steps // 2:
                for target in targets:
                    task.messages.append(message("InstallingOnComponent", image_uri, target))
        task.end_time = utcnow_iso()
        if self.fail_updates:
            task.state = TaskState.EXCEPTION
            task.status = "Critical"
            for target in targets:
                task.messages.append(message("ApplyFailed", image_uri, target))
                self.log("ApplyFailed", image_uri, target)
            return
        for target in targets:
            self.dpu.firmware[target] = version_from_image(image_uri, target)
            task.messages.append(message("UpdateSuccessful", target, image_uri))
            self.log("UpdateSuccessful", target, image_uri)
        refresh_dpu_firmware_files(self.dpu)
        task.state = TaskState.COMPLETED


def new_bmc(
    bmc_id: str,
    dpu: SimDPU,
    credentials: dict[str, str],
    *,
    seed_uuid: str | None = None,
    timings: BmcTimings | None = None,
    limits: BmcLimits | None = None,
) -> SimBMC:
    """A BMC for ``dpu`` with the given ``{username: password}`` administrator accounts.

    There are no default credentials: at least one account must be given.
    """
    if not credentials:
        raise ValueError("a BMC needs at least one account; there are no default credentials")
    accounts = {
        str(index): SimAccount(id=str(index), username=user, password=password)
        for index, (user, password) in enumerate(credentials.items(), start=1)
    }
    return SimBMC(
        id=bmc_id,
        dpu=dpu,
        accounts=accounts,
        uuid=seed_uuid or str(uuid.uuid4()),
        timings=timings
        or BmcTimings(power_on_seconds=dpu.profile.bmc.boot_seconds, bmc_restart_seconds=dpu.profile.bmc.reset_seconds),
        limits=limits or BmcLimits(),
    )
