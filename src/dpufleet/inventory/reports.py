"""What agents report, applied to DPU and Host status (the DPU's part shaped by inventory/status.py).

The DPU agent reports the DPU's own OS inventory and heartbeats; the host-side
agent reports the PCI functions the host sees, and through their VPD the serial
number of the DPU in each slot, which pairs DPUs with hosts.

Each report is written in the project its device belongs to (inventory/tenancy.py): the
project of its DPU or Host, of the DPUs a host holds, or of its enrollment or Discovery.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from ..api.agent import Inventory
from ..api.errors import AlreadyExists, NotFound
from ..api.meta import isotime, now
from ..api.naming import dpu_name, host_name
from ..runtime.conditions import set_condition
from ..runtime.events import EventRecorder
from ..runtime.status import mutate_status_sync
from ..store.store import Store
from .status import apply_agent_report, apply_host_pairing
from .tenancy import ProjectResolver

log = logging.getLogger(__name__)

HEARTBEAT_WRITE_EVERY = 30.0


class AgentReport(BaseModel):
    """One message from an agent. Under mTLS the certificate must name the same serial."""

    serial: str = Field(min_length=1, max_length=128)
    role: str = Field(default="dpu", pattern="^(dpu|host)$")
    agentVersion: str = Field(max_length=64)
    hostname: str | None = Field(default=None, max_length=253)
    sentAt: datetime | None = Field(default=None, description="the agent's clock when it sent the report")
    inventory: Inventory | None = None


class AgentReply(BaseModel):
    heartbeatSeconds: float
    inventorySeconds: float
    object: str
    telemetry: dict[str, Any] | None = None  # api/telemetry.TelemetryAssignment: what to collect, where to send it


# (role, serial, project or None) -> the telemetry assignment for that device, from the control plane
TelemetryFor = Callable[[str, str, str | None], dict[str, Any] | None]


class ReportHandler:
    def __init__(
        self,
        store: Store,
        heartbeat_seconds: float = 10.0,
        inventory_seconds: float = 300.0,
        *,
        resolver: ProjectResolver | None = None,
        telemetry: TelemetryFor | None = None,
    ) -> None:
        self.store = store
        self.telemetry = telemetry
        self.resolver = resolver or ProjectResolver(store)
        self.heartbeat_seconds = heartbeat_seconds
        self.inventory_seconds = inventory_seconds
        self.events = EventRecorder(store, "agent-api")
        self._last_write: dict[str, float] = {}
        self._known: set[tuple[str, str, str]] = set()  # (kind, name, project) seen to exist
        self._lock = threading.Lock()

    def handle(self, report: AgentReport) -> AgentReply:
        """Write the report in its device's project; NoProject (403) or SerialConflict (409) when none is clear."""
        try:
            if report.role == "host":
                cards = [c.serial_number for c in report.inventory.dpus if c.serial_number] if report.inventory else []
                name = self._host(report, self.resolver.host(report.serial, report.hostname, cards))
            else:
                name = self._dpu(report, self.resolver.dpu(report.serial))
        except NotFound:
            # the cached project no longer holds the object: ask again at the next report
            (self.resolver.forget_host if report.role == "host" else self.resolver.forget_dpu)(report.serial)
            raise
        return self._reply(report, name)

    def _reply(self, report: AgentReport, name: str) -> AgentReply:
        telemetry = None
        if self.telemetry is not None and report.role == "dpu":
            telemetry = self.telemetry(report.role, report.serial, self.resolver.known_dpu(report.serial))
        return AgentReply(
            heartbeatSeconds=self.heartbeat_seconds, inventorySeconds=self.inventory_seconds, object=name,
            telemetry=telemetry,
        )  # fmt: skip

    def reply_without_write(self, report: AgentReport) -> AgentReply | None:
        """The reply to a heartbeat that is not due to be stored, or None when the report must be written.

        Cheap and in memory: the server answers such reports at once instead of queueing them behind
        the store's single writer (most heartbeats are not stored; see HEARTBEAT_WRITE_EVERY).
        """
        if report.inventory is not None:
            return None
        if report.role == "host":
            key, name = (
                f"host/{host_name(report.hostname or report.serial)}",
                host_name(report.hostname or report.serial),
            )
        else:
            key, name = f"dpu/{dpu_name(report.serial)}", dpu_name(report.serial)
        with self._lock:
            last = self._last_write.get(key)
        if last is None or time.monotonic() - last >= HEARTBEAT_WRITE_EVERY:
            return None
        return self._reply(report, name)

    def _due(self, key: str, has_inventory: bool) -> bool:
        """Heartbeats are written at most every 30 s per agent; inventories always."""
        with self._lock:
            last = self._last_write.get(key, 0.0)
            if not has_inventory and time.monotonic() - last < HEARTBEAT_WRITE_EVERY:
                return False
            self._last_write[key] = time.monotonic()
            return True

    def _ensure(self, kind: str, name: str, project: str, spec: dict[str, Any], reason: str, message: str) -> None:
        """Create the object on its first report. Known ones are not read again on every report: a
        deleted one makes the status write fail once (NotFound, `_forget`) and is created at the next."""
        key = (kind, name, project)
        with self._lock:
            if key in self._known:
                return
        try:
            self.store.get(kind, name, project)
        except NotFound:
            try:
                obj = self.store.create({"kind": kind, "metadata": {"name": name, "project": project}, "spec": spec})
                self.events.record(obj, reason, message)
            except AlreadyExists:
                pass
        with self._lock:
            self._known.add(key)

    def _forget(self, kind: str, name: str, project: str) -> None:
        with self._lock:
            self._known.discard((kind, name, project))

    def _write(self, kind: str, name: str, mutate: Callable[[dict[str, Any]], None], project: str) -> None:
        try:
            mutate_status_sync(self.store, kind, name, mutate, project)
        except NotFound:
            self._forget(kind, name, project)
            raise

    def _dpu(self, report: AgentReport, project: str) -> str:
        name = dpu_name(report.serial)
        if not self._due(f"dpu/{name}", report.inventory is not None):
            return name
        self._ensure("DPU", name, project, {"serialNumber": report.serial}, "Discovered", "first report from its agent")
        received = now()

        def mutate(status: dict[str, Any]) -> None:
            apply_agent_report(
                status, serial=report.serial, agent_version=report.agentVersion, received=received,
                sent_at=report.sentAt, inventory=report.inventory,
            )  # fmt: skip

        self._write("DPU", name, mutate, project)
        return name

    def _host(self, report: AgentReport, project: str) -> str:
        inv = report.inventory
        name = host_name(report.hostname or report.serial)
        if not self._due(f"host/{name}", inv is not None):
            return name
        self._ensure(
            "Host",
            name,
            project,
            {"hostname": report.hostname} if report.hostname else {},
            "Discovered",
            "first report from its host agent",
        )
        stamp = isotime(now())
        paired: list[tuple[str, str, str]] = []  # (dpu name, serial, slot)
        cards = {card.serial_number: card for card in inv.dpus if card.serial_number} if inv is not None else {}
        functions: list[dict[str, Any]] = []
        if inv is not None:
            for card in inv.dpus:
                if not card.serial_number:
                    continue
                held = self.resolver.known_dpu(card.serial_number)
                if held is not None and held != project:  # never a second DPU for a serial another project holds
                    log.warning(
                        "host %s (project %s): the DPU in slot %s is %s of project %s; not paired",
                        name,
                        project,
                        card.slot,
                        dpu_name(card.serial_number),
                        held,
                    )
                    continue
                paired.append((dpu_name(card.serial_number), card.serial_number, card.slot))
            by_slot = {d.slot: dpu_name(d.serial_number) for d in inv.dpus if d.serial_number}
            for fn in inv.pci:
                if fn.dpu is None:
                    continue
                functions.append(
                    {
                        "bdf": fn.bdf,
                        "vendorId": fn.vendor_id or "",
                        "deviceId": fn.device_id or "",
                        "dpu": by_slot.get(fn.slot),
                        "role": fn.dpu.role,
                        "model": fn.dpu.model,
                        **({"aer": fn.aer.model_dump()} if fn.aer is not None else {}),
                    }
                )

        def mutate_host(status: dict[str, Any]) -> None:
            status["lastSeen"] = stamp
            # The serial its fleet certificate names: host-channel orders are addressed to it. The first one
            # stays: another host's agent reporting this hostname cannot take the Host's orders over.
            known = status.get("serialNumber")
            if known and known != report.serial:
                log.warning("host %s: agent %s reports for it, but its serial is %s; kept", name, report.serial, known)
            else:
                status["serialNumber"] = report.serial
            if inv is not None:
                status["pciFunctions"] = functions
                status["dpus"] = [p[0] for p in paired]
                status["phase"] = "Inventoried"
            set_condition(status, "AgentConnected", True, "Heartbeat", f"host agent {report.agentVersion}")

        self._write("Host", name, mutate_host, project)
        for dpu_obj, serial, slot in paired:
            self._ensure(
                "DPU",
                dpu_obj,
                project,
                {"serialNumber": serial},
                "Discovered",
                f"seen in PCI slot {slot} of host {name}",
            )

            def mutate_dpu(status: dict[str, Any], slot: str = slot, serial: str = serial) -> None:
                apply_host_pairing(status, host=name, serial=serial, slot=slot, card=cards.get(serial))

            mutate_status_sync(self.store, "DPU", dpu_obj, mutate_dpu, project)
        return name
