"""Running an emulated fleet: BMCs on HTTP, the real agent code on every DPU and host.

The fleet is reached by the control plane only through real protocols: its BMCs
over Redfish, its agents over mTLS to the control plane's agent listener. With
`register`, the runner also tells the control plane where to look, exactly as
an operator would: a Credential with the site's BMC password and a Discovery
listing the BMC endpoints, created through the HTTP API.

Every emulated device carries an IDevID from its (emulated) manufacturer's CA;
the runner trusts those vendor CAs through the API, as an operator would, and
each agent then enrolls itself: zero-trust enrollment, as on hardware.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import secrets
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization

from ..agent.bootstrap import write_lease
from ..agent.credentials import EnrollmentOptions
from ..agent.daemon import Agent, AgentConfig
from ..agent.services import ServicesConfig
from ..api.agent import Inventory
from . import osroot
from .bmc import BmcLimits
from .control import ControlApp, write_control_file
from .devices import PowerState, SimDPU, SimHost
from .faults import injector_for
from .fleet import Fleet, FleetServer, build_fleet, serve_control, serve_fleet, serve_on_own_port
from .hostbmc import PREFIX as HOST_BMC_PREFIX
from .hostbmc import HostBMCApp, SiteApp
from .identity import IDEVID_CERT, IDEVID_KEY, SimIdentities
from .kernel import emulated_kernel
from .network import DataPlane, data_plane_tag
from .rshim import RshimBus

log = logging.getLogger(__name__)
SITE_USERNAME = "fleetadmin"
CREDENTIAL_NAME = "sim-site"
DISCOVERY_NAME = "sim"
BASE = "/apis/dpufleet.io/v1alpha1/projects/default"
AGENT_STATE_DIR = Path("var/lib/dpufleet/agent")


@dataclass
class SimOptions:
    hosts: int = 3
    dpus_per_host: int = 1
    profiles: list[str] = field(default_factory=lambda: ["nvidia-bluefield-3"])
    seed: int = 1
    directory: Path | None = None
    listen_host: str = "127.0.0.1"
    port: int = 0
    per_bmc_ports: bool = False
    host_bmcs_manage_dpus: bool = False  # DMTF's SmartNIC model: each host's BMC shows its DPUs too
    tls: bool = False
    latency: float = 0.0
    max_concurrent: int | None = None
    time_scale: float = 1.0
    server: str | None = None
    token: str | None = None
    register: bool = True
    agents: bool = True
    heartbeat_seconds: float = 10.0
    install_check_seconds: float = 10.0  # how often DPU agents ask for an install order
    flavor_seconds: float = 10.0  # how often DPU agents check their flavor on the OS (x6: ask for it)
    # Zero-touch: every DPU boots unconfigured; the emulated DHCP server gives it the bootstrap URL (the
    # server's /bootstrap/v1 unless `bootstrap_url`) and the onboarding key id, and its agent bootstraps.
    zero_touch: bool = False
    bootstrap_url: str | None = None
    # Networking: the first `network_dpus` DPUs get a real Open vSwitch in namespaces of their own
    # (sim/network.py), which their agents program. Off by default: the rest of the fleet stays cheap.
    network: bool = False
    network_dpus: int = 1
    network_interval: float = 1.0  # how often a DPU agent converges its switch
    # Services: the first `services_dpus` DPUs run the instances placed on them as real containers
    # (runc, agent/services.py) on this machine, each DPU with its own runc root and cgroup parent.
    services: bool = False
    services_dpus: int = 1
    services_interval: float = 2.0
    services_trusted_publishers: Path | None = None  # each runtime's trust store (agent --trusted-publishers)
    services_require_signed: bool = False
    # The host relay (agent/host_relay.py): every host agent serves one on a port of its own on listen_host, and
    # its DPUs' agents use it (artifacts they cannot reach, telemetry while they are cut off from the bus)
    host_relay: bool = False


@dataclass
class SimRunning:
    fleet: Fleet
    servers: FleetServer
    username: str
    password: str
    agents: list[Agent] = field(default_factory=list)
    identities: SimIdentities = field(default_factory=SimIdentities)
    agent_url: str | None = None  # the control plane's agent listener the agents enroll with (mTLS)
    control_url: str | None = None  # the sim control API (/sim/v1/faults)
    control_token: str | None = None
    rshim: RshimBus | None = None  # the hosts' boot channels to their DPUs (BlueField rshim)
    own_host_bmcs: dict[str, str] = field(default_factory=dict)  # per_bmc_ports: each host BMC's own port
    data_planes: dict[str, DataPlane] = field(default_factory=dict)  # DPU id -> its switch and namespaces

    @property
    def endpoints(self) -> list[str]:
        return list(self.servers.endpoints.values())

    @property
    def host_bmcs(self) -> dict[str, str]:
        """Each emulated host's BMC (its Redfish service root's base), by host id."""
        if self.own_host_bmcs:
            return dict(self.own_host_bmcs)
        base = self.control_url or ""
        return {h.id: f"{base}{HOST_BMC_PREFIX}{h.id}" for h in self.fleet.hosts}


async def _put(http: httpx.AsyncClient, plural: str, doc: dict[str, Any]) -> None:
    name = doc["metadata"]["name"]
    resp = await http.get(f"{BASE}/{plural}/{name}")
    if resp.status_code == 404:
        resp = await http.post(f"{BASE}/{plural}", json=doc)
    elif resp.status_code == 200:
        resp = await http.put(f"{BASE}/{plural}/{name}", json=doc)
    if resp.status_code >= 400:
        raise RuntimeError(f"registering {plural}/{name} failed: HTTP {resp.status_code}: {resp.text[:300]}")


async def register(http: httpx.AsyncClient, running: SimRunning, options: SimOptions) -> None:
    """Tell the control plane about the fleet the way an operator would."""
    await _put(
        http,
        "credentials",
        {
            "kind": "Credential",
            "metadata": {"name": CREDENTIAL_NAME},
            "spec": {"username": running.username, "password": running.password},
        },
    )
    await _put(
        http,
        "discoveries",
        {
            "kind": "Discovery",
            "metadata": {"name": DISCOVERY_NAME, "labels": {"dpufleet.io/sim": "true"}},
            "spec": {
                "endpoints": running.endpoints,
                "schemes": ["https" if options.tls else "http"],
                "credentialsRef": CREDENTIAL_NAME,
                "verifyTLS": False,
                "concurrency": 256,
                "intervalSeconds": 600,
            },
        },
    )


async def trust_vendors(http: httpx.AsyncClient, running: SimRunning) -> dict[str, Any] | None:
    """Trust the emulated manufacturers' CAs and learn where agents enroll; None if the server has no mTLS."""
    resp = await http.get("/enroll/v1/info")
    if resp.status_code == 404:
        return None
    if resp.status_code >= 400:
        raise RuntimeError(f"reading the enrollment info failed: HTTP {resp.status_code}: {resp.text[:300]}")
    info: dict[str, Any] = resp.json()
    for ca in running.identities.cas.values():
        pem = ca.certificate.public_bytes(serialization.Encoding.PEM).decode()
        resp = await http.post("/enroll/v1/vendor-cas", json={"certificate": pem})
        if resp.status_code >= 400:
            raise RuntimeError(f"trusting the {ca.vendor} CA failed: HTTP {resp.status_code}: {resp.text[:300]}")
    return info


