"""Gathering evidence: the BMC over Redfish, the agent and host agent from their stored reports.

The BMC is asked directly on every poll (the inventory crawl runs every 5 minutes, far too
seldom for health) through a BMC session (inventory/bmcs.py: the credentials and the pooled
client every controller uses). Links found once (its manager, log entry collections, memory
devices) are cached per DPU.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..drivers.redfish.client import BMCUnreachable, RedfishClient, RedfishError
from ..drivers.redfish.events import LogEntry
from .diagnosis import parse_time
from .evidence import AgentView, BMCView, HostView, MemoryDevice

LOG_ENTRIES_KEPT = 50


@dataclass
class Links:
    system: str
    manager: str | None = None
    entries: list[str] = field(default_factory=list)
    memory: list[str] = field(default_factory=list)
    reset_manager: str | None = None
    event_service: str | None = None


async def discover_links(client: RedfishClient, system_path: str) -> Links:
    """The links a poll follows from the DPU's system (BMCSession.system(): inventory/bmcs.py)."""
    system = await client.get(system_path)
    managed_by = ((system.get("Links") or {}).get("ManagedBy") or [{}])[0]
    manager_path = managed_by.get("@odata.id") if isinstance(managed_by, dict) else None
    links = Links(system_path, manager_path)
    log_collections: list[str] = []
    for owner in (system, await client.get(manager_path) if manager_path else None):
        if owner is None:
            continue
        link = client.link(owner, "LogServices")
        if link:
            log_collections.append(link)
        reset = ((owner.get("Actions") or {}).get("#Manager.Reset") or {}).get("target")
        if reset:
            links.reset_manager = str(reset)
    for collection in log_collections:
        for service in await client.members(collection):
            entries = client.link(service, "Entries")
            if entries:
                links.entries.append(entries)
    memory = client.link(system, "Memory")
    if memory:
        coll = await client.get(memory)
        links.memory = [m["@odata.id"] for m in coll.get("Members") or [] if isinstance(m, dict) and "@odata.id" in m]
    root = await client.get("/redfish/v1", anonymous=True)
    links.event_service = client.link(root, "EventService")
    return links


async def read_logs(client: RedfishClient, entries_link: str) -> list[LogEntry]:
    body = await client.get(entries_link)
    members = [m for m in body.get("Members") or [] if isinstance(m, dict)]
    if members and "Message" not in members[0] and "@odata.id" in members[0]:  # not expanded: fetch the newest
        members = list(await asyncio.gather(*(client.get(m["@odata.id"]) for m in members[-LOG_ENTRIES_KEPT:])))
    return [
        LogEntry(
            created=parse_time(m.get("Created")),
            message=str(m.get("Message") or ""),
            message_id=str(m.get("MessageId") or ""),
            severity=str(m.get("Severity") or ""),
        )
        for m in members[-LOG_ENTRIES_KEPT:]
    ]


async def probe_bmc(client: RedfishClient, links: Links, *, full: bool = True) -> BMCView:
    """One look at the BMC: its system, and with `full` its memory devices and log entries too.
    Raises RedfishError (BMCUnreachable, 503) for the caller to classify."""
    system = await client.get(links.system)
    progress = system.get("BootProgress") if isinstance(system.get("BootProgress"), dict) else {}
    assert isinstance(progress, dict)
    status = system.get("Status") if isinstance(system.get("Status"), dict) else {}
    assert isinstance(status, dict)
    view = BMCView(
        reachable=True,
        power_state=system.get("PowerState"),
        boot_progress=progress.get("LastState"),
        boot_progress_oem=progress.get("OemLastState"),
        boot_progress_since=parse_time(progress.get("LastStateTime")),
        health=status.get("Health"),
    )
    if not full:
        return view
    memories, logs = await asyncio.gather(
        asyncio.gather(*(client.get(m) for m in links.memory)),
        asyncio.gather(*(read_logs(client, e) for e in links.entries)),
    )
    for mem in memories:
        mstatus = mem.get("Status") if isinstance(mem.get("Status"), dict) else {}
        assert isinstance(mstatus, dict)
        view.memory.append(MemoryDevice(str(mem.get("Id", "")), mstatus.get("State"), mstatus.get("Health")))
    for entries in logs:
        view.logs.extend(entries)
    view.logs.sort(key=lambda e: e.created.timestamp() if e.created else 0.0)
    return view


def unreachable_view(exc: RedfishError) -> BMCView:
    if exc.status == 503:
        return BMCView(reachable=True, hung=True, error=str(exc))
    if isinstance(exc, BMCUnreachable):
        return BMCView(reachable=False, error=str(exc))
    return BMCView(reachable=False, error=str(exc))


