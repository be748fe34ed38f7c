"""Build an emulated fleet (hosts, DPUs, BMCs, OS roots) and serve its BMCs over HTTP.

Everything derived from the seed is deterministic (serials, MACs, UUIDs,
slot placement); BMC passwords are not, unless the caller supplies them,
because a password anyone can recompute is a default credential.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import string
import threading
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn

from dpufleet.sim.bmc import BmcLimits, SimBMC, new_bmc
from dpufleet.sim.clock import BmcTimings
from dpufleet.sim.devices import HOST_MODELS, SLOT_BUSES, MacAllocator, SimDPU, SimHost, make_dpu, new_uuid
from dpufleet.sim.osroot import write_dpu_root, write_host_root
from dpufleet.sim.profiles import get_profile
from dpufleet.sim.redfish.app import TRANSPORT_SCOPE_KEY, RedfishApp, create_bmc_app, create_fleet_app
from dpufleet.sim.redfish.events import close_senders
from dpufleet.sim.tls import CertFiles, make_self_signed

_START_TIMEOUT_SECONDS = 10.0

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _BaseProtocol
except ImportError:  # pragma: no cover - without httptools uvicorn speaks h11
    from uvicorn.protocols.http.h11_impl import H11Protocol as _BaseProtocol  # type: ignore[assignment]


class _FleetHttpProtocol(_BaseProtocol):
    """uvicorn's HTTP protocol, telling the app its connection so a dead BMC can reset it."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        inner = self.app

        async def app(scope: Any, receive: Any, send: Any) -> None:
            scope[TRANSPORT_SCOPE_KEY] = transport
            await inner(scope, receive, send)

        self.app = app


@dataclass
class Fleet:
    """An emulated fleet: hosts with their DPUs, one BMC per DPU."""

    seed: int
    hosts: list[SimHost]
    bmcs: dict[str, SimBMC]
    directory: Path | None = None
    loop: asyncio.AbstractEventLoop | None = None  # the loop serving it (fault injection runs there)
    server: FleetServer | None = None
    faults: Any = None  # the FaultInjector (dpufleet.sim.faults), created on first use

    @property
    def dpus(self) -> list[SimDPU]:
        return [dpu for host in self.hosts for dpu in host.dpus]

    def bmc_for_serial(self, serial: str) -> SimBMC:
        return next(b for b in self.bmcs.values() if b.dpu.serial == serial)

    def credentials(self, bmc_id: str) -> tuple[str, str]:
        account = next(iter(self.bmcs[bmc_id].accounts.values()))
        return account.username, account.password

    def set_limits(self, limits: BmcLimits) -> None:
        for bmc in self.bmcs.values():
            bmc.set_limits(limits)

    def describe(self) -> dict[str, object]:
        """A JSON-able summary (no passwords) of what was built."""
        return {
            "seed": self.seed,
            "hosts": [
                {
                    "id": host.id,
                    "serial": host.serial,
                    "model": f"{host.model.vendor} {host.model.product}",
                    "osroot": str(host.osroot) if host.osroot else None,
                    "dpus": [
                        {
                            "id": dpu.id,
                            "profile": dpu.profile.name,
                            "serial": dpu.serial,
                            "slot": dpu.slot,
                            "pci": [f.bdf for f in dpu.host_functions()],
                            "macs": {nic.name: nic.mac for nic in dpu.nics},
                            "osroot": str(dpu.osroot) if dpu.osroot else None,
                        }
                        for dpu in host.dpus
                    ],
                }
                for host in self.hosts
            ],
        }


def random_password() -> str:
    return secrets.token_urlsafe(18)