class SimAgent(Agent):
    """The real agent, running inside an emulated machine: it only runs while that machine's OS does.

    The fault behaviours live here, not in the agent: while the OS is down, booting, hung or
    panicked the agent is silent (a frozen or absent process); when the OS comes back it starts
    afresh and sends its inventory; a network partition makes its reports fail at the network;
    its clock is the machine's (possibly skewed) clock.
    """

    POLL_SECONDS = 0.05
    FULL_READ_SECONDS = 30.0

    def __init__(
        self,
        config: AgentConfig,
        http: httpx.AsyncClient | None,
        device: SimDPU | SimHost,
        time_scale: float,
        restart: Callable[[], None] | None = None,
        retry_floor: float = POLL_SECONDS,
    ) -> None:
        super().__init__(config, http)
        self.device = device
        self.time_scale = time_scale
        self.retry_floor = retry_floor  # the shortest pause after a failed report (see run_sim)
        self.restart = restart  # what `reboot` does to the emulated machine (its BMC-side reset sequence)
        self.silent_since: float | None = None
        self._stop: asyncio.Event | None = None
        self._collected: tuple[tuple[int, int], float, Inventory] | None = (
            None  # ((generation, boots), when, inventory)
        )

    def alive(self) -> bool:
        if isinstance(self.device, SimDPU):
            return self.device.os_alive and self.device.power_state == PowerState.ON
        return self.device.os_alive

    def machine_alive(self) -> bool:
        return self.alive()

    def uplink_up(self) -> bool:
        """The emulated partition cuts telemetry as it cuts reports (and so does a machine that is down)."""
        partitioned = isinstance(self.device, SimDPU) and self.device.network_partitioned
        return self.alive() and not partitioned

    async def pause(self, stop: asyncio.Event, seconds: float) -> None:
        """As a real agent, which its machine starts afresh at boot: a reboot ends the wait for the next report."""
        boots = self.device.boot_count
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        look_every = min(1.0, max(self.POLL_SECONDS, 20 * self.time_scale))  # a boot takes ~40 s of emulated time
        while not stop.is_set() and loop.time() < deadline:
            if self.device.boot_count != boots or not self.alive():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), min(look_every, max(deadline - loop.time(), 0)))

    async def reboot(self) -> None:
        if self.restart is None:
            raise RuntimeError("this emulated machine cannot reboot itself")
        self.restart()

    def clock(self) -> datetime:
        offset = self.device.clock_offset_seconds if isinstance(self.device, SimDPU) else 0.0
        return super().clock() + timedelta(seconds=offset)

    def retry_delay(self, failures: int) -> float:
        return max(super().retry_delay(failures) * self.time_scale, self.retry_floor)

    async def collect(self) -> Inventory:
        """The real collection, unless the emulator wrote nothing under this OS root since the last one.

        Only the emulator changes an emulated OS tree, and it counts its writes (osroot.generation),
        so an unchanged count means an unchanged inventory: re-reading it on every heartbeat of
        hundreds of agents in one process costs more CPU than the rest of the emulator. Read fully
        at least every FULL_READ_SECONDS all the same.
        """
        loop = asyncio.get_running_loop()
        seen = (osroot.generation(self.config.root), self.device.boot_count)  # a boot starts the agent afresh
        cached = self._collected
        if cached is not None and cached[0] == seen and loop.time() - cached[1] < self.FULL_READ_SECONDS:
            return cached[2]
        inventory = await super().collect()
        self._collected = (seen, loop.time(), inventory)
        return inventory

    async def run(self, stop: asyncio.Event | None = None) -> None:
        self._stop = stop or asyncio.Event()
        await super().run(self._stop)

    async def send(self, inventory: Inventory | None, serial: str, hostname: str | None) -> dict[str, object]:
        if not self.alive():
            loop = asyncio.get_running_loop()
            self.silent_since = loop.time()
            while not self.alive():
                if self._stop is not None and self._stop.is_set():
                    raise RuntimeError("the emulated machine is down and the sim is stopping")
                await asyncio.sleep(self.POLL_SECONDS)
            self.silent_since = None
            inventory = await self.collect()  # a freshly started agent reports everything
        if isinstance(self.device, SimDPU) and self.device.network_partitioned:
            raise httpx.ConnectError("network is unreachable (emulated partition)")
        return await super().send(inventory, serial, hostname)