def agent_view(status: dict[str, Any], now: datetime, silent_after: float) -> AgentView:
    """The agent from what its reports wrote: heartbeat age, NICs, filesystems, clock (when reported)."""
    agent = status.get("agent") or {}
    last = parse_time(agent.get("lastHeartbeat"))
    if last is None:
        return AgentView(silent=None)
    age = (now - last).total_seconds()
    view = AgentView(silent=age > silent_after, last_heartbeat=last, heartbeat_age=age)
    ports = {p.get("name") for p in (status.get("capabilities") or {}).get("ports") or [] if isinstance(p, dict)}
    nics = ((status.get("capabilities") or {}).get("os") or {}).get("nics") or []
    view.data_nics_down = [
        str(n.get("name"))
        for n in nics
        if isinstance(n, dict) and (not ports or n.get("name") in ports) and n.get("operstate") == "down"
    ]
    view.root_used_percent = _root_used(agent.get("filesystems") or status.get("filesystems"))
    skew = agent.get("clockSkewSeconds")
    if isinstance(skew, int | float):
        view.clock_skew_seconds = float(skew)
    else:
        sent, received = (
            parse_time(agent.get("sentAt")),
            parse_time(agent.get("receivedAt") or agent.get("lastHeartbeat")),
        )
        if sent is not None and received is not None:
            view.clock_skew_seconds = (sent - received).total_seconds()
    return view


def _root_used(filesystems: Any) -> float | None:
    """Percent used of the root filesystem, from whatever shape the agent reports (tolerant: the field is new)."""
    if not isinstance(filesystems, list):
        return None
    for fs in filesystems:
        if not isinstance(fs, dict) or fs.get("mount", fs.get("mountpoint", fs.get("mountPoint"))) != "/":
            continue
        for key in ("usedPercent", "used_percent", "usePercent"):
            if isinstance(fs.get(key), int | float):
                return float(fs[key])
        size = fs.get("sizeBytes", fs.get("size_bytes", fs.get("total_bytes")))
        used = fs.get("usedBytes", fs.get("used_bytes"))
        if isinstance(size, int | float) and isinstance(used, int | float) and size > 0:
            return 100.0 * used / size
    return None


def host_view(host: dict[str, Any], dpu_name: str, now: datetime, silent_after: float) -> HostView:
    status = host.get("status") or {}
    last = parse_time(status.get("lastSeen"))
    silent = None if last is None else (now - last).total_seconds() > silent_after
    functions = [f for f in status.get("pciFunctions") or [] if isinstance(f, dict) and f.get("dpu") == dpu_name]
    view = HostView(
        name=host["metadata"]["name"],
        silent=silent,
        silent_seconds=(now - last).total_seconds() if silent and last else None,
        functions_present=bool(functions) if status.get("pciFunctions") is not None and last else None,
        last_seen=last,
    )
    bdfs = {f.get("bdf") for f in functions}
    for fn in functions:
        if _surprise_down_only(fn.get("aer")):
            view.link_down = True  # the card lost power or the link dropped: not a PCIe error of the device
        elif _uncorrectable(fn.get("aer")):
            view.aer_uncorrectable.append(str(fn.get("bdf")))
        if fn.get("linkDown") or fn.get("link") == "down":
            view.link_down = True
    for report in status.get("aer") or []:  # a host-level list of AER reports, if the host agent sends one
        if isinstance(report, dict) and report.get("bdf") in bdfs and _uncorrectable(report):
            view.aer_uncorrectable.append(str(report.get("bdf")))
            if "surprise" in str(report.get("type", "")).lower():
                view.link_down = True
    return view


def _surprise_down_only(aer: Any) -> bool:
    """Fatal AER counts that are all Surprise Down (SDES): what a power loss or slot power cycle leaves."""
    if not isinstance(aer, dict):
        return False
    errors = aer.get("errors")
    if not isinstance(errors, dict) or not errors:
        return False
    uncorrectable = {k: v for k, v in errors.items() if not str(k).startswith("correctable/") and v}
    return bool(uncorrectable) and all(str(k) == "fatal/SDES" for k in uncorrectable)


def _uncorrectable(aer: Any) -> bool:
    if not isinstance(aer, dict):
        return False
    for key in ("uncorrectable", "fatal", "nonfatal", "uncorrectableFatal", "uncorrectableNonFatal"):
        value = aer.get(key)
        if isinstance(value, int | float) and value > 0:
            return True
        if isinstance(value, dict) and any(isinstance(v, int | float) and v > 0 for v in value.values()):
            return True
    return False
