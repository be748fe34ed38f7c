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
from dataclasses import dataclass
from pathlib import Path

import httpx

from .. import __version__
from ..security.pki import AgentIdentity
from .credentials import AgentCredentials, EnrollmentOptions
from .inventory import Inventory, collect_inventory

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


def report_body(
    config: AgentConfig, inventory: Inventory | None, serial: str, hostname: str | None
) -> dict[str, object]:
    return {
        "serial": serial,
        "role": config.role,
        "agentVersion": __version__,
        "hostname": hostname,
        "inventory": inventory.model_dump(mode="json") if inventory is not None else None,
    }


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

    async def aclose(self) -> None:
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

    async def send(self, inventory: Inventory | None, serial: str, hostname: str | None) -> dict[str, object]:
        resp = await self.http.post(
            self.config.server.rstrip("/") + REPORT_PATH,
            json=report_body(self.config, inventory, serial, hostname),
            headers=self._headers,
        )
        if resp.status_code >= 400:
            raise RuntimeError(f"the server refused the report: HTTP {resp.status_code} {resp.text[:300]}")
        self.reports_sent += 1
        reply: dict[str, object] = resp.json()
        return reply

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        inventory = await self.collect()
        serial = self.config.serial or inventory.serial_number
        if not serial:
            raise RuntimeError(
                f"cannot tell this machine's serial number from {self.config.root}/sys/class/dmi/id; pass --serial"
            )
        loop = asyncio.get_running_loop()
        next_inventory = 0.0
        failures = 0
        while not stop.is_set():
            try:
                await self.secure(serial)
                due = loop.time() >= next_inventory
                if due:
                    inventory = await self.collect()
                reply = await self.send(inventory if due else None, serial, inventory.hostname)
                failures = 0
                hb = float(reply.get("heartbeatSeconds", self.config.heartbeat_seconds))  # type: ignore[arg-type]
                inv_every = float(reply.get("inventorySeconds", self.config.inventory_seconds))  # type: ignore[arg-type]
                if due:
                    next_inventory = loop.time() + inv_every
                wait = hb
            except (httpx.HTTPError, RuntimeError, OSError) as exc:
                failures += 1
                self.failures += 1
                wait = min(300.0, 2.0 * 2 ** min(failures, 8)) * (0.5 + random.random() / 2)
                log.warning("agent report failed (%s); retrying in %.0fs", exc, wait)
                next_inventory = 0.0  # re-send the full inventory once the server is back
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