def _wire_host_relays(configs: list[tuple[AgentConfig, SimDPU | SimHost]], listen_host: str) -> None:
    """Each host agent (on mTLS) serves its host relay on a free port; its DPUs' agents are told where."""
    for config, device in configs:
        if not isinstance(device, SimHost) or config.state_dir is None:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((listen_host, 0))
            port = int(probe.getsockname()[1])
        config.relay_listen = (listen_host, port)
        carried = {d.id for d in device.dpus}
        for dpu_config, dpu in configs:
            if isinstance(dpu, SimDPU) and dpu.id in carried:
                dpu_config.host_relay = f"http://{listen_host}:{port}"


def _agent_config(
    options: SimOptions, info: dict[str, Any] | None, ca_file: Path | None, root: Path, role: str, serial: str
) -> AgentConfig:
    if info is None or ca_file is None:  # a server without the agent listener: the bearer-token protocol
        return AgentConfig(options.server or "", options.token, root, role, options.heartbeat_seconds, serial=serial)
    if options.zero_touch and role == "dpu":  # knows nothing but its IDevID and what DHCP tells it
        return AgentConfig(
            "",
            None,
            root,
            role,
            options.heartbeat_seconds,
            serial=serial,
            state_dir=root / AGENT_STATE_DIR,
            enrollment=EnrollmentOptions(idevid_cert=root / IDEVID_CERT, idevid_key=root / IDEVID_KEY),
            install_check_seconds=options.install_check_seconds,
            zero_touch=True,
        )
    return AgentConfig(
        str(info["agentURL"]),
        None,
        root,
        role,
        options.heartbeat_seconds,
        serial=serial,
        state_dir=root / AGENT_STATE_DIR,
        enrollment=EnrollmentOptions(idevid_cert=root / IDEVID_CERT, idevid_key=root / IDEVID_KEY, ca_file=ca_file),
        install_check_seconds=options.install_check_seconds,
        flavor_seconds=options.flavor_seconds,
        flavor_refresh_seconds=options.flavor_seconds * 6,
    )


