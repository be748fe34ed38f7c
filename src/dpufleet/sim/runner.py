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
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization

from ..agent.credentials import EnrollmentOptions
from ..agent.daemon import Agent, AgentConfig
from .bmc import BmcLimits
from .fleet import Fleet, FleetServer, build_fleet, serve_fleet
from .identity import IDEVID_CERT, IDEVID_KEY, SimIdentities

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
    tls: bool = False
    latency: float = 0.0
    max_concurrent: int | None = None
    time_scale: float = 1.0
    server: str | None = None
    token: str | None = None
    register: bool = True
    agents: bool = True
    heartbeat_seconds: float = 10.0


@dataclass
class SimRunning:
    fleet: Fleet
    servers: FleetServer
    username: str
    password: str
    agents: list[Agent] = field(default_factory=list)
    identities: SimIdentities = field(default_factory=SimIdentities)
    agent_url: str | None = None  # the control plane's agent listener the agents enroll with (mTLS)

    @property
    def endpoints(self) -> list[str]:
        return list(self.servers.endpoints.values())


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


def _agent_config(
    options: SimOptions, info: dict[str, Any] | None, ca_file: Path | None, root: Path, role: str, serial: str
) -> AgentConfig:
    if info is None or ca_file is None:  # a server without the agent listener: the bearer-token protocol
        return AgentConfig(options.server or "", options.token, root, role, options.heartbeat_seconds, serial=serial)
    return AgentConfig(
        str(info["agentURL"]),
        None,
        root,
        role,
        options.heartbeat_seconds,
        serial=serial,
        state_dir=root / AGENT_STATE_DIR,
        enrollment=EnrollmentOptions(idevid_cert=root / IDEVID_CERT, idevid_key=root / IDEVID_KEY, ca_file=ca_file),
    )


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
    await asyncio.to_thread(running.identities.provision, fleet, directory)
    if directory is not None:
        path = directory / "site-credentials.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"username": SITE_USERNAME, "password": password, "endpoints": running.endpoints}, fh)
    tasks: list[asyncio.Task[None]] = []
    http: httpx.AsyncClient | None = None
    try:
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
                configs: list[AgentConfig] = []
                for host in fleet.hosts:
                    if host.osroot:
                        configs.append(_agent_config(options, info, ca_file, host.osroot, "host", host.serial))
                    configs += [
                        _agent_config(options, info, ca_file, dpu.osroot, "dpu", dpu.serial)
                        for dpu in host.dpus
                        if dpu.osroot
                    ]
                for config in configs:
                    agent = Agent(config, None if config.state_dir else http)
                    running.agents.append(agent)
                    tasks.append(asyncio.create_task(agent.run(stop)))
        if on_ready is not None:
            await on_ready(running)
        await stop.wait()
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        for agent in running.agents:
            await agent.aclose()
        if http is not None:
            await http.aclose()
        await servers.stop()


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