def build_fleet(
    hosts: int,
    dpus_per_host: int,
    profiles: list[str],
    seed: int,
    directory: Path | None = None,
    *,
    username: str = "fleetadmin",
    password_for: Callable[[str], str] | None = None,
    time_scale: float = 1.0,
    limits: BmcLimits | None = None,
) -> Fleet:
    """Build ``hosts`` hosts with ``dpus_per_host`` DPUs each.

    Host ``i`` carries DPUs of ``profiles[i % len(profiles)]``. When
    ``directory`` is given, every host's and DPU's OS root is written under
    it (``hosts/<id>/root``, ``dpus/<id>/root``) with ``fleet.json`` (a
    password-free summary) and ``credentials.json`` (mode 0600).
    """
    if hosts < 0 or dpus_per_host < 0:
        raise ValueError("hosts and dpus_per_host must not be negative")
    if dpus_per_host > len(SLOT_BUSES):
        raise ValueError(f"at most {len(SLOT_BUSES)} DPUs fit in one host")
    if not profiles:
        raise ValueError("at least one profile is needed")
    resolved = [get_profile(name) for name in profiles]
    rng = random.Random(f"dpufleet-sim:{seed}")
    macs = MacAllocator(rng)
    serial_counters: dict[str, int] = {p.name: rng.randrange(1000, 5000) for p in resolved}
    serials: set[str] = set()
    host_serials: set[str] = set()
    fleet = Fleet(seed=seed, hosts=[], bmcs={}, directory=directory)
    passwords = password_for or (lambda _bmc_id: random_password())
    for h in range(hosts):
        host_id = f"host-{h:03d}"
        host_serial = "".join(rng.choices(string.ascii_uppercase + string.digits, k=7))
        while host_serial in host_serials:
            host_serial = "".join(rng.choices(string.ascii_uppercase + string.digits, k=7))
        host_serials.add(host_serial)
        host = SimHost(id=host_id, serial=host_serial, uuid=new_uuid(rng), model=rng.choice(HOST_MODELS))
        profile = resolved[h % len(resolved)]
        for d in range(dpus_per_host):
            year, week = rng.randint(21, 25), rng.randint(1, 52)
            serial = profile.serial(year, week, serial_counters[profile.name])
            serial_counters[profile.name] += 1
            if serial in serials:
                raise RuntimeError(f"serial pattern of {profile.name} produced a duplicate: {serial}")
            serials.add(serial)
            dpu = make_dpu(
                profile, serial=serial, dpu_id=f"{host_id}-dpu-{d}", host_id=host_id, slot=d, rng=rng, macs=macs
            )
            host.dpus.append(dpu)
            timings = BmcTimings(
                power_on_seconds=profile.bmc.boot_seconds,
                bmc_restart_seconds=profile.bmc.reset_seconds,
                time_scale=time_scale,
            )
            bmc = new_bmc(
                dpu.id, dpu, {username: passwords(dpu.id)}, seed_uuid=new_uuid(rng), timings=timings, limits=limits
            )
            bmc.log("ResourcePoweredOn", f"{dpu.id} system")
            fleet.bmcs[bmc.id] = bmc
        fleet.hosts.append(host)
    if directory is not None:
        write_fleet_files(fleet, directory)
    return fleet


