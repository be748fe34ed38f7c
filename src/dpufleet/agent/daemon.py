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
from datetime import UTC, datetime
from pathlib import Path

import httpx

from .. import __version__
from ..security.pki import AgentIdentity
from . import slots
from .credentials import AgentCredentials, EnrollmentOptions
from .installer import SlotInstaller
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
    install_check_seconds: float | None = 10.0  # DPU with A/B slots, mTLS: how often to ask for an install order


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
        sent: str | None = None  # fingerprint of the last inventory sent
        installer: asyncio.Task[None] | None = None
        while not stop.is_set():
            try:
                await self.secure(serial)
                due = loop.time() >= next_inventory
                # Re-read every heartbeat (cheap file reads): a change (a link down, a full disk, an AER
                # error) goes out at once instead of at the next full-inventory interval.
                inventory = await self.collect()
                changed = inventory.fingerprint() != sent
                reply = await self.send(inventory if due or changed else None, serial, inventory.hostname)
                if due or changed:
                    sent = inventory.fingerprint()
                failures = 0
                if installer is None:
                    installer = self._start_installer(stop)
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
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
        if installer is not None:
            await asyncio.gather(installer, return_exceptions=True)

    def _start_installer(self, stop: asyncio.Event) -> asyncio.Task[None] | None:
        """A DPU agent on mTLS whose OS has A/B slots pulls install orders (agent/installer.py)."""
        config = self.config
        if (
            config.role != "dpu"
            or config.state_dir is None
            or not config.install_check_seconds
            or slots.read_state(config.root) is None
        ):
            return None
        self.installer = SlotInstaller(config.root, config.state_dir, config.server, lambda: self.http)
        return asyncio.create_task(self.installer.run(stop, config.install_check_seconds))
