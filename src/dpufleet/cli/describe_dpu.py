"""The DPU part of `dpufleet describe dpu`: identity, firmware, capabilities and pairing as tables."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from .columns import age
from .output import plain_table

NONE = "<none>"
# status fields these sections show; the generic Status block leaves them out
SHOWN = (
    "vendor",
    "model",
    "partNumber",
    "serialNumber",
    "firmware",
    "capabilities",
    "remaining",
    "allocated",
    "allocatable",
    "host",
    "bmc",
    "evidence",
    "recognition",
    "agent",
    "health",
    "powerState",
    "bootProgress",
    "lastSeen",
    "diagnosis",
    "remediation",
)


def _perf(acc: dict[str, Any]) -> str:
    parts = []
    if acc.get("throughputGbps"):
        parts.append(f"{acc['throughputGbps']:g} Gb/s")
    if acc.get("iops"):
        parts.append(f"{acc['iops']:,} IOPS")
    if acc.get("opsPerSecond"):
        parts.append(f"{acc['opsPerSecond']:,} ops/s")
    return ", ".join(parts) or NONE


def _recognition(recognition: dict[str, Any], render: Any) -> list[str]:
    """Why this is taken for a DPU: the rule that matched, the catalog model, the evidence."""
    if not recognition:
        return []
    matched = f" (by {recognition['matchedBy']})" if recognition.get("matchedBy") else ""
    lines = [
        "Recognition:",
        f"  {'Rule:':<16}{recognition.get('rule') or NONE}",
        f"  {'Model:':<16}{recognition.get('model') or NONE}{matched}",
    ]
    if recognition.get("unknown"):
        lines.append(f"  {'Unknown:':<16}{', '.join(recognition['unknown'])} (reported, not taken as fact)")
    t = plain_table(["SOURCE", "KIND", "VALUE", "DETAIL"])
    for e in recognition.get("evidence") or []:
        t.add_row(str(e.get("source", "")), str(e.get("kind", "")), str(e.get("value", "")), str(e.get("detail") or ""))
    lines.append("  Evidence:")
    lines.extend("    " + line for line in render(t))
    return lines


def _flavor(status: dict[str, Any]) -> list[str]:
    """The flavor provisioning applied and what the DPU's agent finds of it on the OS."""
    name, state = status.get("appliedFlavor"), status.get("flavorState") or {}
    if not name and not state:
        return []
    lines = ["Flavor:", f"  {'Applied:':<16}{name or NONE}"]
    if not state:
        return [*lines, f"  {'On the OS:':<16}not reported yet (the DPU's agent applies it)"]
    verdict = "holds" if state.get("applied") else "NOT applied"
    lines.append(f"  {'On the OS:':<16}{verdict} (version {state.get('resourceVersion')}, {state.get('at')})")
    for item in state.get("pendingReboot") or []:
        lines.append(f"  {'Next boot:':<16}{item}")
    for problem in state.get("problems") or []:
        lines.append(f"  {'Problem:':<16}{problem}")
    return lines


