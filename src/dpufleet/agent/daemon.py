"""The agent loop: inventory the machine, report it, heartbeat, repeat.

Runs on a DPU's Arm cores (role dpu) or on the host (role host, reporting the
PCI functions through which it sees its DPUs). The server's reply sets the
cadence. Failures back off exponentially and never stop the loop.

With a state dir the agent speaks only mTLS to the agent listener: it enrolls on
first start (a one-time token or its IDevID), keeps its key and certificate in
the state dir, and renews before two thirds of the certificate's life have passed.
Without one it uses a bearer token against the API listener (the pre-mTLS protocol,
kept for tests and admin tooling).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from .. import __version__
from ..api.agent import Inventory
from ..api.naming import dpu_name
from ..api.telemetry import TelemetryAssignment
from ..crypto.pki import AgentIdentity
from . import slots
from .bootstrap import ZeroTouch
from .credentials import AgentCredentials, EnrollmentOptions
from .flavor import FlavorConfig, FlavorReconciler
from .host_channel import HostChannelInstaller, has_boot_channels
from .host_relay import DEFAULT_STORE_BYTES, RelayClient
from .installer import SlotInstaller
from .inventory import collect_inventory
from .network import NetworkConfig, NetworkReconciler
from .services import ServiceRuntime, ServicesConfig
from .telemetry.collector import DEFAULT_BUFFER_BYTES, Telemetry

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from .host_relay_server import HostRelay

log = logging.getLogger(__name__)
REPORT_PATH = "/agent/v1/report"


@dataclass
class AgentConfig:
    server: str
    token: str | None
    root: Path = Path("/")
    role: str = "dpu"
    heartbeat_seconds: float = 10.0
    inventory_seconds: float = 300.0
    verify: bool | str = True
    serial: str | None = None  # override what the DMI data says
    state_dir: Path | None = None  # set: enroll and speak mTLS; server is then the agent listener's URL
    enrollment: EnrollmentOptions | None = None
    install_check_seconds: float | None = 10.0  # mTLS, a DPU with A/B slots or a host with rshim: how often to ask
    zero_touch: bool = False  # a DPU with no fleet certificate bootstraps from its DHCP lease (agent/bootstrap.py)
    reboot_command: tuple[str, ...] = ("systemctl", "reboot")  # how zero-touch bootstrap boots the new slot
    network: NetworkConfig | None = None  # mTLS, a DPU with Open vSwitch: program it (agent/network.py)
    services: ServicesConfig | None = None  # mTLS, a DPU with runc: run its services (agent/services.py)
    flavor_seconds: float | None = 10.0  # mTLS, a DPU: check its flavor on the OS this often (agent/flavor.py)
    flavor_refresh_seconds: float = 60.0  # ... and ask the control plane for it this often
    telemetry_dir: Path | None = None  # the telemetry spool (default: <state_dir>/telemetry); None without a state dir
    telemetry_buffer_bytes: int = DEFAULT_BUFFER_BYTES  # the spool's cap while the bus is unreachable
    metrics_listen: tuple[str, int] | None = None  # (host, port) of this agent's own Prometheus endpoint
    # a host agent: serve the host relay for its DPUs here (agent/host_relay.py), fetching artifacts only from
    # these hosts (default: the control plane's), keeping at most relay_store_bytes per DPU
    relay_listen: tuple[str, int] | None = None
    relay_origins: tuple[str, ...] = ()
    relay_store_bytes: int = DEFAULT_STORE_BYTES
    host_relay: str | None = None  # a DPU agent: its host's relay, for artifacts and telemetry when cut off


def report_body(
    config: AgentConfig,
    inventory: Inventory | None,
    serial: str,
    hostname: str | None,
    sent_at: datetime | None = None,
) -> dict[str, object]:
    """One report. ``sentAt`` is the agent's own clock (RFC 3339, UTC): the server compares it with its own."""
    return {
        "serial": serial,
        "role": config.role,
        "agentVersion": __version__,
        "hostname": hostname,
        "sentAt": (sent_at or datetime.now(UTC)).isoformat(timespec="milliseconds"),
        "inventory": inventory.model_dump(mode="json") if inventory is not None else None,
    }