def write_fleet_files(fleet: Fleet, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for host in fleet.hosts:
        write_host_root(host, directory / "hosts" / host.id / "root")
        for dpu in host.dpus:
            write_dpu_root(dpu, directory / "dpus" / dpu.id / "root")
    fleet.directory = directory
    (directory / "fleet.json").write_text(json.dumps(fleet.describe(), indent=2) + "\n", encoding="utf-8")
    secrets_file = directory / "credentials.json"
    secrets_file.touch(mode=0o600)
    secrets_file.chmod(0o600)
    creds = {
        bmc_id: dict(zip(("username", "password"), fleet.credentials(bmc_id), strict=True)) for bmc_id in fleet.bmcs
    }
    secrets_file.write_text(json.dumps(creds, indent=2) + "\n", encoding="utf-8")


@dataclass
class FleetServer:
    """Running HTTP servers of a fleet: ``endpoints`` maps BMC id to its Redfish base URL."""

    fleet: Fleet
    endpoints: dict[str, str]
    servers: list[uvicorn.Server] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    cert: CertFiles | None = None
    host: str = "127.0.0.1"
    per_bmc: dict[str, tuple[uvicorn.Server, int]] = field(default_factory=dict)  # per-BMC-port mode
    fleet_app: RedfishApp | None = None  # the one-port app (it also serves the sim control API)
    control_url: str | None = None

    def service_root(self, bmc_id: str) -> str:
        return self.endpoints[bmc_id] + "/redfish/v1"

    async def close_bmc_port(self, bmc_id: str) -> None:
        """Per-BMC-port mode: stop listening (connections are refused), as when the BMC is dead."""
        entry = self.per_bmc.get(bmc_id)
        if entry is None:
            return
        server, _port = entry
        for listener in server.servers:
            listener.close()
        server.should_exit = True

    async def reopen_bmc_port(self, bmc_id: str) -> None:
        entry = self.per_bmc.get(bmc_id)
        if entry is None:
            return
        old, port = entry
        if not old.should_exit:
            return
        for _ in range(100):  # the old server may still be letting go of the port
            try:
                server, task, _bound = await _start_server(
                    create_bmc_app(self.fleet.bmcs[bmc_id]), self.host, port, self.cert
                )
                break
            except (OSError, SystemExit):
                await asyncio.sleep(0.05)
        else:
            raise RuntimeError(f"cannot listen on port {port} again for BMC {bmc_id}")
        self.servers.append(server)
        self.tasks.append(task)
        self.per_bmc[bmc_id] = (server, port)

    async def stop(self) -> None:
        for server in self.servers:
            server.should_exit = True
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for bmc in self.fleet.bmcs.values():
            await bmc.shutdown()
        await close_senders()


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its embedder (many run in one process)."""

    @contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def _start_server(
    app: Any,
    host: str,
    port: int,
    cert: CertFiles | None,
) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        log_config=None,  # leave the embedding process's logging alone
        access_log=False,
        lifespan="off",
        ssl_certfile=str(cert.cert) if cert else None,
        ssl_keyfile=str(cert.key) if cert else None,
        timeout_graceful_shutdown=2,
        http=_FleetHttpProtocol,
    )
    server = _EmbeddedServer(config)
    task = asyncio.get_running_loop().create_task(server.serve())
    deadline = asyncio.get_running_loop().time() + _START_TIMEOUT_SECONDS
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("uvicorn exited during start-up")
        if asyncio.get_running_loop().time() > deadline:
            server.should_exit = True
            raise TimeoutError(f"BMC server on {host}:{port} did not start")
        await asyncio.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    return server, task, int(bound)


async def serve_on_own_port(running: FleetServer, app: Any, host: str, port: int = 0) -> str:
    """Serve `app` on a port of its own beside the fleet (TLS as the fleet's), stopped with it; its URL."""
    scheme = "https" if running.cert else "http"
    server, task, bound = await _start_server(app, host, port, running.cert)
    running.servers.append(server)
    running.tasks.append(task)
    return f"{scheme}://{host}:{bound}"


async def serve_control(running: FleetServer, app: Any, host: str, port: int = 0) -> str:
    """Serve the sim control API: inside the one-port fleet app, else on a port of its own."""
    if running.fleet_app is not None:
        running.fleet_app.control = app
        first = next(iter(running.endpoints.values()))
        running.control_url = first.split("/bmc/", 1)[0]
        return running.control_url
    running.control_url = await serve_on_own_port(running, app, host, port)
    return running.control_url


async def serve_fleet(
    fleet: Fleet,
    host: str = "127.0.0.1",
    port: int = 0,
    per_bmc_ports: bool = False,
    tls: bool = False,
    cert_dir: Path | None = None,
) -> FleetServer:
    """Serve the fleet's BMCs on the running event loop.

    One port for all (each BMC under ``/bmc/<id>``), or with ``per_bmc_ports``
    one port per BMC serving ``/redfish/v1`` (``port`` is then the first port,
    0 meaning any free ports). ``tls`` serves HTTPS with a self-signed cert.
    """
    cert: CertFiles | None = None
    if tls:
        directory = cert_dir or (fleet.directory / "tls" if fleet.directory else None)
        if directory is None:
            raise ValueError("tls needs cert_dir or a fleet built with a directory")
        cert = make_self_signed(directory, hosts=(host, "localhost"))
    scheme = "https" if tls else "http"
    running = FleetServer(fleet=fleet, endpoints={}, cert=cert, host=host)
    fleet.loop = asyncio.get_running_loop()
    fleet.server = running
    try:
        if per_bmc_ports:
            for index, bmc in enumerate(fleet.bmcs.values()):
                server, task, bound = await _start_server(create_bmc_app(bmc), host, port + index if port else 0, cert)
                running.servers.append(server)
                running.tasks.append(task)
                running.per_bmc[bmc.id] = (server, bound)
                running.endpoints[bmc.id] = f"{scheme}://{host}:{bound}"
        else:
            running.fleet_app = create_fleet_app(fleet.bmcs)
            server, task, bound = await _start_server(running.fleet_app, host, port, cert)
            running.servers.append(server)
            running.tasks.append(task)
            for bmc_id in fleet.bmcs:
                running.endpoints[bmc_id] = f"{scheme}://{host}:{bound}/bmc/{bmc_id}"
    except BaseException:
        await running.stop()
        raise
    return running


@contextmanager
def fleet_in_thread(fleet: Fleet, **serve_args: object) -> Iterator[FleetServer]:
    """Serve ``fleet`` from an event loop in a background thread (for sync callers and tests)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="dpufleet-sim", daemon=True)
    thread.start()
    try:
        future = asyncio.run_coroutine_threadsafe(serve_fleet(fleet, **serve_args), loop)  # type: ignore[arg-type]
        running = future.result(timeout=_START_TIMEOUT_SECONDS * 2)
        try:
            yield running
        finally:
            asyncio.run_coroutine_threadsafe(running.stop(), loop).result(timeout=_START_TIMEOUT_SECONDS)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=_START_TIMEOUT_SECONDS)
        if not loop.is_running():
            loop.close()