async def emulated_dhcp(http: httpx.AsyncClient, fleet: Fleet, options: SimOptions) -> None:
    """The DHCP server's bootstrap options, as an operator configures them: the bootstrap URL and the key id
    of the control plane's onboarding key; every DPU's DHCP client records them in its lease."""
    resp = await http.get("/bootstrap/v1/trust-anchor")
    if resp.status_code >= 400:
        raise RuntimeError(f"reading the onboarding trust anchor failed: HTTP {resp.status_code}: {resp.text[:300]}")
    keyid = "sha256:" + str(resp.json()["keyid"])
    url = options.bootstrap_url or (options.server or "").rstrip("/") + "/bootstrap/v1"
    for dpu in fleet.dpus:
        if dpu.osroot is not None:
            write_lease(dpu.osroot, url, keyid)


def _restart_of(fleet: Fleet, device: SimDPU | SimHost) -> Callable[[], None] | None:
    """A DPU's OS reboots itself through the same reset sequence its BMC runs."""
    if not isinstance(device, SimDPU):
        return None
    bmc = fleet.bmcs[device.id]
    return lambda: bmc.reset_system("GracefulRestart")


async def run_sim(
    options: SimOptions,
    stop: asyncio.Event,
    on_ready: Callable[[SimRunning], Awaitable[None]] | None = None,
) -> None:
    password = secrets.token_urlsafe(18)
    limits = BmcLimits(latency_seconds=options.latency, max_concurrent=options.max_concurrent, queue_when_busy=True)
    directory = options.directory
    fleet = await asyncio.to_thread(
        build_fleet,
        options.hosts,
        options.dpus_per_host,
        options.profiles,
        options.seed,
        directory,
        username=SITE_USERNAME,
        password_for=lambda _bmc: password,
        time_scale=options.time_scale,
        limits=limits,
    )
    servers = await serve_fleet(
        fleet,
        options.listen_host,
        options.port,
        per_bmc_ports=options.per_bmc_ports,
        tls=options.tls,
        cert_dir=directory / "tls" if directory else None,
    )
    running = SimRunning(fleet, servers, SITE_USERNAME, password)
    injector_for(fleet)  # fault injection's boot hooks on every BMC
    running.rshim = RshimBus.of(fleet.hosts, fleet.bmcs)
    running.rshim.start()
    running.control_token = secrets.token_urlsafe(24)
    host_bmcs = HostBMCApp(fleet, SITE_USERNAME, password, manages_dpus=options.host_bmcs_manage_dpus)
    site = SiteApp(ControlApp(fleet, running.control_token), host_bmcs)
    running.control_url = await serve_control(servers, site, options.listen_host)
    if options.per_bmc_ports:  # as the DPU BMCs: each host's BMC at /redfish/v1 of a port of its own
        for host in fleet.hosts:
            running.own_host_bmcs[host.id] = await serve_on_own_port(
                servers, host_bmcs.single(host.id), options.listen_host
            )
    if directory is not None:
        write_control_file(directory, running.control_url, running.control_token)
    await asyncio.to_thread(running.identities.provision, fleet, directory)
    if directory is not None:
        path = directory / "site-credentials.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"username": SITE_USERNAME, "password": password, "endpoints": running.endpoints}, fh)
    tasks: list[asyncio.Task[None]] = []
    http: httpx.AsyncClient | None = None
    try:
        if options.network:
            await asyncio.to_thread(_start_data_planes, running, options)
        if options.server:
            headers = {"Authorization": f"Bearer {options.token}"} if options.token else {}
            limits_http = httpx.Limits(max_connections=64)
            http = httpx.AsyncClient(base_url=options.server, headers=headers, timeout=30, limits=limits_http)
            if options.register:
                await register(http, running, options)
            if options.agents:
                info = await trust_vendors(http, running)
                ca_file: Path | None = None
                if info is not None and directory is not None:
                    running.agent_url = str(info["agentURL"])
                    ca_file = directory / "fleet-ca.crt"
                    ca_file.write_text(str(info["caCertificate"]))
                configs: list[tuple[AgentConfig, SimDPU | SimHost]] = []
                for host in fleet.hosts:
                    if host.osroot:
                        configs.append((_agent_config(options, info, ca_file, host.osroot, "host", host.serial), host))
                    configs += [
                        (_agent_config(options, info, ca_file, dpu.osroot, "dpu", dpu.serial), dpu)
                        for dpu in host.dpus
                        if dpu.osroot
                    ]
                if options.zero_touch and info is not None:
                    await emulated_dhcp(http, fleet, options)
                service_dpus = {d.id for d in fleet.dpus[: max(0, options.services_dpus)]}
                # A scaled-down backoff is what keeps a small emulated fleet fast; a large one's agents, all
                # refused until discovery has made their objects, would retry thousands of times a second
                # and starve the BMCs that discovery reads (one event loop): at most ~200 retries a second.
                retry_floor = max(SimAgent.POLL_SECONDS, len(configs) / 200)
                if options.host_relay:
                    _wire_host_relays(configs, options.listen_host)
                for config, device in configs:
                    plane = running.data_planes.get(device.id)
                    if plane is not None and config.state_dir is not None:
                        config.network = plane.agent_config()
                        config.network.interval = options.network_interval
                    runs_services = (
                        device.id in service_dpus
                        if isinstance(device, SimDPU)
                        else any(d.id in service_dpus for d in device.dpus)  # host agents run host-placed ones
                    )
                    if options.services and config.state_dir is not None and runs_services:
                        config.services = ServicesConfig(
                            config.state_dir / "services",
                            interval=options.services_interval,
                            stop_grace=3.0,
                            trusted_publishers=options.services_trusted_publishers,
                            require_signed=options.services_require_signed,
                            insmod=[*emulated_kernel(config.root), "insmod"],
                            rmmod=[*emulated_kernel(config.root), "rmmod"],
                            os_root=config.root,
                            host_relay=config.host_relay,
                        )
                    restart = _restart_of(fleet, device)
                    agent = SimAgent(
                        config, None if config.state_dir else http, device, options.time_scale, restart, retry_floor
                    )
                    running.agents.append(agent)
                    tasks.append(asyncio.create_task(agent.run(stop)))
        if on_ready is not None:
            await on_ready(running)
        await stop.wait()
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        for started in running.agents:
            await started.aclose()
            for runtime in [started.services, *started.host_services.values()]:
                if runtime is not None:  # the emulated DPU (or host) is gone: so are its containers
                    await asyncio.to_thread(runtime.kill_all)
        if http is not None:
            await http.aclose()
        await running.rshim.stop()
        await servers.stop()
        for plane in running.data_planes.values():
            await asyncio.to_thread(plane.stop)


def _start_data_planes(running: SimRunning, options: SimOptions) -> None:
    for index, dpu in enumerate(running.fleet.dpus[: max(0, options.network_dpus)]):
        running.data_planes[dpu.id] = DataPlane(data_plane_tag(index)).start()


@contextmanager
def sim_in_thread(options: SimOptions, timeout: float = 60.0) -> Iterator[SimRunning]:
    """Run the fleet on an event loop in a background thread (for the demo and sync callers)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="dpufleet-sim", daemon=True)
    thread.start()
    stop = asyncio.Event()
    ready: concurrent.futures.Future[SimRunning] = concurrent.futures.Future()

    async def on_ready(running: SimRunning) -> None:
        ready.set_result(running)

    async def main() -> None:
        try:
            await run_sim(options, stop, on_ready)
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise

    task = asyncio.run_coroutine_threadsafe(main(), loop)
    try:
        yield ready.result(timeout=timeout)
    finally:
        loop.call_soon_threadsafe(stop.set)
        with contextlib.suppress(Exception):
            task.result(timeout=timeout)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=timeout)
        loop.close()