def _refusal(resp: httpx.Response) -> str:
    """The server's reason and message in full (what the operator must fix), else the start of the body."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return f"{body.get('reason') or 'Refused'}: {body['message']}"
    return resp.text[:300]


class Agent:
    def __init__(self, config: AgentConfig, http: httpx.AsyncClient | None = None) -> None:
        self.config = config
        headers = {"Authorization": f"Bearer {config.token}"} if config.token else {}
        self._own = http is None
        self.http = http or httpx.AsyncClient(base_url=config.server, headers=headers, verify=config.verify, timeout=15)
        self._headers = headers
        self.reports_sent = 0
        self.failures = 0
        self.credentials: AgentCredentials | None = None
        self.installer: SlotInstaller | None = None
        self.zero_touch: ZeroTouch | None = None
        self.network: NetworkReconciler | None = None
        self.flavor: FlavorReconciler | None = None
        self.services: ServiceRuntime | None = None
        self.host_services: dict[str, ServiceRuntime] = {}  # a host agent: DPU name -> its host-placed instances
        self._host_service_tasks: list[asyncio.Task[None]] = []
        self.telemetry: Telemetry | None = None
        self.metrics_port: int | None = None  # the agent's Prometheus endpoint, once it serves (--metrics-listen)
        self._metrics_task: asyncio.Task[None] | None = None
        self._metrics_server: WSGIServer | None = None
        self.relay: HostRelay | None = None

    async def aclose(self) -> None:
        await self._stop_metrics()
        if self.relay is not None:
            await self.relay.stop()
        if self._own:
            await self.http.aclose()

    async def secure(self, serial: str) -> None:
        """mTLS mode: enroll or renew if needed, and talk through a client carrying the current certificate."""
        if self.config.state_dir is None:
            return
        if self.credentials is None:
            identity = AgentIdentity(self.config.role, serial)  # type: ignore[arg-type]
            self.credentials = AgentCredentials(
                self.config.state_dir, self.config.server, identity, self.config.enrollment or EnrollmentOptions()
            )
            changed = True
            await self.credentials.ensure()
        else:
            changed = await self.credentials.ensure()
        if changed or self._own is False:
            if self._own:
                await self.http.aclose()
            self.http = httpx.AsyncClient(
                base_url=self.config.server, verify=self.credentials.ssl_context(), timeout=15
            )
            self._own = True
            self._headers = {}

    async def collect(self) -> Inventory:
        return await asyncio.to_thread(collect_inventory, self.config.root)

    def clock(self) -> datetime:
        """This machine's clock (what ``sentAt`` carries)."""
        return datetime.now(UTC)

    def retry_delay(self, failures: int) -> float:
        """Exponential backoff with jitter after ``failures`` failed reports in a row."""
        return min(300.0, 2.0 * 2 ** min(failures, 8)) * (0.5 + random.random() / 2)

    async def send(self, inventory: Inventory | None, serial: str, hostname: str | None) -> dict[str, object]:
        resp = await self.http.post(
            self.config.server.rstrip("/") + REPORT_PATH,
            json=report_body(self.config, inventory, serial, hostname, self.clock()),
            headers=self._headers,
        )
        if resp.status_code >= 400:
            raise RuntimeError(f"the server refused the report: HTTP {resp.status_code} {_refusal(resp)}")
        self.reports_sent += 1
        reply: dict[str, object] = resp.json()
        return reply

    async def reboot(self) -> None:
        """Reboot this machine (zero-touch bootstrap, into the slot it just wrote)."""
        proc = await asyncio.create_subprocess_exec(*self.config.reboot_command)
        if await proc.wait() != 0:
            raise RuntimeError(f"{' '.join(self.config.reboot_command)} failed with exit status {proc.returncode}")

    def machine_alive(self) -> bool:
        """Whether this machine's OS runs (the emulator's machines can be down while the agent object lives)."""
        return True

    def uplink_up(self) -> bool:
        """Whether this machine's network uplink works (the emulator cuts it; a real DPU's socket errors tell)."""
        return True

    def _telemetry(self, reply: dict[str, object], serial: str, stop: asyncio.Event) -> asyncio.Task[None] | None:
        """Apply the reply's telemetry assignment; the telemetry loop's task when this call started it."""
        raw = reply.get("telemetry")
        if raw is None:
            return None
        assignment = TelemetryAssignment.model_validate(raw)
        started = None
        if self.telemetry is None:
            if not assignment.classes:
                return None
            self.telemetry = self.make_telemetry(serial)
            if self.telemetry is None:
                return None
            started = asyncio.create_task(self.telemetry.run(stop))
            if self.config.metrics_listen is not None:
                self._serve_metrics(self.config.metrics_listen, stop)
        self.telemetry.assign(assignment)
        return started

    def make_telemetry(self, serial: str, service_logs: Path | None = None) -> Telemetry | None:
        """The telemetry loop's state for this agent (its spool in the state dir); None without a state dir."""
        directory = self.config.telemetry_dir or (
            self.config.state_dir / "telemetry" if self.config.state_dir is not None else None
        )
        if directory is None:
            log.warning("telemetry asked for, but this agent has no state dir to buffer it in (--state-dir)")
            return None
        services = self.config.services
        if service_logs is None and services is not None:
            service_logs = services.state_dir / "logs"
        return Telemetry(
            self.config.root, serial, directory, self.config.telemetry_buffer_bytes, uplink=self.uplink_up,
            service_logs=service_logs,
            services=lambda: self.services.instance_reports() if self.services is not None else [],
            dataplane=lambda: self.network.dataplane_counters() if self.network is not None else None,
            host_relay=RelayClient(self.config.host_relay, serial) if self.config.host_relay else None,
        )  # fmt: skip

    def _serve_metrics(self, listen: tuple[str, int], stop: asyncio.Event) -> None:
        """This DPU's telemetry at http://HOST:PORT/metrics until the agent stops; a port taken is logged, and
        the agent goes on without it."""
        from .telemetry.exposition import serve

        assert self.telemetry is not None
        try:
            server, _ = serve(self.telemetry, *listen)
        except OSError as exc:
            log.error("--metrics-listen %s:%d: %s; this agent serves no metrics", listen[0], listen[1], exc)
            return
        self.metrics_port = server.server_port
        self._metrics_server = server
        log.info("telemetry for Prometheus at http://%s:%d/metrics", listen[0], server.server_port)

        async def shutdown() -> None:
            await stop.wait()
            await self._stop_metrics()

        self._metrics_task = asyncio.get_running_loop().create_task(shutdown())

    async def _stop_metrics(self) -> None:
        server, self._metrics_server = self._metrics_server, None
        if server is not None:
            await asyncio.to_thread(server.shutdown)
            server.server_close()

    async def pause(self, stop: asyncio.Event, seconds: float) -> None:
        """Wait until the next report is due (or the agent stops)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)

    async def bootstrap(self, serial: str, stop: asyncio.Event) -> bool:
        """Zero-touch: with no fleet certificate, get onboarding information, install, and learn how to enroll.
        False if stopped first."""
        config = self.config
        if not config.zero_touch or config.role != "dpu" or config.state_dir is None:
            return True
        options = config.enrollment or EnrollmentOptions()
        if options.idevid_cert is None or options.idevid_key is None:
            raise RuntimeError("zero-touch bootstrap proves the DPU's serial with its IDevID: none configured")
        self.zero_touch = ZeroTouch(
            config.root,
            config.state_dir,
            serial,
            options.idevid_cert,
            options.idevid_key,
            self.reboot,
            self.machine_alive,
        )
        if self.zero_touch.complete() or (config.state_dir / "agent.crt").exists():
            return True
        result = await self.zero_touch.run(stop, self.retry_delay)
        if result is None:
            return False
        config.server, config.enrollment = result[0], result[1]
        return True

    async def _bootstrap_done(self, inventory: Inventory) -> None:
        """After the first report with the fleet certificate the token gave: tell the bootstrap server."""
        zero_touch = self.zero_touch
        if zero_touch is None or zero_touch.complete():
            return
        version = inventory.os.image_version
        await zero_touch.report("Complete", None, f"enrolled; the agent reports; the DPU runs {version}", version)
        zero_touch.mark_complete()

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        inventory = await self.collect()
        serial = self.config.serial or inventory.serial_number
        if not serial:
            raise RuntimeError(
                f"cannot tell this machine's serial number from {self.config.root}/sys/class/dmi/id; pass --serial"
            )
        if not await self.bootstrap(serial, stop):
            return
        await self._start_relay(inventory)
        loop = asyncio.get_running_loop()
        next_inventory = 0.0
        failures = 0
        sent: str | None = None  # fingerprint of the last inventory sent
        installer: asyncio.Task[None] | None = None
        network: asyncio.Task[None] | None = None
        services: asyncio.Task[None] | None = None
        flavor: asyncio.Task[None] | None = None
        telemetry: asyncio.Task[None] | None = None
        while not stop.is_set():
            try:
                await self.secure(serial)
                due = loop.time() >= next_inventory
                # Re-read every heartbeat (cheap file reads): a change (a link down, a full disk, an AER
                # error) goes out at once instead of at the next full-inventory interval.
                inventory = await self.collect()
                await self._start_relay(inventory)
                self._relay_dpus(inventory)
                changed = inventory.fingerprint() != sent
                reply = await self.send(inventory if due or changed else None, serial, inventory.hostname)
                if due or changed:
                    sent = inventory.fingerprint()
                failures = 0
                await self._bootstrap_done(inventory)
                if installer is None:
                    installer = self._start_installer(stop)
                if network is None:
                    network = self._start_network(stop)
                if services is None:
                    services = self._start_services(stop, serial)
                self._start_host_services(stop, inventory)
                if flavor is None:
                    flavor = self._start_flavor(stop)
                telemetry = self._telemetry(reply, serial, stop) or telemetry
                hb = float(reply.get("heartbeatSeconds", self.config.heartbeat_seconds))  # type: ignore[arg-type]
                inv_every = float(reply.get("inventorySeconds", self.config.inventory_seconds))  # type: ignore[arg-type]
                if due:
                    next_inventory = loop.time() + inv_every
                wait = hb
            except (httpx.HTTPError, RuntimeError, OSError) as exc:
                failures += 1
                self.failures += 1
                wait = self.retry_delay(failures)
                log.warning("agent report failed (%s); retrying in %.0fs", exc, wait)
                next_inventory = 0.0  # re-send the full inventory once the server is back
                sent = None
            await self.pause(stop, wait)
        await asyncio.gather(
            *(t for t in (installer, network, services, flavor, telemetry) if t is not None),
            *self._host_service_tasks,
            return_exceptions=True,
        )

    async def _start_relay(self, inventory: Inventory) -> None:
        """A host agent told --relay-listen serves its DPUs the host relay, before anything else: a DPU cut off
        from the network relies on it while the control plane may be away too."""
        config = self.config
        if config.relay_listen is None or config.role != "host" or self.relay is not None:
            return
        from .host_relay_server import HostRelay  # aiohttp: loaded by a host agent serving the relay, only

        origins = config.relay_origins or tuple(h for h in (httpx.URL(config.server).host,) if h)
        state = config.state_dir or config.root / "var/lib/dpufleet/agent"
        relay = HostRelay(state, origins, config.relay_store_bytes)
        self.relay = relay
        self._relay_dpus(inventory)
        try:
            await relay.start(*config.relay_listen)
        except OSError as exc:  # the link's address not up yet at boot, or the port taken: tried again next report
            log.error("--relay-listen %s:%d: %s; trying again at the next report", *config.relay_listen, exc)
            await relay.stop()
            self.relay = None

    def _relay_dpus(self, inventory: Inventory) -> None:
        if self.relay is not None:
            self.relay.dpus = frozenset(c.serial_number for c in inventory.dpus if c.serial_number)

    def _start_network(self, stop: asyncio.Event) -> asyncio.Task[None] | None:
        """On mTLS, a DPU agent told where its Open vSwitch is programs it from the desired network."""
        config = self.config
        if config.network is None or config.state_dir is None or config.role != "dpu":
            return None
        self.network = NetworkReconciler(
            config.network,
            config.server,
            lambda: self.http,
            # with a service runtime here, a Service interface's veth is ours to make into its instance
            service_pid=(lambda service: self.services.running_pid(service) if self.services else None)
            if config.services is not None
            else None,
        )
        return asyncio.create_task(self.network.run(stop))

    def _start_flavor(self, stop: asyncio.Event) -> asyncio.Task[None] | None:
        """On mTLS, a DPU agent applies its DPU's flavor to the OS under its root and keeps it applied."""
        config = self.config
        if config.flavor_seconds is None or config.state_dir is None or config.role != "dpu":
            return None
        flavor = FlavorConfig(
            config.root, config.state_dir, interval=config.flavor_seconds, refresh=config.flavor_refresh_seconds
        )
        self.flavor = FlavorReconciler(flavor, config.server, lambda: self.http)
        return asyncio.create_task(self.flavor.run(stop))

    def _start_host_services(self, stop: asyncio.Event, inventory: Inventory) -> None:
        """On mTLS, a host agent given a services state dir runs, for each DPU its host carries, the instances
        placed on the host instead (placement.runsOn Host): one runtime per DPU, each in its own state dir and
        cgroup parent (/dpufleet/<dpu>-on-host/...), asking for that DPU (`?dpu=NAME`)."""
        config = self.config
        if config.services is None or config.state_dir is None or config.role != "host":
            return
        for card in inventory.dpus:
            if not card.serial_number:
                continue
            name = dpu_name(card.serial_number)
            if name in self.host_services:
                continue
            own = replace(
                config.services,
                state_dir=config.services.state_dir / name,
                dpu=f"{name}-on-host",
                query=f"?dpu={name}",
            )
            runtime = ServiceRuntime(
                own, config.server, lambda: self.http, alive=self.machine_alive, uplink=self.uplink_up
            )
            self.host_services[name] = runtime
            self._host_service_tasks.append(asyncio.create_task(runtime.run(stop)))

    def _start_services(self, stop: asyncio.Event, serial: str) -> asyncio.Task[None] | None:
        """On mTLS, a DPU agent given a services state dir runs the instances placed on its DPU."""
        config = self.config
        if config.services is None or config.state_dir is None or config.role != "dpu":
            return None
        if config.services.dpu == "dpu":
            config.services.dpu = dpu_name(serial)
        self.services = ServiceRuntime(
            config.services, config.server, lambda: self.http, alive=self.machine_alive, uplink=self.uplink_up
        )
        return asyncio.create_task(self.services.run(stop))

    def _start_installer(self, stop: asyncio.Event) -> asyncio.Task[None] | None:
        """On mTLS, a DPU agent whose OS has A/B slots pulls its install orders (agent/installer.py); a host
        agent whose host shows DPU boot channels (rshim) pulls its DPUs' host-channel orders (agent/host_channel.py)."""
        config = self.config
        if config.state_dir is None or not config.install_check_seconds:
            return None
        if config.role == "dpu" and slots.read_state(config.root) is not None:
            self.installer = SlotInstaller(config.root, config.state_dir, config.server, lambda: self.http)
        elif config.role == "host" and has_boot_channels(config.root):
            self.installer = HostChannelInstaller(config.root, config.state_dir, config.server, lambda: self.http)
        else:
            return None
        return asyncio.create_task(self.installer.run(stop, config.install_check_seconds))