def dpu_sections(status: dict[str, Any], render: Any) -> list[str]:
    """Readable sections for a DPU's status; `render` turns a rich Table into lines."""
    lines: list[str] = []

    def field(label: str, value: Any) -> None:
        lines.append(f"  {label + ':':<16}{value if value not in (None, '') else NONE}")

    def table(title: str, t: Table) -> None:
        lines.append(f"{title}:")
        lines.extend("  " + line for line in render(t))

    lines.append("Identity:")
    field("Vendor", status.get("vendor"))
    field("Model", status.get("model"))
    field("Part number", status.get("partNumber"))
    field("Serial number", status.get("serialNumber"))
    lines.append("Health:")
    field("Health", status.get("health"))
    field("Power", status.get("powerState"))
    field("Boot progress", status.get("bootProgress"))
    last = status.get("lastSeen")
    field("Last seen", f"{last} ({age(last)} ago)" if last else None)
    diagnosis = status.get("diagnosis") or {}
    if diagnosis:
        field("Diagnosis", f"{diagnosis.get('reason')}: {diagnosis.get('message')}")
        field("Since", f"{diagnosis.get('since')} ({age(diagnosis.get('since'))} ago)")
        t = plain_table(["SOURCE", "SIGNAL", "VALUE"])
        for e in diagnosis.get("evidence") or []:
            t.add_row(str(e.get("source", "")), str(e.get("signal", "")), str(e.get("value", "")))
        table("Health evidence", t)
    remediation = status.get("remediation") or {}
    if remediation.get("history") or remediation.get("episode"):
        episode = remediation.get("episode") or {}
        field("Policy", remediation.get("policy"))
        if episode:
            field(
                "Remediating",
                f"{episode.get('failureClass')} since {episode.get('since')}, next step {episode.get('step')}",
            )
        t = plain_table(["TIME", "CLASS", "ACTION", "RESULT", "MESSAGE"])
        for h in (remediation.get("history") or [])[-15:]:
            t.add_row(
                str(h.get("time", "")),
                str(h.get("failureClass", "")),
                str(h.get("action", "")),
                str(h.get("result", "")),
                str(h.get("message") or ""),
            )
        table("Remediation history", t)
    lines.append("Pairing:")
    field("Host", status.get("host"))
    field("BMC", status.get("bmc"))
    agent = status.get("agent") or {}
    field(
        "Agent",
        f"{agent.get('version')} on {agent.get('os')} ({agent.get('kernel')}), heartbeat "
        f"{age(agent.get('lastHeartbeat'))} ago"
        if agent
        else None,
    )
    evidence = status.get("evidence") or []
    if evidence:
        t = plain_table(["SOURCE", "KIND", "VALUE", "DETAIL"])
        for e in evidence:
            t.add_row(
                str(e.get("source", "")), str(e.get("kind", "")), str(e.get("value", "")), str(e.get("detail") or "")
            )
        table("Evidence", t)
    lines.extend(_recognition(status.get("recognition") or {}, render))
    lines.extend(_flavor(status))
    firmware = status.get("firmware") or []
    if firmware:
        t = plain_table(["COMPONENT", "NAME", "VERSION", "UPDATEABLE"])
        for f in firmware:
            t.add_row(
                str(f.get("id", "")),
                str(f.get("name", "")),
                str(f.get("version", "")) + ("" if f.get("versionParsed", True) else " (not a version number)"),
                "yes" if f.get("updateable") else "no",
            )
        table("Firmware", t)
    caps = status.get("capabilities") or {}
    if caps:
        lines.append("Capabilities:")
        cpu = caps.get("cpu") or {}
        field("CPU", f"{cpu.get('cores')} x {cpu.get('model')}" if cpu else None)
        field("Memory", f"{caps['memoryGiB']} GiB" if caps.get("memoryGiB") else None)
        storage = caps.get("storage") or []
        field(
            "Storage", ", ".join(f"{s.get('name')} {s.get('kind', '')} {s.get('sizeGiB')} GiB" for s in storage) or None
        )
        ports = caps.get("ports") or []
        field("Ports", ", ".join(f"{p.get('name')} {p.get('speedGbps')}G" for p in ports) or None)
        field("Max VFs", caps.get("maxVFs"))
        remaining = status.get("remaining") or {}
        if remaining:
            field("Remaining", f"{remaining.get('cores')} cores, {remaining.get('memoryGiB')} GiB")
        for label, key in (("Allocatable", "allocatable"), ("Allocated", "allocated")):
            if isinstance(status.get(key), dict) and "cpuMillicores" in status[key]:
                res = status[key]
                field(
                    label,
                    f"{res['cpuMillicores']}m CPU, {res.get('memoryMiB', 0)} MiB, "
                    f"{res.get('hugepagesMiB', 0)} MiB hugepages (DPU services)",
                )
        accelerators = caps.get("accelerators") or []
        if accelerators:
            t = plain_table(["KIND", "NAME", "ALGORITHMS", "PERFORMANCE"])
            for a in accelerators:
                t.add_row(
                    str(a.get("kind", "")), str(a.get("name", "")), ", ".join(a.get("algorithms") or []), _perf(a)
                )
            table("Accelerators", t)
    return lines
